"""An existing LeRobot dataset (v2.1 or v3.0) without RECAP columns -> a new v3.0 dataset with them.

The five columns are appended to the data parquet files; videos are hard-linked (never re-encoded),
`meta/info.json` gains the feature specs, and the per-episode and dataset stats gain entries for
the numeric RECAP columns (lerobot keeps no stats for the string column `adv_ind`). A v2.1 input is
first converted with lerobot's own converter inside the output's temporary directory.

Episode success comes from `--success`: `all`, a per-frame COLUMN (its value on the episode's last
frame, e.g. `next.success`), or a JSON / CSV FILE mapping episode_index -> success. Intervention
comes from `--intervention`: a 0/1 COLUMN, `all` (human demonstrations) or `none` (autonomous).
The success rule is stated in the summary and recorded in `meta/recap_source.json` (`data.source`).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data import schema
from recap_core.data.dataset import (
    V21,
    V30,
    ProgressFn,
    column_array,
    data_files,
    dataset_version,
    open_dataset,
    read_parquet,
    read_table,
    validate_dataset,
)
from recap_core.data.source import success_counts, write_source_record
from recap_core.errors import DatasetError
from recap_core.fsutil import atomic_output_dir, check_output, link_or_copy

TRUE_WORDS = {"1", "true", "yes", "success", "t", "y"}
FALSE_WORDS = {"0", "false", "no", "failure", "fail", "f", "n"}


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS | FALSE_WORDS:
        return text in TRUE_WORDS
    raise DatasetError(f"{where}: {value!r} is not a success value", fix="use true/false or 1/0")


def read_success_file(path: Path, episodes: list[int]) -> dict[int, bool]:
    """{episode_index: success} from JSON ({"0": true, ...} or [true, ...]) or CSV (episode_index,success)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read success file {path} ({exc})", fix="pass a readable JSON or CSV file") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"success file {path} is not valid JSON ({exc})", fix='write {"0": true, "1": false, ...}') from exc
        items = enumerate(data) if isinstance(data, list) else data.items() if isinstance(data, dict) else None
        if items is None:
            raise DatasetError(f"success file {path} must hold an object or a list", fix='write {"0": true, "1": false, ...}')
    else:
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or not {"episode_index", "success"} <= set(rows[0]):
            raise DatasetError(f"success file {path} needs CSV columns episode_index,success", fix="add a header line: episode_index,success")
        items = [(r["episode_index"], r["success"]) for r in rows]
    out: dict[int, bool] = {}
    for key, value in items:
        try:
            ep = int(key)
        except ValueError as exc:
            raise DatasetError(f"success file {path}: episode {key!r} is not an integer", fix="key rows by episode_index") from exc
        out[ep] = _as_bool(value, f"success file {path}, episode {ep}")
    missing = [ep for ep in episodes if ep not in out]
    if missing:
        raise DatasetError(
            f"success file {path} has no entry for episode(s) {missing[:10]}",
            fix="give a success value for every episode of the dataset",
        )
    return {ep: out[ep] for ep in episodes}


def success_rule(spec: str) -> dict[str, str]:
    """How `--success SPEC` is read, as `meta/recap_source.json` records it: 'all', a FILE, else a COLUMN."""
    if spec == "all":
        return {"success_rule": "all"}
    if Path(spec).is_file():
        return {"success_rule": "file", "success_from": Path(spec).name}
    return {"success_rule": "column", "success_from": spec}


def _episode_success(spec: str, info, per_episode: dict[int, np.ndarray] | None, episodes: list[int]) -> dict[int, bool]:
    rule = success_rule(spec)["success_rule"]
    if rule == "all":
        return dict.fromkeys(episodes, True)
    if rule == "file":
        return read_success_file(Path(spec), episodes)
    if spec not in info.features:
        raise DatasetError(
            f"--success {spec!r} is neither 'all', an existing file, nor a column of {info.root}",
            fix=f"use 'all', a JSON/CSV file, or one of: {', '.join(sorted(info.features))}",
        )
    assert per_episode is not None
    return {ep: _as_bool(np.asarray(per_episode[ep]).reshape(len(per_episode[ep]), -1)[-1, 0], f"column {spec!r}, episode {ep}") for ep in episodes}


def _episode_intervention(spec: str, info, per_episode: dict[int, np.ndarray] | None, lengths: dict[int, int]) -> dict[int, np.ndarray]:
    if spec in ("all", "none"):
        return {ep: np.full(n, 1 if spec == "all" else 0, np.int64) for ep, n in lengths.items()}
    if spec not in info.features:
        raise DatasetError(
            f"--intervention {spec!r} is neither 'all', 'none', nor a column of {info.root}",
            fix=f"use 'all', 'none', or one of: {', '.join(sorted(info.features))}",
        )
    assert per_episode is not None
    out = {}
    for ep, values in per_episode.items():
        flags = np.asarray(values).reshape(len(values), -1)[:, 0]
        if not np.isin(flags, (0, 1)).all():
            raise DatasetError(f"column {spec!r} (--intervention) holds values other than 0/1 in episode {ep}", fix="use a 0/1 or boolean column")
        out[ep] = flags.astype(np.int64)
    return out


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link videos (read-only for us), copy the rest (we rewrite data and meta)."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            rel = path.relative_to(src)
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel.parts[0] == "videos":
                link_or_copy(path, target)
            else:
                shutil.copy2(path, target)


