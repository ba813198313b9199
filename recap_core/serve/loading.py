"""Turn a recap run directory (or one of its checkpoints) into a servable `Policy`.

`load_policy` is the single place where a checkpoint becomes a policy. It finds the run's
`config.json`, the checkpoint step and `assets/norm_stats.json`, then hands them to the
model kind's *policy builder*, a function registered with `register_policy_builder` by the
module that owns the model (pi0.5/pi0.6 register theirs). There is no separate inference
config: serving options (adv_ind default, CFG beta, denoising steps, camera names) come from the
command line, and indicator dropout is never applied at inference.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recap_core.errors import CheckpointError, ServeError
from recap_core.rundir import find_run
from recap_core.serve.observation import ADV_IND_VALUES
from recap_core.serve.policy import Policy


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """How to serve a checkpoint; the same for every model kind."""

    default_adv_ind: str = "positive"
    require_adv_ind: bool = False
    cfg_beta: float = 1.0  # > 1 turns on classifier-free guidance (pi0.6 paper)
    num_steps: int = 10  # flow-matching denoising steps
    seed: int = 0  # of the sampling noise: the same seed answers the same requests identically
    camera_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Client camera name -> the run's camera (`--camera MODEL=CLIENT`, see `observation.parse_camera_map`)."""

    def __post_init__(self) -> None:
        if self.default_adv_ind not in ADV_IND_VALUES:
            raise ServeError(
                f"--default-adv-ind {self.default_adv_ind!r} is not one of {list(ADV_IND_VALUES)}",
                fix="use positive (the improved behaviour), negative or none",
            )
        if not self.cfg_beta >= 1.0:
            raise ServeError(
                f"--cfg-beta must be >= 1.0 (1.0 = plain conditioning), got {self.cfg_beta}",
                fix="use 1.0, or e.g. 1.5 for classifier-free guidance",
            )
        if self.num_steps < 1:
            raise ServeError(f"--num-steps must be >= 1, got {self.num_steps}", fix="use e.g. 10")


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """A resolved run directory, its config and the checkpoint step to serve."""

    run_dir: Path
    config: dict[str, Any]
    step: int
    checkpoint_dir: Path
    norm_stats_path: Path | None

    @property
    def model_kind(self) -> str:
        return model_kind(self.config, self.run_dir)


# (checkpoint, options) -> Policy
PolicyBuilder = Callable[[RunCheckpoint, ServeOptions], Policy]
_BUILDERS: dict[str, PolicyBuilder] = {}
# Modules that register the builders recap ships; imported on first load (they import jax).
BUILTIN_BUILDER_MODULES = ("recap_core.serve.pi0_policy",)


def register_policy_builder(kind: str, builder: PolicyBuilder) -> None:
    """Make runs whose config says `model.kind == kind` servable (called by model modules)."""
    _BUILDERS[kind] = builder


def model_kind(config: dict[str, Any], run_dir: Path) -> str:
    """The model kind a run trained: `config["model"]["kind"]`."""
    model = config.get("model")
    kind = model.get("kind") if isinstance(model, dict) else None
    if not isinstance(kind, str):
        raise CheckpointError(
            f"{run_dir / 'config.json'} has no model.kind",
            fix="serve a run directory written by `recap sft` or `recap finetune`",
        )
    return kind


def resolve_checkpoint(path: Path) -> RunCheckpoint:
    """Accept `<run>` (latest step) or `<run>/checkpoints/<step>`; check the files serving needs."""
    path = Path(path)
    run = find_run(path)
    if run is None:
        if not path.exists():
            raise ServeError(f"{path} does not exist", fix="pass a recap run directory (it holds config.json)")
        raise ServeError(
            f"{path} is not a recap run directory (no config.json)",
            fix="pass the directory given to --run-dir when training, or <run>/checkpoints/<step>; "
            "to test wiring without a checkpoint use `recap serve --policy zeros --action-shape H,D`",
        )
    try:
        config = json.loads(run.config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run.config_path} is not valid JSON: {exc}", fix="restore the run's config.json") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{run.config_path} must hold a JSON object", fix="restore the run's config.json")
    step = run.resolved_step(fix="train until the first checkpoint is saved, or pass another run")
    return RunCheckpoint(run.dir, config, step, run.step_dir(step), run.norm_stats)


def load_policy(path: Path | RunCheckpoint, options: ServeOptions | None = None) -> Policy:
    """The policy a run (or checkpoint) serves, ready for `PolicyServer`."""
    checkpoint = path if isinstance(path, RunCheckpoint) else resolve_checkpoint(path)
    kind = checkpoint.model_kind
    if kind not in _BUILDERS:
        for module in BUILTIN_BUILDER_MODULES:
            importlib.import_module(module)
    builder = _BUILDERS.get(kind)
    if builder is None:
        known = sorted(_BUILDERS) or ["none registered"]
        raise CheckpointError(
            f"{checkpoint.run_dir} trained a model of kind {kind!r}, which this recap cannot serve "
            f"(servable kinds: {', '.join(known)})",
            fix="upgrade recap to a version that serves this model kind",
        )
    return builder(checkpoint, options or ServeOptions())
