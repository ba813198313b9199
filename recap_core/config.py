"""Run configs for `recap sft`, `recap finetune` and `recap value train`.

A run config is plain data (pydantic), resolved once and written to `<run>/config.json`, so
`--resume` and `serve` need nothing else. Values come from four layers, lowest to highest:

    defaults (with the stage/preset's own defaults) < `--config run.toml` < env < flags

Env overrides use `RECAP_RUN__<SECTION>__<KEY>` (e.g. `RECAP_RUN__OPTIM__PEAK_LR=1e-5`); flags are
the command's own options (`--steps`, `--batch-size`, ...) and `--set optim.peak_lr=1e-5`.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recap_core.errors import ConfigError
from recap_core.stages import is_tiny

Stage = Literal["sft", "finetune", "value"]
FreezeMode = Literal["all_backbones", "siglip_only", "none"]
ENV_PREFIX = "RECAP_RUN__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimConfig(_Section):
    """AdamW + warmup/cosine with openpi's defaults (optimizer.py: AdamW, CosineDecaySchedule)."""

    peak_lr: float = Field(2.5e-5, gt=0)
    end_lr: float = Field(2.5e-6, ge=0)
    warmup_steps: int | None = Field(None, ge=0)
    """None: min(1000, steps // 10), which is openpi's 1000 at its 30k-step default."""
    decay_steps: int | None = Field(None, ge=1)
    """Total schedule length including warmup (optax's convention); None: the run's steps."""
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 1e-10
    clip_norm: float | None = Field(1.0, gt=0)
    """Global-norm gradient clipping; None turns it off."""


class CheckpointConfig(_Section):
    every: int = Field(1000, ge=1)
    """Save every N steps (and always at the last step)."""
    keep_last: int = Field(1, ge=1)
    keep_every: int | None = Field(5000, ge=1)
    """Also keep every checkpoint whose step is a multiple of this (openpi's keep_period)."""
    async_save: bool = True
    final_optimizer: bool = True
    """Keep the optimiser state in the last step's checkpoint (`--keep-optimizer`). False writes it
    params-only (trainable params + EMA): what serve, export, eval, label and --init read, a third of
    the bytes or less, but it cannot be resumed (start a new run from it with --init)."""
    keep_best: bool = False
    """Value runs (`--keep-best`): also save at every validation that ranks held-out frames better
    than any before (per-episode Spearman of predicted value against value_label), keep that step
    besides the latest, and record it in `<run>/best.json`; `value label` then labels with it."""


class ValConfig(_Section):
    fraction: float = Field(0.1, ge=0, lt=1)
    """Share of episodes held out for validation (split by episode, never by frame)."""
    every: int = Field(1000, ge=1)
    max_batches: int = Field(8, ge=1)


class DataConfig(_Section):
    num_workers: int = Field(0, ge=0)
    adv_ind_dropout: float = Field(0.3, ge=0, le=1)
    """Finetune only: share of samples whose prompt drops the advantage clause (pistar: 0.3)."""
    shuffle: bool = True
    delta_actions: bool | list[bool] | None = None
    """Policy runs: train on joint deltas w.r.t. the current state (openpi's ALOHA recipe); serving
    adds the state back. true: every action dim except those named *gripper*; a list: the mask
    per action dim; false: absolute; unset: what the --init run used, else absolute. A run's
    config.json records the resolved mask."""
    success_only: bool = False
    """Train (and validate) only on episodes that succeeded: filtered behaviour cloning."""
    shards: int | None = Field(None, ge=1)
    """Data shards: episodes are dealt to shards and each process serves its consecutive share, so
    the global batches depend on the shards, not on how many processes serve them (a multiple of
    the process count; it divides the batch). Unset: one per process. Set it to the total device
    count to get the same batches, losses and resumes under any process layout (2 hosts x 2 GPUs
    as 1 x 4); each process then holds its shards' decoded episodes."""


