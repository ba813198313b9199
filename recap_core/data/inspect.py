"""What a dataset holds (`recap data inspect`; `stages.inspect_dataset` adds which stages it is ready for).

Reads metadata and tabular parquet columns, and from each video file only its first frame and the
location of its last packets (`dataset.video_problems`), so it stays fast on large datasets.

JSON schema of `describe_dataset(...)` (stable; `recap data inspect --json` prints this plus `ready`,
documented in `recap_core/stages.py`):

    root                   str      dataset directory
    version                str      "v3.0" | "v2.1"
    fps                    int
    robot_type             str | null
    episodes               int      episodes with frames in data/
    frames                 int
    episode_length         {"min": int, "mean": float, "max": int}
    features               {name: {"dtype": str, "shape": [int, ...]}}   every feature in info.json
    cameras                [str]    short names ("cam_high"), video or image features
    state_dim, action_dim  int | null
    tasks                  [{"task_index": int, "task": str, "episodes": int, "frames": int}]
    recap_columns          {column: bool}   which of the five RECAP columns exist
    success_rate           float | null     episodes whose last frame has reward > 0, over episodes (null: no reward)
    successful_episodes    int | null
    intervention_fraction  float | null     frames with intervention == 1, over frames (null: no intervention)
    intervention_episodes  int | null       episodes with at least one intervention frame
    adv_ind_counts         {"positive": int, "negative": int, "none": int} | null   (plus any unknown value)
    value_label_range      [float, float] | null                                    [min, max]
    source                 object | null    meta/recap_source.json as a recap converter wrote it (the success
                                    rule, e.g. {"converter": "aloha-hdf5", "success_rule": "attr",
                                    "successful_episodes": 3, "failed_episodes": 1}; `data.source`)
    problems               [str]    validation failures (NaN/inf, intervention not 0/1, value_label out of
                                    [-1, 0], unknown adv_ind, missing videos, ...; each names the column,
                                    episode and frame) and one entry per unreadable video file (its path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data import schema
from recap_core.data.source import read_source_record
from recap_core.errors import DatasetError


def describe_dataset(root: str | Path) -> dict[str, Any]:
    """The report described in the module docstring. Raises DatasetError if `root` is not a dataset."""
    from recap_core.data.dataset import open_dataset, read_table, validate_dataset, video_problems

    info = open_dataset(Path(root), version=None)
    present = [c for c in schema.RECAP_COLUMNS if c in info.features]
    table = read_table(info, ["frame_index", "task_index", *present])
    episode = table.column("episode_index").to_numpy()
    task_index = table.column("task_index").to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(episode)) + 1] if len(episode) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(episode)] if len(episode) else starts
    lengths = ends - starts
    cols = {c: _column(table, c) for c in present}

    problems: list[str] = []
    try:
        validate_dataset(info, columns=present)
    except DatasetError as exc:
        problems.append(exc.message)
    problems.extend(video_problems(info))

    report: dict[str, Any] = {
        "root": str(info.root),
        "version": info.version,
        "fps": info.fps,
        "robot_type": info.robot_type,
        "episodes": len(starts),
        "frames": len(episode),
        "episode_length": (
            {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
            if len(lengths)
            else {"min": 0, "mean": 0.0, "max": 0}
        ),
        "features": {k: {"dtype": f.get("dtype"), "shape": list(f.get("shape", []))} for k, f in info.features.items()},
        "cameras": list(info.cameras),
        "state_dim": info.state_dim,
        "action_dim": info.action_dim,
        "tasks": _tasks(info.tasks, task_index, episode, starts),
        "recap_columns": {c: c in info.features for c in schema.RECAP_COLUMNS},
        "success_rate": None,
        "successful_episodes": None,
        "intervention_fraction": None,
        "intervention_episodes": None,
        "adv_ind_counts": None,
        "value_label_range": None,
        "source": read_source_record(info.root),
        "problems": problems,
    }
    if schema.REWARD in cols and len(starts):
        success = np.array(list(schema.episode_success(episode, table.column("frame_index").to_numpy(),
                                                       cols[schema.REWARD]).values()))
        report["successful_episodes"] = int(success.sum())
        report["success_rate"] = float(success.mean())
    if schema.INTERVENTION in cols and len(episode):
        flags = cols[schema.INTERVENTION] == 1
        report["intervention_fraction"] = float(flags.mean())
        report["intervention_episodes"] = int(np.add.reduceat(flags.astype(np.int64), starts).astype(bool).sum())
    if schema.ADV_IND in cols:
        counts = {v: 0 for v in schema.ADV_VALUES}
        values, n = np.unique(cols[schema.ADV_IND].astype(str), return_counts=True)
        counts.update({str(v): int(c) for v, c in zip(values, n, strict=True)})
        report["adv_ind_counts"] = counts
    if schema.VALUE_LABEL in cols and len(episode):
        report["value_label_range"] = [float(cols[schema.VALUE_LABEL].min()), float(cols[schema.VALUE_LABEL].max())]

    return report


def _column(table: Any, name: str) -> np.ndarray:
    col = table.column(name)
    if name == schema.ADV_IND:
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def _tasks(names: tuple[str, ...], task_index: np.ndarray, episode: np.ndarray, starts: np.ndarray) -> list[dict]:
    out = []
    for i, name in enumerate(names):
        rows = task_index == i
        out.append(
            {
                "task_index": i,
                "task": name,
                # An episode counts for the task of its first frame (episodes have one task in practice).
                "episodes": int((task_index[starts] == i).sum()) if len(starts) else 0,
                "frames": int(rows.sum()),
            }
        )
    return out
