"""Merge LeRobot v3.0 datasets (e.g. rounds of collection) into one new dataset.

Sources must agree on fps, robot type and every feature (dtype, shape, names, camera keys and
video encoding); the first disagreement is reported naming both datasets and both values. The
copy itself is lerobot's `aggregate_datasets`: it re-indexes episodes, frames and tasks (tasks are
unified by their text), concatenates videos without re-encoding, keeps EVERY feature, and
aggregates the per-episode stats into `meta/stats.json`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from recap_core.data.dataset import (
    DatasetInfo,
    open_dataset,
    output_dataset_dir,
    quiet_writers,
    validate_dataset,
)
from recap_core.errors import DatasetError
from recap_core.fsutil import check_output


def _feature_view(spec: dict) -> dict:
    return {**spec, "shape": list(spec.get("shape", []))}


def check_compatible(infos: list[DatasetInfo]) -> None:
    """Raise a DatasetError naming both sides of the first difference between `infos[0]` and another."""
    first = infos[0]
    for other in infos[1:]:
        pair = f"{first.root} and {other.root}"
        if first.fps != other.fps:
            raise DatasetError(f"{pair} differ in fps: {first.fps} vs {other.fps}", fix="merge datasets recorded at the same rate")
        if first.robot_type != other.robot_type:
            raise DatasetError(
                f"{pair} differ in robot_type: {first.robot_type!r} vs {other.robot_type!r}",
                fix="merge datasets of the same robot (or fix robot_type in meta/info.json)",
            )
        a, b = set(first.features), set(other.features)
        if a != b:
            only_a, only_b = sorted(a - b), sorted(b - a)
            raise DatasetError(
                f"{pair} have different features: only in the first: {only_a or 'none'}; only in the second: {only_b or 'none'}",
                fix="convert both the same way (e.g. `recap convert lerobot` adds the RECAP columns) before merging",
            )
        for key in first.features:
            fa, fb = _feature_view(first.features[key]), _feature_view(other.features[key])
            if fa != fb:
                order = ["dtype", "shape", "names", "info", *sorted(set(fa) | set(fb))]
                field = next(k for k in order if fa.get(k) != fb.get(k))
                raise DatasetError(
                    f"feature {key!r} differs in {field}: {fa.get(field)!r} in {first.root} vs {fb.get(field)!r} in {other.root}",
                    fix="re-record or re-convert one dataset so shapes, dtypes, names and video settings agree",
                )


def merge_datasets(sources: list[Path], out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Merge `sources` (v3.0 datasets, in order) into a new dataset at `out`; returns a summary."""
    if len(sources) < 2:
        raise DatasetError(f"merge needs at least two datasets, got {len(sources)}", fix="pass two or more dataset paths")
    resolved = [Path(s).resolve() for s in sources]
    if len(set(resolved)) != len(resolved):
        raise DatasetError("the same dataset is given twice", fix="pass each dataset once")
    infos = [open_dataset(s) for s in sources]  # only metadata: a path that is no dataset says so first
    check_output(Path(out), overwrite, inputs=tuple(Path(s) for s in sources))  # before any work
    for info in infos:
        # Every column's values (RECAP ranges, NaN/inf) and every video file's first frame: a bad
        # source is refused naming it, before lerobot copies it into the merged dataset.
        validate_dataset(info, decode_videos=True)
    check_compatible(infos)
    from lerobot.datasets.aggregate import aggregate_datasets  # slow import: only once inputs are good

    quiet_writers()
    with output_dataset_dir(out, overwrite, inputs=tuple(Path(s) for s in sources)) as tmp:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                aggregate_datasets(
                    repo_ids=[f"local/source_{i}" for i in range(len(sources))],
                    aggr_repo_id=f"local/{Path(out).name}",
                    roots=[Path(s) for s in sources],
                    aggr_root=tmp,
                )
            except ValueError as exc:
                raise DatasetError(f"lerobot refused to merge: {exc}", fix="make the datasets' meta/info.json features identical") from exc
        merged = open_dataset(tmp)
        validate_dataset(merged)
    return {
        "output": str(out),
        "sources": [str(s) for s in sources],
        "episodes": merged.episodes,
        "frames": merged.frames,
        "tasks": list(merged.tasks),
        "features": len(merged.features),
    }
