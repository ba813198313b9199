"""`recap data view`: one self-contained HTML page to browse a dataset's episodes.

The page is one file (images as JPEG data URIs, data and script inline, nothing fetched), so it can
be copied off a cluster and opened anywhere. It shows, for every episode it holds, camera frames at a
stride with a scrubber and time-aligned tracks of `value_label`, `adv_ind`, `intervention` and
`reward`; on a dataset written by `recap value label` also `value_pred`, `advantage` and the
threshold recorded in `meta/recap_label.json` (nothing is recomputed: without that record there is
no threshold line). On top: episodes, frames, label shares per task and, with predictions, the
Spearman correlation of `value_pred` with `value_label` (the normalised return-to-go) and a
calibration table. The summary covers every frame; the episode cards at most `max_episodes`,
spread evenly over the dataset.

It lives in `label/` because it reads what the label stage writes, and `recap value label
--report` writes the same page; it works on any v3.0 dataset with the RECAP columns.

The numbers sit in `<script type="application/json" id="recap-data">` (schema below; per-episode
columns are the dataset's values for every frame, NaN as null), the images in `id="recap-images"`
({episode: {camera: [data URI per entry of image_frames]}}):

    dataset, fps, cameras, tasks, options {stride, jpeg_quality, max_episodes, image_width}
    has_predictions     bool      the dataset has value_pred and advantage
    label               object | null   meta/recap_label.json as written
    summary             {episodes, episodes_shown, episodes_left_out, frames, outcomes {success, failure},
                         label_shares [{task_index, task, frames, positive, negative, none}],
                         spearman, spearman_frames, calibration [{lo, hi, frames, value_pred, value_label}] | null}
    episodes            [{episode_index, task_index, task, length, outcome, intervention_share,
                          threshold (float | null), image_frames [int], columns {name: [value per frame]}}]
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data import schema
from recap_core.data.dataset import (
    IMAGE_PREFIX,
    DatasetInfo,
    camera_keys_for,
    column_array,
    open_dataset,
    read_episodes_meta,
    read_table,
)
from recap_core.errors import ConfigError, DatasetError, RecapError
from recap_core.fsutil import atomic_write_text, check_output
from recap_core.label.relabel import ADVANTAGE, VALUE_PRED, read_label_record
from recap_core.label.report import episode_outcome, spearman

DEFAULT_STRIDE = 5
DEFAULT_JPEG_QUALITY = 70
DEFAULT_MAX_EPISODES = 50
DEFAULT_IMAGE_WIDTH = 160
CALIBRATION_BINS = 10
# Columns drawn as tracks, in the order of the page; the last two only on labelled datasets.
TRACK_COLUMNS = (schema.VALUE_LABEL, schema.ADV_IND, schema.INTERVENTION, schema.REWARD, VALUE_PRED, ADVANTAGE)


@dataclass(frozen=True)
class ViewOptions:
    """The page's size budget: every `stride`-th frame (and the last) as a JPEG of `jpeg_quality`,
    at most `image_width` pixels wide, for at most `max_episodes` episodes; `cameras`: all if None."""

    stride: int = DEFAULT_STRIDE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    max_episodes: int = DEFAULT_MAX_EPISODES
    image_width: int = DEFAULT_IMAGE_WIDTH
    cameras: tuple[str, ...] | None = None


def default_view_path(root: Path) -> Path:
    """`<DATASET>.view.html` beside the dataset (never inside it)."""
    root = Path(root)
    return root.with_name(f"{root.name}.view.html")


def check_options(options: ViewOptions) -> ViewOptions:
    def bad(flag: str, value: object, expected: str, example: str) -> ConfigError:
        return ConfigError(f"{flag} {value} is not {expected}", fix=f"pass e.g. {flag} {example}")

    if options.stride < 1:
        raise bad("--stride", options.stride, "a whole number >= 1", DEFAULT_STRIDE)
    if not 1 <= options.jpeg_quality <= 95:
        raise bad("--jpeg-quality", options.jpeg_quality, "within 1..95", DEFAULT_JPEG_QUALITY)
    if options.max_episodes < 1:
        raise bad("--max-episodes", options.max_episodes, "a whole number >= 1", DEFAULT_MAX_EPISODES)
    if not 16 <= options.image_width <= 4096:
        raise bad("--image-width", options.image_width, "within 16..4096 pixels", DEFAULT_IMAGE_WIDTH)
    return options


def write_view(
    dataset: Path,
    output: Path | None = None,
    options: ViewOptions = ViewOptions(),
    *,
    overwrite: bool = False,
    on_episode: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the page for `dataset` (default `<DATASET>.view.html`) and return what `--json` prints.
    Every check runs before any decoding; the dataset is only read."""
    from recap_core.label.view_page import render_page

    check_options(options)
    info = open_dataset(Path(dataset))
    if not info.has_recap_columns:
        missing = [c for c in schema.RECAP_COLUMNS if c not in info.features]
        raise DatasetError(
            f"{info.root} lacks the RECAP column(s) {', '.join(missing)}; the viewer draws them",
            fix=f"add them first: recap convert lerobot {info.root} {info.root}_recap",
        )
    cameras = camera_keys_for(info, options.cameras) if options.cameras else list(info.camera_keys)
    out = Path(output) if output is not None else default_view_path(info.root)
    if out.is_dir():
        raise RecapError(f"output {out} is a directory; the viewer writes one HTML file",
                         fix=f"name the file, e.g. -o {out / 'episodes.html'}")
    check_output(out, overwrite, inputs=(info.root,))

    doc, images = collect(info, cameras, options, on_episode=on_episode)
    page = render_page(doc, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    summary = doc["summary"]
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "dataset": str(info.root),
        "episodes_shown": summary["episodes_shown"],
        "episodes_total": summary["episodes"],
        "episodes_left_out": summary["episodes_left_out"],
        "frames": summary["frames"],
        "images": sum(len(frames) for cams in images.values() for frames in cams.values()),
        "cameras": doc["cameras"],
        "has_predictions": doc["has_predictions"],
        "thresholds": doc["label"]["thresholds"] if doc["label"] else None,
        **doc["options"],
    }


