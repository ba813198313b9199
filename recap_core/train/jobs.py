"""From a resolved run config to a `TrainingJob`: check the dataset, build task, loaders, assets.

This is the one place that knows which stage needs which columns, where the model config and the
tokenizer come from, and how the episodes are split into train and validation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from recap_core.config import RunConfig, load_run_config
from recap_core.data.actions import dataset_delta_mask
from recap_core.data.dataset import (
    DatasetInfo,
    camera_keys_for,
    column_array,
    episode_lengths,
    open_dataset,
    read_table,
    require_columns,
)
from recap_core.data.loader import LoaderConfig, TrainLoader, camera_name
from recap_core.data.schema import REWARD, episode_success
from recap_core.data.stats import load_norm_stats, norm_stats_to_json, run_norm_stats
from recap_core.errors import ConfigError
from recap_core.stages import for_run, is_tiny
from recap_core.train.init import init_run
from recap_core.train.loop import TrainingJob
from recap_core.train.run_tokenizer import TOKENIZER_ASSET, tokenizer_path
from recap_core.train.task import Batch, Task
from recap_core.train.validation import split_episodes

POLICY_KIND, VALUE_KIND = "pi0", "value"


def preset_model(stage: str, preset: str) -> dict[str, Any]:
    """The preset's model config as plain data (`kind` + fields), stored in the run config. The
    preset registry says which family a preset is; a stage takes only its own family's presets."""
    from recap_core.presets import get_preset, list_presets

    found = get_preset(preset)  # an unknown name raises a ConfigError listing every preset
    family = for_run(stage).family
    if found.kind != family:
        named = [p.name for p in list_presets() if p.kind == family and not (stage == "sft" and p.model.pi06)]
        raise ConfigError(f"preset {preset!r} is a {found.kind} preset, not a {family} one",
                          fix=f"{for_run(stage).command} takes one of: {', '.join(named)}")
    if family == "value":
        return {"kind": VALUE_KIND, "name": preset}
    if stage == "sft" and found.model.pi06:
        raise _sft_pi06(preset)
    return {"kind": POLICY_KIND, **found.model.to_dict()}


def _sft_pi06(preset: str) -> ConfigError:
    return ConfigError(f"preset {preset} is a pi0.6 policy (it reads the advantage indicator); "
                       "sft trains pi0.5, whose data has no adv_ind to teach it",
                       fix="use --preset pi05, pi05-lora or pi05-tiny, and `recap finetune` for pi0.6")


def task_for_config(config: RunConfig, *, norm_stats: Any = None, cameras: tuple[str, ...] | None = None,
                    run_dir: Path | None = None) -> Task:
    """The task a run trains (also what `load_parts` needs to rebuild a finished run's model).

    `run_dir`: the run the config belongs to, when it exists; its stored tokenizer is used.
    """
    model = dict(config.model)
    kind = model.pop("kind", None)
    cams = tuple(cameras or config.cameras or ())
    if config.stage in ("sft", "finetune"):
        if kind not in (None, POLICY_KIND):
            raise ConfigError(f"run config model.kind is {kind!r}; `{config.stage}` trains a {POLICY_KIND!r} model",
                              fix=f"use a policy preset with {for_run(config.stage).command}")
        from recap_core.models.pi0 import Pi0Config
        from recap_core.models.tokenizer import PolicyTokenizer
        from recap_core.train.policy_task import PolicyTask

        model_config = Pi0Config.from_dict(model)
        if config.stage == "finetune" and not model_config.pi06:
            raise ConfigError(f"preset {config.preset} is a pi0.5 policy; finetune trains pi0.6 (adv_ind)",
                              fix="use --preset pi06, pi06-lora or pi06-tiny")
        tiny = is_tiny(config.preset)
        tokenizer = PolicyTokenizer(
            tokenizer_path(config, run_dir), model_config.max_token_len, indicator_dropout=config.data.adv_ind_dropout,
            expected_vocab_size=None if tiny or config.tokenizer else model_config.vocab_size,
        )
        return PolicyTask(model_config, tokenizer, norm_stats, cams or model_config.image_keys,
                          delta_mask=config.data.delta_actions or None)
    from recap_core.train.value_task import value_task

    return value_task(config, cams, run_dir=run_dir)


