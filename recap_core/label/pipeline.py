"""`recap value label` as one library call: validate, predict (cached), threshold, write, report.

Order matters for "bad input writes nothing": every check (columns, flags, cameras, output path,
shard spec) runs before the first prediction or file write.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data.dataset import (
    DatasetInfo,
    camera_keys_for,
    column_array,
    open_dataset,
    read_table,
    require_columns,
)
from recap_core.data.schema import INTERVENTION, REWARD_LABEL, VALUE_LABEL
from recap_core.errors import ConfigError, DatasetError, RecapError
from recap_core.fsutil import check_output
from recap_core.label.advantage import DEFAULT_LOOKAHEAD, Lookahead, check_lookahead, n_step_advantage
from recap_core.label.cache import PredictionCache, default_cache_dir, identity
from recap_core.label.predict import PredictorFactory, needed_mask, predict_values, shard_episodes
from recap_core.label.relabel import FrameLabels, default_output, relabel_in_place, write_labelled_copy
from recap_core.label.threshold import (
    DEFAULT_TOP_PERCENT,
    Binarised,
    binarise,
    check_top_percent,
    skipped_episodes,
)

STAGE = "recap value label"
DEMO_MODES = ("positive", "value")


class MissingPredictionsError(RecapError):
    """Some episodes have no cached value predictions after a merge of shards."""


@dataclass(frozen=True)
class LabelOptions:
    top_percent: float = DEFAULT_TOP_PERCENT
    lookahead: Lookahead = DEFAULT_LOOKAHEAD
    per_task: bool = False
    use_ema: bool = True
    batch_size: int = 8
    cameras: tuple[str, ...] | None = None
    output: Path | None = None
    in_place: bool = False
    overwrite: bool = False
    cache_dir: Path | None = None
    shard: tuple[int, int] | None = None
    merge_from: tuple[Path, ...] = ()
    report_dir: Path | None = None
    # How demonstration episodes (every frame a human's) are labelled: "positive" by rule, like
    # corrections, or "value": by the value model like autonomous frames, as the paper labels all
    # of its data. Use "value" when the demos mix operators of different skill.
    demos: str = "positive"


@dataclass(frozen=True)
class Frames:
    """The tabular columns labelling needs, ordered by global `index` (row = position)."""

    index: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    intervention: np.ndarray
    reward_label: np.ndarray
    value_label: np.ndarray | None


def read_frames(info: DatasetInfo) -> Frames:
    has_value = VALUE_LABEL in info.features
    cols = [INTERVENTION, REWARD_LABEL, "frame_index", "task_index", *([VALUE_LABEL] if has_value else [])]
    table = read_table(info, cols)

    def arr(name: str, dtype: Any) -> np.ndarray:
        return np.asarray(column_array(table, name)).reshape(-1).astype(dtype)

    frames = Frames(
        index=arr("index", np.int64),
        episode_index=arr("episode_index", np.int64),
        frame_index=arr("frame_index", np.int64),
        task_index=arr("task_index", np.int64),
        intervention=arr(INTERVENTION, np.int64),
        reward_label=arr(REWARD_LABEL, np.float64),
        value_label=arr(VALUE_LABEL, np.float64) if has_value else None,
    )
    if not np.isin(frames.intervention, (0, 1)).all():
        raise DatasetError(
            f"column 'intervention' of {info.root} holds values other than 0 and 1",
            fix="store 1 on human/demo frames and 0 on autonomous frames (recap convert lerobot --intervention ...)",
        )
    if not np.isfinite(frames.reward_label).all():
        raise DatasetError(
            f"column 'reward_label' of {info.root} has NaN/inf values",
            fix="recompute the labels: recap convert lerobot IN OUT --success ...",
        )
    return frames


def check_demos(mode: str) -> str:
    """Validate `--demos` (how demo episodes are labelled)."""
    if mode not in DEMO_MODES:
        raise ConfigError(f"--demos {mode!r} is not one of {', '.join(DEMO_MODES)}",
                          fix="pass --demos positive (demos labelled positive by rule) or --demos value")
    return mode


def _demos_as_labelled(frames: Frames) -> np.ndarray:
    """The intervention flags with every frame of a demo episode (all frames human) cleared, so the
    value model labels demos like autonomous frames; corrections inside rollouts stay positive."""
    demos = skipped_episodes(frames.intervention, frames.episode_index)
    return np.where(np.isin(frames.episode_index, demos), 0, frames.intervention)


def resolve_cameras(info: DatasetInfo, cameras: Sequence[str] | None) -> tuple[str, ...]:
    """Full camera keys; all of the dataset's cameras when none are given."""
    keys = camera_keys_for(info, cameras) if cameras else list(info.camera_keys)
    if not keys:
        raise DatasetError(
            f"{info.root} has no camera features; the value model needs images",
            fix="label a dataset with observation.images.* features",
        )
    return tuple(keys)