# --------------------------------------------------------------------------- the numbers


@dataclass(frozen=True)
class _Table:
    """The dataset's tabular columns in (episode, frame) order, with each episode's row range."""

    columns: dict[str, np.ndarray]
    episodes: np.ndarray  # episode_index of each episode, ascending
    starts: np.ndarray
    ends: np.ndarray
    rows: np.ndarray  # row of the arrow table behind each position (for image bytes)


def _read(info: DatasetInfo) -> _Table:
    names = [c for c in TRACK_COLUMNS if c in info.features]
    table = read_table(info, ["frame_index", "task_index", "timestamp", *names])
    if table.num_rows == 0:
        raise DatasetError(f"dataset {info.root} has no frames", fix="point at a dataset with at least one episode")
    raw = {c: column_array(table, c) for c in ["episode_index", "frame_index", "task_index", "timestamp", *names]}
    raw = {c: (a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a) for c, a in raw.items()}
    order = np.lexsort((raw["frame_index"], raw["episode_index"]))
    columns = {c: a[order] for c, a in raw.items()}
    episode = columns["episode_index"]
    starts = np.r_[0, np.flatnonzero(np.diff(episode)) + 1]
    ends = np.r_[starts[1:], episode.size]
    return _Table(columns, episode[starts], starts, ends, order)


def _json_values(values: np.ndarray) -> list:
    """Exact JSON values: floats in their shortest float32/float64 spelling, NaN/inf as null."""
    if values.dtype == object:
        return [str(v) for v in values]
    if values.dtype.kind in "iub":
        return [int(v) for v in values]
    return [float(str(v)) if math.isfinite(v) else None for v in values]


def _pick_episodes(count: int, limit: int) -> np.ndarray:
    """Positions of at most `limit` of `count` episodes, spread evenly (first and last included)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(np.int64))


def _threshold(record: dict | None, task_index: int) -> float | None:
    if record is None:
        return None
    thresholds = record["thresholds"]
    value = thresholds.get("all", thresholds.get(str(task_index)))
    return float(value) if isinstance(value, int | float) else None


def _label_shares(info: DatasetInfo, adv: np.ndarray, task: np.ndarray) -> list[dict]:
    shares = []
    for t in np.unique(task):
        sel = adv[task == t]
        name = info.tasks[t] if 0 <= t < len(info.tasks) else f"task {t}"
        shares.append({"task_index": int(t), "task": name, "frames": int(sel.size),
                       **{v: float(np.mean(sel == v)) for v in schema.ADV_VALUES}})
    return shares


def calibration(value_pred: np.ndarray, value_label: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Frames binned by predicted value over [-1, 0] (outside values in the end bins): per non-empty
    bin its range, frame count, mean prediction and mean realised `value_label`."""
    ok = np.isfinite(value_pred) & np.isfinite(value_label)
    pred, label = value_pred[ok].astype(np.float64), value_label[ok].astype(np.float64)
    edges = np.linspace(-1.0, 0.0, bins + 1)
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "frames": int(sel.sum()),
                        "value_pred": float(pred[sel].mean()), "value_label": float(label[sel].mean())})
    return out


def _summary(info: DatasetInfo, t: _Table, shown: np.ndarray, has_predictions: bool) -> dict[str, Any]:
    cols = t.columns
    outcomes = [episode_outcome(cols[schema.VALUE_LABEL][s:e]) for s, e in zip(t.starts, t.ends, strict=True)]
    summary: dict[str, Any] = {
        "episodes": int(t.episodes.size),
        "episodes_shown": int(shown.size),
        "episodes_left_out": int(t.episodes.size - shown.size),
        "frames": int(cols["episode_index"].size),
        "outcomes": {o: outcomes.count(o) for o in ("success", "failure")},
        "label_shares": _label_shares(info, cols[schema.ADV_IND], cols["task_index"]),
        "spearman": None,
        "spearman_frames": 0,
        "calibration": None,
    }
    if has_predictions:
        pred, label = cols[VALUE_PRED], cols[schema.VALUE_LABEL]
        summary["spearman"] = spearman(pred, label)
        summary["spearman_frames"] = int((np.isfinite(pred) & np.isfinite(label)).sum())
        summary["calibration"] = calibration(pred, label)
    return summary


