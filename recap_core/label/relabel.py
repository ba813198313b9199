"""Write new advantage labels into a LeRobot v3.0 dataset: as a new dataset, or atomically in place.

What changes:
- `data/**/*.parquet`: `adv_ind` replaced; audit columns `value_pred` and `advantage` (float32,
  NaN where nothing was predicted, e.g. demo episodes) added, or replaced on a relabelled dataset.
  The parquet's `huggingface` schema metadata lists the new columns so `datasets` types them.
- `meta/info.json`: the two new features.
- `meta/stats.json` and `meta/episodes/**/*.parquet`: lerobot-style stats of the two new columns
  (computed by lerobot's own `compute_episode_stats` / `aggregate_stats` over the finite values;
  an episode with no predictions gets NaN stats with count 0).
- `meta/recap_label.json` (`LABEL_RECORD`): how the labels were made (thresholds per group, top
  percent, lookahead, checkpoint), so a reader such as `recap data view` can draw the threshold
  without recomputing anything. A copy written without a record (e.g. ground-truth labels) drops
  the input's record: it would describe labels that are no longer there.
Everything else is carried over unchanged: videos are hardlinked (no disk cost; a copy where
linking is impossible), other files copied (lerobot rewrites small metadata files in place, which
through a hardlink would silently edit the input).

`--in-place` stages every rewritten file as a temporary sibling (written and fsynced), records the
planned renames in a journal, then renames data files first and `meta/info.json` last. A crash
before the journal leaves the dataset untouched; a crash during the renames is finished by the
next run (`recover_in_place`), so the dataset is never left half written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recap_core.data.dataset import DatasetInfo, data_files, meta_record_bytes, read_meta_record
from recap_core.data.schema import ADV_IND, ADV_VALUES, VALUE_LABEL
from recap_core.errors import DatasetError
from recap_core.fsutil import atomic_output_dir, atomic_write_bytes, link_or_copy

VALUE_PRED = "value_pred"
ADVANTAGE = "advantage"
AUDIT_COLUMNS = (VALUE_PRED, ADVANTAGE)
LABEL_RECORD = Path("meta/recap_label.json")
JOURNAL = ".recap-relabel-journal.json"
STAGED_SUFFIX = ".recap-staged"


@dataclass(frozen=True)
class FrameLabels:
    """New labels for every frame, aligned by the dataset's global `index` (sorted ascending)."""

    index: np.ndarray  # int64 [N]
    adv_ind: np.ndarray  # object (str) [N]
    value_pred: np.ndarray  # float32 [N]
    advantage: np.ndarray  # float32 [N]

    def __post_init__(self) -> None:
        n = self.index.size
        if not (self.adv_ind.size == self.value_pred.size == self.advantage.size == n):
            raise ValueError("index, adv_ind, value_pred and advantage must have one entry per frame")
        if n and np.any(np.diff(self.index) <= 0):
            raise ValueError("FrameLabels.index must be strictly increasing")
        unknown = set(self.adv_ind.tolist()) - set(ADV_VALUES)
        if unknown:
            raise ValueError(f"adv_ind values {sorted(unknown)} are not in {ADV_VALUES}")


def default_output(root: Path) -> Path:
    """`<DATASET>_labeled` beside the dataset."""
    root = Path(root)
    return root.with_name(f"{root.name}_labeled")


# --------------------------------------------------------------------------- what gets rewritten


def _rows_for(labels: FrameLabels, index: np.ndarray, path: Path) -> np.ndarray:
    rows = np.searchsorted(labels.index, index)
    ok = (rows < labels.index.size) & (labels.index[np.minimum(rows, labels.index.size - 1)] == index)
    if not ok.all():
        missing = int(index[~ok][0])
        raise DatasetError(
            f"{path}: frame with index {missing} has no new label (the dataset changed while labelling?)",
            fix="rerun `recap value label` on the dataset as it is now",
        )
    return rows


def _hf_metadata(schema_metadata: dict | None) -> dict[bytes, bytes]:
    """The parquet's `huggingface` metadata with the audit columns typed as float32 Values."""
    meta = dict(schema_metadata or {})
    hf = json.loads(meta.get(b"huggingface", b"{}") or b"{}")
    features = hf.setdefault("info", {}).setdefault("features", {})
    for name in AUDIT_COLUMNS:
        features[name] = {"dtype": "float32", "_type": "Value"}
    # The fingerprint names the old content to `datasets`' cache; the content changed.
    hf.pop("fingerprint", None)
    meta[b"huggingface"] = json.dumps(hf).encode()
    return meta