class DistributedConfig(_Section):
    """Multi-host: `jax.distributed.initialize` runs when `enabled` is true or any field is set."""

    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = Field(None, ge=1)
    process_id: int | None = Field(None, ge=0)

    @property
    def requested(self) -> bool:
        return self.enabled or any(
            v is not None for v in (self.coordinator_address, self.num_processes, self.process_id)
        )


class RunConfig(_Section):
    """Everything one training run needs, fully resolved."""

    stage: Stage
    preset: str
    dataset: str
    init: str = "random"
    """`base` (published weights), `random`, or a path to a recap run directory / checkpoint step."""
    model: dict[str, Any] = Field(default_factory=dict)
    """The model config resolved from the preset (`kind` + its fields), so a run is self-contained."""
    tokenizer: str | None = None
    """Tokenizer model file; None: the preset's default (a built-in toy tokenizer for -tiny)."""
    cameras: list[str] | None = None
    """Dataset cameras to train on (short names); None: all of them."""
    steps: int = Field(30_000, ge=1)
    batch_size: int = Field(32, ge=1)
    """Global batch size (all devices, all hosts)."""
    grad_accum: int = Field(1, ge=1)
    """Split each batch into this many micro-batches and average their gradients."""
    seed: int = 42
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    freeze_mode: FreezeMode | None = None
    """Value model only: which backbones stay frozen."""
    frozen_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """dtype of the frozen (never updated) params, as openpi's trainer casts them: bfloat16 halves
    the base's memory; trainable params, EMA and optimiser state stay float32. The tiny presets keep
    float32 (their measured results were made so)."""
    init_rng: Literal["rbg", "threefry2x32"] = "rbg"
    """PRNG of the random init (`--init random`, and the trainable params of every run). `rbg` is
    generated in place: initialising pi0.5's 3.35B params needs no more memory than the params
    themselves, where `threefry2x32` (JAX's default) holds ~18 bytes of temporaries per parameter
    on CPU (60 GB for pi0.5). The tiny presets keep `threefry2x32` (their measured results were made
    so). rbg's bits may differ between backends and JAX versions: a random-base run is re-created
    from its seed, and its fingerprint check says so if they differ."""
    fsdp_devices: int = Field(1, ge=1)
    log_every: int = Field(100, ge=1)
    wandb: Literal["disabled", "online", "offline"] = "disabled"
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    val: ValConfig = Field(default_factory=ValConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    init_from_run: str | None = None
    """Set by the training loop when --init is a path: where it lies relative to the run directory,
    so a run moved or copied together with its --init run still finds it (checked by fingerprint)."""
    versions: dict[str, str | None] = Field(default_factory=dict)
    """recap and its stack (jax, flax, orbax, lerobot, torch, ...) when the run was created: set by
    the training loop; `--resume` and `serve` warn when they differ."""

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.stage == "value" and self.freeze_mode is None:
            self.freeze_mode = "all_backbones"
        return self

    @property
    def warmup_steps(self) -> int:
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return min(1000, self.steps // 10)

    @property
    def decay_steps(self) -> int:
        return self.optim.decay_steps if self.optim.decay_steps is not None else self.steps


def stage_defaults(stage: Stage, preset: str) -> dict[str, Any]:
    """What a stage/preset changes from the global defaults (the lowest layer).

    LoRA runs turn EMA off, as openpi's LoRA configs do; tiny presets are for tests and the
    demo, so they log and save often and warm up fast.
    """
    out: dict[str, Any] = {}
    if preset.endswith("-lora"):
        out["ema_decay"] = None
    if stage == "value":
        out["freeze_mode"] = "all_backbones"
    if is_tiny(preset):
        out.update(
            frozen_dtype="float32",
            init_rng="threefry2x32",
            steps=200,
            batch_size=8,
            log_every=10,
            checkpoint={"every": 100, "keep_every": None},
            val={"every": 100, "max_batches": 2},
            optim={"peak_lr": 1e-3, "end_lr": 1e-4},
        )
    return out


# --------------------------------------------------------------------------- layers


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    # model.* keys are the model config's own fields: checked when the model config is built.
    if dotted not in _known_keys() and not (dotted.startswith("model.") and dotted.count(".") == 1):
        close = [k for k in _known_keys() if k.split(".")[-1] == dotted.split(".")[-1]]
        hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(_known_keys())}"
        raise ConfigError(f"{origin}: unknown run-config key {dotted!r}", fix=hint)
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def parse_value(text: str) -> Any:
    """A `--set`/env value as TOML would read it (numbers, booleans, strings); `none` is None."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["optim.peak_lr=1e-5", ...]` -> nested dict; unknown keys raise ConfigError."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is not KEY=VALUE", fix="write e.g. --set optim.peak_lr=1e-5")
        _set_dotted(tree, key.strip(), parse_value(raw.strip()), f"--set {pair}")
    return tree


def read_config_file(path: Path) -> dict[str, Any]:
    """A run.toml (top-level keys or a [run] table) or a previous run's config.json."""
    path = Path(os.path.expanduser(path))
    if not path.is_file():
        raise ConfigError(f"run config file {path} does not exist", fix="pass an existing .toml or .json to --config")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            with path.open("rb") as f:
                data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"run config file {path} cannot be parsed: {exc}", fix="correct its syntax (UTF-8)") from exc
    except OSError as exc:
        raise ConfigError(f"run config file {path} cannot be read: {exc.strerror}",
                          fix="check the path and its permissions") from exc
    data = data.get("run", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ConfigError(f"run config file {path}: expected a table of settings (or a [run] table), "
                          f"got {type(data).__name__}", fix="write keys such as `steps = 100` under [run]")
    tree: dict[str, Any] = {}
    for dotted, value in _flatten(data):
        _set_dotted(tree, dotted, value, f"config file {path}")
    return tree


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def read_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = dict(os.environ) if environ is None else environ
    tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(tree, dotted, parse_value(raw), f"environment variable {name}")
    return tree


def resolve_run_config(
    stage: Stage,
    preset: str,
    dataset: str | Path,
    *,
    config_file: Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    environ: dict[str, str] | None = None,
    model: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge defaults < file < env < flags (named flags, then `--set`) into one validated RunConfig.

    `model` is the preset's model config (part of the defaults layer; `--set model.X=...` edits it).
    """
    tree: dict[str, Any] = _deep_merge(stage_defaults(stage, preset), {"model": dict(model or {})})
    if config_file is not None:
        tree = _deep_merge(tree, read_config_file(config_file))
    tree = _deep_merge(tree, read_env(environ))
    named: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(named, key, value, f"flag {key}")
    tree = _deep_merge(tree, named)
    tree = _deep_merge(tree, parse_sets(sets))
    # The command line's stage/preset/dataset always win: a config file cannot retarget a run.
    tree.update(stage=stage, preset=preset, dataset=str(dataset))
    return validate_run_config(tree, origin="resolved run config")


def validate_run_config(data: dict[str, Any], *, origin: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(config)"
        raise ConfigError(
            f"{origin}: {key}: {first['msg']} (got {first.get('input')!r})",
            fix=f"correct {key} in --config, RECAP_RUN__{key.upper().replace('.', '__')} or --set {key}=...",
        ) from exc


def load_run_config(path: Path) -> RunConfig:
    """Read `<run>/config.json` written by a previous run."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist", fix="point at a recap run directory (it holds config.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}", fix="restore config.json from a backup") from exc
    if isinstance(data, dict):
        data.setdefault("frozen_dtype", "float32")  # runs made before frozen_dtype existed kept float32
        data.setdefault("init_rng", "threefry2x32")  # and JAX's default PRNG before init_rng existed
    return validate_run_config(data, origin=str(path))