def _loader(root: Path, config: RunConfig, task: Task, episodes: list[int] | None, *, train: bool,
            batch_size: int | None = None) -> TrainLoader:
    horizon = getattr(getattr(task, "model_config", None), "action_horizon", 1)
    return TrainLoader(root, LoaderConfig(
        batch_size=batch_size or config.batch_size,
        action_horizon=horizon,
        cameras=tuple(config.cameras) if config.cameras else None,
        image_size=tuple(getattr(task, "image_size", (224, 224))),
        seed=config.seed,
        shuffle=config.data.shuffle and train,
        num_workers=max(1, config.data.num_workers),
        num_epochs=None if train else 1,  # validation reads the held-out episodes once, in order
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shard_count=config.data.shards,
        episodes=None if episodes is None else tuple(episodes),
    ))


def val_batch_size(config: RunConfig, val_frames: int) -> int:
    """The validation batch: the training batch, shrunk to fit a small held-out set (0: too small).

    It stays a multiple of the device count, which the data-parallel mesh needs.
    """
    unit = math.lcm(jax.device_count(), config.data.shards or 1)  # every device and data shard gets rows
    fits = min(config.batch_size, val_frames // unit * unit)
    return fits if fits >= unit else 0


def _val_batches(root: Path, config: RunConfig, task: Task, val_eps: list[int],
                 lengths: dict[int, int]) -> Callable[[], Iterator[Batch]] | None:
    """A fresh pass over the held-out episodes each time validation runs (None: nothing to hold out)."""
    batch_size = val_batch_size(config, sum(lengths[e] for e in val_eps))
    if not val_eps or not batch_size or len(val_eps) < max(jax.process_count(), config.data.shards or 1):
        return None
    loader = _loader(root, config, task, val_eps, train=False, batch_size=batch_size)
    start = loader.state_dict()

    def batches() -> Iterator[Batch]:
        loader.load_state_dict(start)
        return iter(loader)

    return batches


def check_dataset(config: RunConfig) -> DatasetInfo:
    """Open the dataset and fail (before anything compiles) if it lacks what the stage needs."""
    info = open_dataset(Path(config.dataset))
    require_columns(info, for_run(config.stage).columns, stage=for_run(config.stage).command)
    if config.cameras:
        camera_keys_for(info, config.cameras)
    return info


def init_parent(config: RunConfig) -> tuple[Path, RunConfig] | None:
    """The recap run `--init` names and its config (None for random, base or published weights):
    what a new run inherits from it (delta-action convention, action width)."""
    found = init_run(config)
    return None if found is None else (found[0], load_run_config(found[0] / "config.json"))


def resolve_delta_actions(config: RunConfig, info: DatasetInfo) -> list[bool] | bool:
    """The run's delta-action mask (False: absolute actions), decided once and written to config.

    Unset inherits the --init run's choice; a run initialised from another must use the same
    convention, or the policy would read deltas as absolute targets (or the reverse).
    """
    if config.stage == "value":
        return False
    wanted = config.data.delta_actions
    parent = (init_parent(config) or (None, None))[1]
    inherited = parent.data.delta_actions if parent is not None and parent.stage != "value" else None
    if wanted is None:
        wanted = inherited if inherited is not None else False
    mask = dataset_delta_mask(info, wanted)
    if inherited is not None and (inherited or False) != mask:
        raise ConfigError(
            f"--init {config.init} trained with data.delta_actions={inherited or False}, this run would use {mask}",
            fix="drop --delta-actions/--absolute-actions to keep the --init run's convention",
        )
    return mask


def fit_action_dim(config: RunConfig, info: DatasetInfo) -> str | None:
    """Take the policy's action width from the data (issue 20, item 2), decided once and written to
    config. Actions are zero-padded to `model.action_dim`, so the width only has to cover the data:
    a randomly initialised model widens to the dataset's (a -tiny preset has 8, ALOHA data 14), a
    model initialised from a recap run takes that run's width, and published weights fix it (32 for
    the real presets). Returns a note for the user when it changed, else None."""
    if config.stage == "value" or "action_dim" not in config.model:
        return None
    have, need = int(config.model["action_dim"]), int(info.action_dim or 0)
    found = init_parent(config)
    if found is not None:
        parent_dir, parent = found
        width = int(parent.model.get("action_dim", have))
        if need > width:
            raise ConfigError(
                f"{info.root}: actions have {need} dims, the --init run {parent_dir} was trained for {width}",
                fix="initialise from a run trained on data this wide, or use --init random",
            )
        config.model["action_dim"] = width
        return f"model.action_dim {width}, as the --init run" if width != have else None
    if need <= have:
        return None
    if config.init != "random":
        raise ConfigError(
            f"{info.root}: actions have {need} dims, more than the {have} of preset {config.preset} "
            f"with --init {config.init} (the weights fix the width)",
            fix="use a preset whose action_dim covers the dataset (real presets: 32), or --init random",
        )
    config.model["action_dim"] = need
    return f"model.action_dim {have} -> {need}: the dataset's actions are {need}-dimensional"


def _successful(info: DatasetInfo, lengths: dict[int, int]) -> dict[int, int]:
    """The episodes that succeeded (schema.episode_success: last frame's reward > 0)."""
    require_columns(info, [REWARD], stage="--success-only")
    table = read_table(info, ["frame_index", REWARD])
    won = episode_success(column_array(table, "episode_index"), column_array(table, "frame_index"),
                          column_array(table, REWARD))
    kept = {e: n for e, n in lengths.items() if won.get(e)}
    if not kept:
        raise ConfigError(f"--success-only: no episode of {info.root} succeeded (no episode whose last frame has reward > 0)",
                          fix="train on all episodes, or add successful ones")
    return kept


def build_job(config: RunConfig, run_dir: Path, *, resuming: bool) -> TrainingJob:
    if config.stage == "sft" and config.model.get("pi06"):  # a config file or --set can get here too
        raise _sft_pi06(config.preset)
    info = check_dataset(config)
    root = Path(config.dataset)
    assets: dict[str, str | bytes] = {}
    norm_stats = None
    notes: list[str] = []
    if not resuming:
        config.data.delta_actions = resolve_delta_actions(config, info)  # recorded in config.json
        notes += filter(None, [fit_action_dim(config, info)])
    if config.stage != "value":
        stats_file = Path(run_dir) / "assets" / "norm_stats.json"
        # A resumed run keeps the stats it started with, even if the dataset grew since.
        if resuming and stats_file.is_file():
            norm_stats = load_norm_stats(stats_file)
        else:
            norm_stats, _ = run_norm_stats(root, delta_actions=config.data.delta_actions or False,
                                           horizon=int(config.model.get("action_horizon", 1)))
        assets["norm_stats.json"] = json.dumps(norm_stats_to_json(norm_stats), indent=2) + "\n"
    cameras = tuple(camera_name(k) for k in (camera_keys_for(info, config.cameras) if config.cameras
                                             else info.camera_keys))
    config.cameras = list(cameras)  # recorded in config.json: loading the run needs the same cameras
    # A resumed run keeps the tokenizer it stored; a new run stores a copy of the one it trains with.
    stored_run = Path(run_dir) if resuming else None
    task = task_for_config(config, norm_stats=norm_stats, cameras=cameras, run_dir=stored_run)
    assets[TOKENIZER_ASSET] = tokenizer_path(config, stored_run).read_bytes()
    lengths = episode_lengths(info)
    if config.data.success_only:
        lengths = _successful(info, lengths)
    train_eps, val_eps = split_episodes(sorted(lengths), config.val.fraction, config.seed)
    val_batches = _val_batches(root, config, task, val_eps, lengths)
    # The value stage also evaluates training episodes the same way (as many frames as held out).
    seen_eps = train_eps[: max(len(val_eps), 1)]
    train_eval = (_val_batches(root, config, task, seen_eps, lengths)
                  if config.stage == "value" and val_batches is not None else None)
    # Episodes held out for validation are never trained on; without validation, train on all.
    train_data = _loader(root, config, task, train_eps if val_batches is not None else None, train=True)

    return TrainingJob(
        task=task,
        task_factory=lambda cfg: task_for_config(cfg),
        train_data=train_data,
        val_batches=val_batches,
        train_eval_batches=train_eval,
        assets=assets,
        notes=notes,
    )