def rewrite_data_file(path: Path, labels: FrameLabels):
    """The parquet at `path` with new `adv_ind` and audit columns, as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "index" not in table.column_names or ADV_IND not in table.column_names:
        raise DatasetError(f"{path} lacks the 'index' or 'adv_ind' column", fix="re-convert the dataset")
    rows = _rows_for(labels, table.column("index").to_numpy(), path)
    new = {
        ADV_IND: pa.array(labels.adv_ind[rows].tolist(), type=table.schema.field(ADV_IND).type),
        VALUE_PRED: pa.array(labels.value_pred[rows].astype(np.float32), type=pa.float32()),
        ADVANTAGE: pa.array(labels.advantage[rows].astype(np.float32), type=pa.float32()),
    }
    for name, column in new.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table.replace_schema_metadata(_hf_metadata(table.schema.metadata))


def _audit_feature(info: DatasetInfo) -> dict:
    spec: dict = {"dtype": "float32", "shape": [1], "names": None}
    # Datasets converted from v2.1 carry "fps" on every non-video feature; stay consistent.
    if "fps" in info.features.get(VALUE_LABEL, {}):
        spec["fps"] = info.features[VALUE_LABEL]["fps"]
    return spec


def rewrite_info(info: DatasetInfo) -> dict:
    new = json.loads(json.dumps(info.info))
    for name in AUDIT_COLUMNS:
        new["features"][name] = _audit_feature(info)
    return new


def _stat_keys(info: DatasetInfo) -> set[str] | None:
    """Stat names the dataset already uses (v2.1-converted datasets have no quantiles)."""
    stats_path = info.root / "meta" / "stats.json"
    if not stats_path.is_file():
        return None
    stats = json.loads(stats_path.read_text())
    sample = stats.get(VALUE_LABEL) or next(iter(stats.values()), None)
    return set(sample) if isinstance(sample, dict) else None


def episode_stats(values: np.ndarray, name: str, keys: set[str] | None) -> dict[str, np.ndarray]:
    """lerobot's per-episode stats of one float32 column, over its finite values."""
    from lerobot.datasets.compute_stats import compute_episode_stats

    finite = values[np.isfinite(values)].astype(np.float32)
    if finite.size == 0:
        stats = compute_episode_stats({name: np.zeros((1, 1), np.float32)}, {name: {"dtype": "float32"}})[name]
        stats = {k: (np.array([0]) if k == "count" else np.full_like(v, np.nan, dtype=np.float64)) for k, v in stats.items()}
    else:
        stats = compute_episode_stats({name: finite.reshape(-1, 1)}, {name: {"dtype": "float32"}})[name]
    return {k: v for k, v in stats.items() if keys is None or k in keys}