def _episode(info: DatasetInfo, t: _Table, pos: int, record: dict | None, stride: int) -> dict[str, Any]:
    s, e = int(t.starts[pos]), int(t.ends[pos])
    cols = t.columns
    task = int(cols["task_index"][s])
    length = e - s
    return {
        "episode_index": int(t.episodes[pos]),
        "task_index": task,
        "task": info.tasks[task] if 0 <= task < len(info.tasks) else f"task {task}",
        "length": length,
        "outcome": episode_outcome(cols[schema.VALUE_LABEL][s:e]),
        "intervention_share": float(np.mean(cols[schema.INTERVENTION][s:e] == 1)),
        "threshold": _threshold(record, task) if ADVANTAGE in cols else None,
        "image_frames": sorted({*range(0, length, stride), length - 1}),
        "columns": {c: _json_values(cols[c][s:e]) for c in TRACK_COLUMNS if c in cols},
    }


# --------------------------------------------------------------------------- the images


def _image_size(info: DatasetInfo, key: str, max_width: int) -> tuple[int, int]:
    """(height, width) of a camera scaled to at most `max_width` wide, aspect kept."""
    spec = info.features[key]
    shape, names = list(spec["shape"]), spec.get("names") or []
    if "height" in names and "width" in names:
        h, w = int(shape[names.index("height")]), int(shape[names.index("width")])
    elif len(shape) == 3 and shape[0] in (1, 3) and shape[2] not in (1, 3):
        h, w = int(shape[1]), int(shape[2])  # channels first
    else:
        h, w = int(shape[0]), int(shape[1])
    width = min(max_width, w)
    return max(1, round(h * width / w)), width


def _jpeg_uri(frame: np.ndarray, quality: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Frames:
    """Decodes chosen frames of one camera through the loader's decoders (videos or image features)."""

    def __init__(self, info: DatasetInfo, table: _Table, key: str, size: tuple[int, int]) -> None:
        self.info, self.table, self.key, self.size = info, table, key, size
        self.is_video = info.features[key]["dtype"] == "video"
        self.meta = read_episodes_meta(info) if self.is_video else None
        self.image_bytes: list | None = None

    def decode(self, pos: int, frames: Sequence[int]) -> np.ndarray:
        from recap_core.data.loader import decode_episode_images, decode_episode_video, video_location

        rows = self.table.starts[pos] + np.asarray(frames)
        if self.is_video:
            path, from_ts = video_location(self.info, self.meta, self.key, int(self.table.episodes[pos]))
            timestamps = self.table.columns["timestamp"][rows]
            return decode_episode_video(path, from_ts, timestamps, self.info.fps, self.size)
        if self.image_bytes is None:
            column = read_table(self.info, [self.key]).column(self.key).combine_chunks()
            self.image_bytes = column.field("bytes").to_pylist()
        return decode_episode_images([self.image_bytes[r] for r in self.table.rows[rows]], self.size)


# --------------------------------------------------------------------------- the document


def collect(
    info: DatasetInfo,
    cameras: Sequence[str],
    options: ViewOptions,
    *,
    on_episode: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
    """(the page's data document, its images) as described in the module docstring."""
    table = _read(info)
    has_predictions = VALUE_PRED in table.columns and ADVANTAGE in table.columns
    record = read_label_record(info.root) if has_predictions else None
    shown = _pick_episodes(table.episodes.size, options.max_episodes)
    decoders = {key: _Frames(info, table, key, _image_size(info, key, options.image_width)) for key in cameras}
    episodes, images = [], {}
    for i, pos in enumerate(shown):
        ep = _episode(info, table, int(pos), record, options.stride)
        episodes.append(ep)
        images[str(ep["episode_index"])] = {
            key.removeprefix(IMAGE_PREFIX): [
                _jpeg_uri(frame, options.jpeg_quality) for frame in decoder.decode(int(pos), ep["image_frames"])
            ]
            for key, decoder in decoders.items()
        }
        if on_episode is not None:
            on_episode(i + 1, shown.size)
    doc = {
        "dataset": str(info.root),
        "fps": info.fps,
        "cameras": [key.removeprefix(IMAGE_PREFIX) for key in cameras],
        "tasks": list(info.tasks),
        "options": {k: v for k, v in asdict(options).items() if k != "cameras"},
        "has_predictions": has_predictions,
        "label": record,
        "summary": _summary(info, table, shown, has_predictions),
        "episodes": episodes,
    }
    return doc, images