def episode_rows_of(frames: Frames, episodes: np.ndarray) -> dict[int, np.ndarray]:
    """{episode: its rows in frame order} for the given episodes."""
    order = np.lexsort((frames.frame_index, frames.episode_index))
    ep_sorted = frames.episode_index[order]
    starts = np.searchsorted(ep_sorted, episodes, side="left")
    ends = np.searchsorted(ep_sorted, episodes, side="right")
    return {int(e): order[s:t] for e, s, t in zip(episodes, starts, ends, strict=True)}


def label_dataset(
    dataset: Path,
    checkpoint_hash: str,
    make_predictor: PredictorFactory,
    options: LabelOptions,
    *,
    checkpoint: dict[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the whole label stage; returns the `--json` result. See `LabelOptions` for the knobs.
    `checkpoint` (run directory, step, ...) is recorded with the labels in `meta/recap_label.json`."""
    started = time.perf_counter()
    info = open_dataset(Path(dataset))
    require_columns(info, [REWARD_LABEL, INTERVENTION, "adv_ind"], stage=STAGE)
    top_percent = check_top_percent(options.top_percent)
    lookahead = check_lookahead(options.lookahead)
    cameras = resolve_cameras(info, options.cameras)
    output = _resolve_output(info, options)
    frames = read_frames(info)
    if check_demos(options.demos) == "value":
        frames = dataclasses.replace(frames, intervention=_demos_as_labelled(frames))

    needed = needed_mask(frames.intervention, frames.episode_index, frames.frame_index, lookahead)
    episodes, inverse = np.unique(frames.episode_index, return_inverse=True)
    autonomous_per_ep = np.bincount(inverse, weights=frames.intervention == 0, minlength=episodes.size)
    labelled_eps = episodes[autonomous_per_ep > 0]
    lengths = np.bincount(inverse, minlength=episodes.size)[autonomous_per_ep > 0]
    mine = shard_episodes(labelled_eps, lengths, options.shard)
    rows = episode_rows_of(frames, mine)

    cache_root = options.cache_dir or default_cache_dir(info.root)
    cache = PredictionCache(cache_root, identity(checkpoint_hash, info, cameras, options.use_ema, lookahead))
    merged = sum(cache.import_from(Path(p)) for p in options.merge_from)

    todo_frames = int(sum(needed[r].sum() for ep, r in rows.items() if not cache.has(ep)))
    if on_start is not None:
        on_start(todo_frames)
    pstats = None
    predict_started = time.perf_counter()
    if any(not cache.has(ep) for ep in rows):
        load_batch, predict_fn = make_predictor(info, cameras)
        pstats = predict_values(rows, needed, load_batch, predict_fn, cache, batch_size=options.batch_size, on_batch=on_batch)
    predict_seconds = time.perf_counter() - predict_started

    result: dict[str, Any] = {
        "dataset": str(info.root),
        "cache": str(cache.dir),
        "episodes_in_run": len(rows),
        "episodes_merged": merged,
        "frames_predicted": pstats.frames_predicted if pstats else 0,
        "episodes_from_cache": pstats.episodes_cached if pstats else len(rows),
        "predict_seconds": round(predict_seconds, 3),
        "predict_frames_per_second": (
            round(pstats.frames_predicted / predict_seconds, 2) if pstats and predict_seconds > 0 else None
        ),
    }
    if options.shard is not None:
        result["shard"] = f"{options.shard[0]}/{options.shard[1]}"
        result["seconds"] = round(time.perf_counter() - started, 3)
        return result

    values = _gather_values(frames, episode_rows_of(frames, labelled_eps), cache)
    advantage = n_step_advantage(values, frames.reward_label, frames.episode_index, frames.frame_index, lookahead)
    out = binarise(advantage, frames.intervention, frames.episode_index, frames.task_index, top_percent, options.per_task)
    labels = FrameLabels(frames.index, out.adv_ind, values.astype(np.float32), advantage)
    record = label_record(info, out, options, top_percent, lookahead, {"hash": checkpoint_hash, **(checkpoint or {})})
    if options.in_place:
        written = relabel_in_place(info, labels, record=record)
    else:
        written = write_labelled_copy(info, labels, output, overwrite=options.overwrite, record=record)

    seconds = time.perf_counter() - started
    result.update(
        {
            "output": str(written),
            "in_place": options.in_place,
            "frames": int(frames.index.size),
            "frames_labelled": out.autonomous_frames,
            "positive_fraction": out.positive_fraction,
            "positive_frames": out.positive_autonomous,
            "thresholds": out.thresholds,
            "top_percent": top_percent,
            "lookahead": lookahead,
            "per_task": options.per_task,
            "demos": options.demos,
            "skipped_episodes": out.skipped_episodes,
            "seconds": round(seconds, 3),
            "frames_per_second": round(out.autonomous_frames / seconds, 2) if seconds > 0 else None,
        }
    )
    if options.report_dir is not None:
        from recap_core.label.report import write_report
        from recap_core.label.view import write_view

        result["report"] = write_report(
            options.report_dir,
            advantage=advantage,
            autonomous=frames.intervention == 0,
            thresholds=out.thresholds,
            episode_index=frames.episode_index,
            frame_index=frames.frame_index,
            value_label=frames.value_label if frames.value_label is not None else np.full(values.size, np.nan),
            value_pred=values,
        )
        result["report"]["episodes_page"] = write_view(written, Path(options.report_dir) / "episodes.html",
                                                       overwrite=True)
        result["spearman"] = result["report"]["spearman"]
    elif frames.value_label is not None:
        from recap_core.label.report import spearman

        result["spearman"] = spearman(values, frames.value_label)
    return result


def label_record(info: DatasetInfo, out: Binarised, options: LabelOptions, top_percent: float,
                 lookahead: Lookahead, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What `meta/recap_label.json` says about the labels: thresholds by group ("all", or a task
    index with --per-task; a frame is positive iff its advantage >= its group's threshold) and the
    settings and value model that made them."""
    from recap_core import __version__

    return {
        "written_by": f"recap value label (recap {__version__})",
        "thresholds": out.thresholds,
        "per_task": options.per_task,
        "tasks": {str(i): name for i, name in enumerate(info.tasks)},
        "top_percent": top_percent,
        "lookahead": lookahead,
        "demos": options.demos,
        "frames_labelled": out.autonomous_frames,
        "positive_fraction": out.positive_fraction,
        "skipped_episodes": out.skipped_episodes,
        "checkpoint": checkpoint,
    }


def _resolve_output(info: DatasetInfo, options: LabelOptions) -> Path | None:
    if options.report_dir is not None:  # checked now, not after the labelled dataset is written
        report = Path(options.report_dir)
        if report.exists() and not report.is_dir():
            raise RecapError(f"--report {report} is a file; the report is a directory of plots and JSON",
                             fix="pass a directory path (it is created if missing)")
        check_output(report, True, inputs=(info.root,))
    if options.in_place:
        if options.output is not None:
            raise RecapError("--output and --in-place were both given", fix="pass one of them (the default is a new dataset)")
        return None
    if options.shard is not None:
        return None
    output = Path(options.output) if options.output is not None else default_output(info.root)
    check_output(output, options.overwrite, inputs=(info.root,))
    if options.report_dir is not None:  # the dataset is renamed into place at the end: a report inside it would be lost
        report, target = Path(options.report_dir).resolve(), output.resolve()
        if report == target or target in report.parents:
            raise RecapError(f"--report {options.report_dir} lies inside --output {output}: the labelled dataset "
                             "is written to a temporary directory and renamed into place, so the report would be lost",
                             fix="put the report outside the output dataset, e.g. beside it")
    return output


def _gather_values(frames: Frames, rows: dict[int, np.ndarray], cache: PredictionCache) -> np.ndarray:
    values = np.full(frames.index.size, np.nan, dtype=np.float64)
    missing = [ep for ep in rows if not cache.has(ep)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise MissingPredictionsError(
            f"no value predictions for {len(missing)} episode(s): {shown} (cache {cache.dir})",
            fix="run the missing --shard i/n jobs and pass their caches to --merge-shards, or run without --shard",
        )
    for ep, r in rows.items():
        cached = cache.load(ep)
        if cached.size != r.size:
            raise DatasetError(
                f"cached predictions for episode {ep} have {cached.size} frames; the dataset has {r.size}",
                fix=f"delete the stale cache {cache.dir} and rerun",
            )
        values[r] = cached
    return values


def label_with_checkpoint(
    dataset: Path,
    checkpoint: Path,
    options: LabelOptions,
    *,
    preflight: bool = True,
    warn: Callable[[str], None] = lambda _: None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """`recap value label` end to end: resolve the value run (`--checkpoint`), feed it the cameras it
    was trained on unless `options.cameras` names others, run the doctor's value-label checks, label.
    The result says which value model (run, step, EMA or raw) made the labels."""
    from recap_core.label.checkpoint import resolve_value_checkpoint
    from recap_core.label.model import value_predictor

    # Cheap flag checks first: hashing a large checkpoint should not precede a typo's error.
    check_top_percent(options.top_percent)
    check_lookahead(options.lookahead)
    check_demos(options.demos)
    ckpt = resolve_value_checkpoint(Path(checkpoint))
    if options.cameras is None:
        options = dataclasses.replace(options, cameras=ckpt.cameras)
    if preflight:
        from recap_core.doctor import preflight as doctor_preflight

        doctor_preflight("value-label", warn=warn, preset=ckpt.preset, dataset=Path(dataset),
                         output_dir=Path(options.output or dataset).parent)
    # Which value model made the labels: a run has several steps, and the latest is the default.
    used = {"run_dir": str(ckpt.run_dir), "step": ckpt.step, "chosen": ckpt.chosen, "use_ema": options.use_ema}
    result = label_dataset(dataset, ckpt.content_hash(), value_predictor(ckpt, use_ema=options.use_ema), options,
                           checkpoint=used, on_start=on_start, on_batch=on_batch)
    result["checkpoint"] = used
    return result