def _add_columns_to_data(root: Path, labels: dict[int, schema.EpisodeLabels]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {schema.INTERVENTION: pa.int64(), schema.REWARD: pa.float32(), schema.REWARD_LABEL: pa.float32(),
             schema.VALUE_LABEL: pa.float32(), schema.ADV_IND: pa.string()}
    for path in sorted((root / "data").glob("**/*.parquet")):
        table = pq.read_table(path)
        episode = table.column("episode_index").to_numpy()
        frame = table.column("frame_index").to_numpy()
        for name in schema.RECAP_COLUMNS:
            values = [getattr(labels[int(e)], name)[int(f)] for e, f in zip(episode, frame, strict=True)]
            table = table.append_column(pa.field(name, types[name]), pa.array(values, types[name]))
        pq.write_table(table, path)


def _add_stats(root: Path, labels: dict[int, schema.EpisodeLabels]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lerobot.datasets.compute_stats import aggregate_stats, get_feature_stats

    numeric = [c for c in schema.RECAP_COLUMNS if schema.RECAP_FEATURES[c]["dtype"] != "string"]
    per_episode = {ep: {c: get_feature_stats(getattr(lab, c).astype(np.float64 if c != schema.INTERVENTION else np.int64), axis=0, keepdims=True) for c in numeric} for ep, lab in labels.items()}
    for path in sorted((root / "meta" / "episodes").glob("**/*.parquet")):
        table = pq.read_table(path)
        eps = table.column("episode_index").to_pylist()
        for c in numeric:
            for stat in per_episode[eps[0]][c]:
                values = [np.asarray(per_episode[e][c][stat]).tolist() for e in eps]
                table = table.append_column(f"stats/{c}/{stat}", pa.array(values))
        pq.write_table(table, path)
    stats_path = root / "meta" / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    merged = aggregate_stats(list(per_episode.values()))
    for c in numeric:
        stats[c] = {k: np.asarray(v).tolist() for k, v in merged[c].items()}
    stats_path.write_text(json.dumps(stats, indent=4))


def convert_lerobot(
    src: Path,
    out: Path,
    *,
    success: str = "all",
    intervention: str = "all",
    failure_penalty: float = schema.DEFAULT_FAILURE_PENALTY,
    t_max: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write `src` with the five RECAP columns as a new v3.0 dataset at `out`; returns a summary."""
    from recap_core.data.versions import v21_to_v30

    src = Path(src)
    failure_penalty = schema.check_failure_penalty(failure_penalty)
    check_output(Path(out), overwrite, inputs=(src,))  # fail fast, before reading anything
    version = dataset_version(src)
    pre = open_dataset(src, version=None)
    present = [c for c in schema.RECAP_COLUMNS if c in pre.features]
    if present:
        raise DatasetError(
            f"{src} already has RECAP column(s) {present}",
            fix="it is already RECAP-ready; relabel adv_ind with `recap value label`, or convert the dataset it came from",
        )
    with atomic_output_dir(out, overwrite, inputs=(src,)) as tmp:
        source = src
        if version == V21:
            source = tmp / ".v30"
            v21_to_v30(src, source)
        info = open_dataset(source, version=V30)
        for path in data_files(info):
            read_parquet(path, ["index"])
        validate_dataset(info)
        columns = [c for c in (success, intervention) if c in info.features]
        table = read_table(info, ["frame_index", *columns])
        episode = table.column("episode_index").to_numpy()
        episodes = [int(e) for e in np.unique(episode)]
        lengths = {ep: int((episode == ep).sum()) for ep in episodes}
        per_col = {c: column_array(table, c) for c in columns}
        split = {c: {ep: a[episode == ep] for ep in episodes} for c, a in per_col.items()}
        successes = _episode_success(success, info, split.get(success), episodes)
        flags = _episode_intervention(intervention, info, split.get(intervention), lengths)
        task_index = read_table(info, ["task_index"]).column("task_index").to_numpy()
        ep_task = {ep: int(task_index[episode == ep][0]) for ep in episodes}
        computed = schema.recap_labels(
            [lengths[e] for e in episodes], [successes[e] for e in episodes], [flags[e] for e in episodes],
            [ep_task[e] for e in episodes], t_max=t_max, failure_penalty=failure_penalty,
        )
        labels = dict(zip(episodes, computed, strict=True))
        final = tmp / ".out"
        _copy_tree(source, final)
        _add_columns_to_data(final, labels)
        _add_stats(final, labels)
        info_json = json.loads((final / "meta" / "info.json").read_text())
        info_json["features"].update({k: {**v, "shape": list(v["shape"])} for k, v in schema.RECAP_FEATURES.items()})
        (final / "meta" / "info.json").write_text(json.dumps(info_json, indent=4))
        if progress is not None:
            progress(len(episodes), len(episodes))
        for child in final.iterdir():
            shutil.move(str(child), str(tmp / child.name))
        shutil.rmtree(final)
        shutil.rmtree(tmp / ".v30", ignore_errors=True)
        how = {**success_rule(success), **success_counts([successes[e] for e in episodes])}
        write_source_record(tmp, {"converter": "lerobot", **how})
        validate_dataset(open_dataset(tmp), columns=list(schema.RECAP_COLUMNS))
    frames = sum(lengths.values())
    return {
        "output": str(out),
        "input_version": version,
        "episodes": len(episodes),
        "frames": frames,
        "cameras": list(info.cameras),
        **how,
        "success_rate": float(np.mean([successes[e] for e in episodes])),
        "intervention_fraction": float(sum(int(f.sum()) for f in flags.values()) / frames),
    }