def rewrite_episodes_file(path: Path, labels: FrameLabels, keys: set[str] | None, per_episode: dict):
    """The meta/episodes parquet at `path` with stats columns for the audit columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    episodes = table.column("episode_index").to_pylist()
    for name in AUDIT_COLUMNS:
        stats = [per_episode[ep][name] for ep in episodes]
        for key in stats[0]:
            col = f"stats/{name}/{key}"
            values = [np.asarray(s[key]).reshape(-1).tolist() for s in stats]
            arr = pa.array(values, type=pa.list_(pa.int64() if key == "count" else pa.float64()))
            if col in table.column_names:
                table = table.set_column(table.column_names.index(col), col, arr)
            else:
                table = table.append_column(col, arr)
    return table


def _episode_stats_by_episode(info: DatasetInfo, labels: FrameLabels, keys: set[str] | None) -> dict:
    from recap_core.data.dataset import column_array, read_table

    table = read_table(info, ["episode_index"])
    episode = column_array(table, "episode_index")
    index = column_array(table, "index")
    rows = _rows_for(labels, index, info.root / "data")
    out: dict[int, dict] = {}
    order = np.argsort(episode, kind="stable")
    eps, starts = np.unique(episode[order], return_index=True)
    bounds = np.r_[starts, order.size]
    for i, ep in enumerate(eps):
        sel = rows[order[bounds[i] : bounds[i + 1]]]
        out[int(ep)] = {
            VALUE_PRED: episode_stats(labels.value_pred[sel], VALUE_PRED, keys),
            ADVANTAGE: episode_stats(labels.advantage[sel], ADVANTAGE, keys),
        }
    return out


def rewrite_stats(info: DatasetInfo, per_episode: dict) -> dict | None:
    from lerobot.datasets.compute_stats import aggregate_stats
    from lerobot.datasets.utils import serialize_dict

    stats_path = info.root / "meta" / "stats.json"
    if not stats_path.is_file():
        return None
    stats = json.loads(stats_path.read_text())
    for name in AUDIT_COLUMNS:
        filled = [{name: s[name]} for s in per_episode.values() if int(np.asarray(s[name]["count"])[0]) > 0]
        if filled:
            stats[name] = serialize_dict(aggregate_stats(filled))[name]
        else:
            stats.pop(name, None)
    return stats


def read_label_record(root: Path) -> dict | None:
    """The `meta/recap_label.json` of a dataset labelled by `recap value label`; None when it has none."""
    return read_meta_record(root, LABEL_RECORD, key="thresholds", kind=dict, writer="recap value label",
                            fix="delete it (its thresholds are then not shown) or label the dataset again")


def _planned_files(info: DatasetInfo, labels: FrameLabels, record: dict | None = None) -> dict[Path, object]:
    """Relative path -> new content (pyarrow Table, or bytes) of every file that changes."""
    keys = _stat_keys(info)
    per_episode = _episode_stats_by_episode(info, labels, keys)
    planned: dict[Path, object] = {}
    for path in data_files(info):
        planned[path.relative_to(info.root)] = rewrite_data_file(path, labels)
    for path in sorted((info.root / "meta" / "episodes").glob("**/*.parquet")):
        planned[path.relative_to(info.root)] = rewrite_episodes_file(path, labels, keys, per_episode)
    stats = rewrite_stats(info, per_episode)
    if stats is not None:
        planned[Path("meta/stats.json")] = (json.dumps(stats, indent=4) + "\n").encode()
    if record is not None:
        planned[LABEL_RECORD] = meta_record_bytes(record)
    # info.json last: its rename is what makes the new columns official.
    planned[Path("meta/info.json")] = (json.dumps(rewrite_info(info), indent=4) + "\n").encode()
    return planned


def _write(content: object, path: Path) -> None:
    """Write a Table or bytes to `path` and fsync it."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    else:
        pq.write_table(content, path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- the two writers


def write_labelled_copy(
    info: DatasetInfo, labels: FrameLabels, out: Path, *, overwrite: bool = False, record: dict | None = None
) -> Path:
    """A complete new dataset at `out`; the input is only read. `record` becomes its
    `meta/recap_label.json`; without one, the copy has none (the input's describes other labels)."""
    out = Path(out)
    planned = _planned_files(info, labels, record)
    with atomic_output_dir(out, overwrite, inputs=(info.root,)) as tmp:
        for src in sorted(p for p in info.root.rglob("*") if p.is_file()):
            rel = src.relative_to(info.root)
            if rel in planned or rel == LABEL_RECORD or rel.name == JOURNAL or rel.name.endswith(STAGED_SUFFIX):
                continue
            dst = tmp / rel
            if rel.parts[0] == "videos":
                link_or_copy(src, dst)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        for rel, content in planned.items():
            _write(content, tmp / rel)
    return out


def recover_in_place(root: Path) -> bool:
    """Finish an interrupted in-place relabel (roll the journal forward); True if there was one."""
    journal = Path(root) / JOURNAL
    if not journal.is_file():
        return False
    for rel in json.loads(journal.read_text())["files"]:
        staged = Path(root) / (rel + STAGED_SUFFIX)
        if staged.exists():
            os.replace(staged, Path(root) / rel)
    journal.unlink()
    return True


def relabel_in_place(info: DatasetInfo, labels: FrameLabels, *, record: dict) -> Path:
    """Rewrite the changed files of `info.root` atomically (see the module docstring); `record`
    (the new `meta/recap_label.json`) is staged and renamed with the others."""
    root = info.root
    recover_in_place(root)
    for stale in root.rglob(f"*{STAGED_SUFFIX}"):
        stale.unlink()
    planned = _planned_files(info, labels, record)
    staged: list[str] = []
    try:
        for rel, content in planned.items():
            _write(content, root / (str(rel) + STAGED_SUFFIX))
            staged.append(str(rel))
    except BaseException:
        for rel in staged:
            (root / (rel + STAGED_SUFFIX)).unlink(missing_ok=True)
        raise
    atomic_write_bytes(root / JOURNAL, json.dumps({"files": staged}).encode())
    recover_in_place(root)
    return root
