"""Where a run's weights start: `--init random | base | PATH`, and loading a finished run.

`random` initialises on device. `PATH` is a previous recap run (its directory, its
`checkpoints/` folder or one `checkpoints/<step>/`): its full model is rebuilt (its own base
re-attached and checked, then its trained params, EMA when it has one) and copied by param
path into the new model; params the new model has and the source lacks are allowed only for
LoRA adapters (they start fresh, as openpi's weight loader does). `base` loads the published
weights through `recap_core.weights` (pi0.5 base for policies, the VLM bundle for the value
model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from flax import nnx, traverse_util
from jax.sharding import Mesh

from recap_core.config import RunConfig, load_run_config
from recap_core.errors import CheckpointError
from recap_core.rundir import RunRef, find_run
from recap_core.stages import TRAINED, for_run, is_tiny
from recap_core.train.checkpoint import RunCheckpoints
from recap_core.train.state import ModelParts, count_params, fingerprint, init_parts
from recap_core.train.step import abstract_train_state
from recap_core.train.task import Task
from recap_core.weights.init_source import load_published_weights, published_weights_kind

TaskFactory = Callable[[RunConfig], Task]
POLICY_STAGES = tuple(s.run_stage for s in TRAINED if s.family == "policy")


def stage_family(stage: str) -> str:
    return str(for_run(stage).family)


def resolve_run_path(path: Path) -> tuple[Path, int | None]:
    """`run/`, `run/checkpoints/` or `run/checkpoints/<step>/` -> (run dir, step or None=latest)."""
    run = find_run(path)
    if run is not None:
        return run.dir, run.step
    path = Path(path).expanduser().absolute()
    if (path / "params").is_dir() or (path / "_CHECKPOINT_METADATA").is_file():
        raise CheckpointError(
            f"{path} looks like an openpi/orbax checkpoint, not a recap run",
            fix="load openpi checkpoints with --init base (RECAP_PI05_BASE_DIR) or convert them first",
        )
    raise CheckpointError(
        f"--init {path}: not a recap run directory (expected config.json there, or a "
        "checkpoints/<step> folder inside a run)",
        fix="pass the --run-dir of a finished `recap sft/finetune/value train`, or --init random",
    )


def init_run(config: RunConfig) -> tuple[Path, int | None] | None:
    """(run dir, step or None = latest) of the recap run `--init` names; None for random, base or
    published (openpi / VLM bundle) weights. A path that is none of these raises CheckpointError."""
    if config.init == "base" and is_tiny(config.preset):
        raise CheckpointError(f"--init base: preset {config.preset} has no published base weights (base means the "
                              "pi0.5 base checkpoint or the VLM bundle, for the full-size presets)",
                              fix="use --init random, or --init PATH (a run of this preset, or weights of its size)")
    if config.init in ("random", "base") or published_weights_kind(Path(config.init)) is not None:
        return None
    return resolve_run_path(Path(config.init))


def latest_step(run_dir: Path, step: int | None) -> int:
    """`step` if the run has a finished checkpoint there, else (step None) its latest one."""
    return RunRef(Path(run_dir), step).resolved_step(fix="train it longer or pass another run to --init")


def _load_base_weights(config: RunConfig, parts: ModelParts, mesh: Mesh) -> tuple[ModelParts, dict[str, Any]]:
    family = stage_family(config.stage)
    module_name = "recap_core.weights.pi05_base" if family == "policy" else "recap_core.weights.vlm_bundle"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"--init base: the {family} base-weight loader ({module_name}) is not available in this install",
            fix="use --init random, or --init PATH with a previous recap run",
        ) from exc
    loader = getattr(module, "load_into_parts", None)
    if loader is None:
        raise CheckpointError(
            f"--init base: {module_name} has no load_into_parts(config, parts, mesh)",
            fix="use --init random, or --init PATH with a previous recap run",
        )
    return loader(config, parts, mesh)


def build_parts(
    config: RunConfig, task: Task, mesh: Mesh, task_factory: TaskFactory
) -> tuple[ModelParts, dict[str, Any]]:
    """The model for a new (or resumed) run, and the identity of its frozen base."""
    parts = init_parts(task, config.seed, mesh, config.frozen_dtype, config.init_rng)
    if config.init == "random":
        base: dict[str, Any] = {"kind": "random", "seed": config.seed}
    elif config.init == "base":
        parts, base = _load_base_weights(config, parts, mesh)
    elif (found := init_run(config)) is None:  # an openpi checkpoint or the VLM bundle
        family = stage_family(config.stage)
        parts, base = load_published_weights(config, parts, mesh, Path(config.init), family=family)
    else:
        run_dir, step = found
        source_config = load_run_config(run_dir / "config.json")
        if stage_family(source_config.stage) != stage_family(config.stage):
            raise CheckpointError(
                f"--init {config.init} is a {stage_family(source_config.stage)} run "
                f"(`{source_config.stage}`, preset {source_config.preset}); `{config.stage}` needs a "
                f"{stage_family(config.stage)} run",
                fix=(
                    "pass a run of `recap sft` or `recap finetune`"
                    if stage_family(config.stage) == "policy"
                    else "pass a run of `recap value train`"
                ),
            )
        step = latest_step(run_dir, step)
        source = load_parts(run_dir, step, mesh, task_factory=task_factory, use_ema=True)
        parts = copy_by_path(source, parts, origin=f"{run_dir} step {step}")
        base = {"kind": "run", "path": str(run_dir), "step": step}
    base["fingerprint"] = fingerprint(parts.frozen)
    return parts, base


def check_base(base: dict[str, Any], recorded: dict[str, Any], where: Path) -> None:
    """Fail when the frozen base re-attached now differs from the one the checkpoint trained on."""
    if base.get("fingerprint") != recorded.get("fingerprint"):
        raise CheckpointError(
            f"the frozen base of {where} changed since it was saved: recorded "
            f"{recorded.get('kind')} {recorded.get('path', '')} fingerprint "
            f"{str(recorded.get('fingerprint'))[:16]}, found {str(base.get('fingerprint'))[:16]}",
            fix="restore the base weights (or source run) that this run was trained from, unchanged",
        )


def _flat(state: nnx.State) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(nnx.to_pure_dict(state))


def copy_by_path(source: ModelParts, target: ModelParts, *, origin: str) -> ModelParts:
    """Target params take the source's values (same path, same shape), on the target's shardings."""
    src = {**_flat(source.trainable), **_flat(source.frozen)}

    def fill(state: nnx.State) -> nnx.State:
        flat = _flat(state)
        for path, leaf in flat.items():
            if path in src:
                value = src[path]
                if tuple(value.shape) != tuple(leaf.shape):
                    raise CheckpointError(
                        f"--init {origin}: param {'/'.join(map(str, path))} has shape {tuple(value.shape)}, "
                        f"this model expects {tuple(leaf.shape)}",
                        fix="initialise from a run of a preset with the same architecture",
                    )
                flat[path] = jax.device_put(value.astype(leaf.dtype), leaf.sharding)
            elif not any("lora" in str(p) for p in path):
                raise CheckpointError(
                    f"--init {origin}: the source has no param {'/'.join(map(str, path))}",
                    fix="initialise from a run of a preset with the same architecture (only LoRA adapters may be new)",
                )
        nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
        return state

    return ModelParts(target.graphdef, fill(target.trainable), fill(target.frozen))


def parts_to_restore(
    config: RunConfig, run_dir: Path, task: Task, mesh: Mesh, task_factory: TaskFactory
) -> tuple[ModelParts, dict[str, Any]]:
    """The model of an existing run, before its checkpoint is restored into it. Only the frozen
    base comes from --init; when nothing is frozen every weight is in the checkpoint, and the --init
    source is neither needed nor looked for (a run works without the run it started from)."""
    parts = init_parts(task, config.seed, mesh, config.frozen_dtype, config.init_rng)
    if config.init == "random" or count_params(parts.frozen) == 0:
        return parts, {"fingerprint": fingerprint(parts.frozen)}
    return build_parts(locate_init(config, run_dir), task, mesh, task_factory)


def locate_init(config: RunConfig, run_dir: Path) -> RunConfig:
    """The run's config with --init found where it is now: as recorded, else relative to the run
    (both moved together). Whichever is used, `check_base` then compares fingerprints."""
    if config.init in ("random", "base") or Path(config.init).exists() or not config.init_from_run:
        return config
    moved = (Path(run_dir).absolute() / config.init_from_run).resolve()
    return config.model_copy(update={"init": str(moved)}) if moved.exists() else config


def load_parts(
    run_dir: Path, step: int | None, mesh: Mesh, *, task_factory: TaskFactory, use_ema: bool = True
) -> ModelParts:
    """A finished run's full model: base re-attached (and checked), trained params restored."""
    run_dir, _ = resolve_run_path(run_dir) if step is None else (Path(run_dir), step)
    config = load_run_config(run_dir / "config.json")
    step = latest_step(run_dir, step)
    task = task_factory(config)
    parts, base = parts_to_restore(config, run_dir, task, mesh, task_factory)
    ckpts = RunCheckpoints(run_dir / "checkpoints", config.checkpoint, read_only=True)
    state, meta = ckpts.restore(step, abstract_train_state(parts, config))
    check_base(base, meta.get("base", {}), run_dir / "checkpoints" / str(step))
    trained = state["ema"] if use_ema and "ema" in state else state["params"]
    return ModelParts(parts.graphdef, trained, parts.frozen)
