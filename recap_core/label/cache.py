"""A resumable sidecar of value predictions, one file per finished episode.

Layout (default: `<DATASET>.value_cache/` beside the dataset, never inside it, so the dataset's
bytes stay untouched):

    <cache>/<key>/identity.json      what the predictions depend on (see `identity`)
    <cache>/<key>/ep-000012.npy      float32 [T]: V for the frames that were needed, NaN elsewhere

`key` hashes the identity: the checkpoint's content hash, the dataset's fingerprint, the
cameras, EMA or not, and the lookahead (it decides which frames are needed). Each episode file
is written atomically when all its needed frames are predicted, so a crashed run resumes from
the last finished episode and a rerun with the same identity predicts nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data.dataset import DatasetInfo, episode_lengths
from recap_core.data.schema import ADV_IND
from recap_core.errors import RecapError
from recap_core.fsutil import atomic_write_bytes, atomic_write_text
from recap_core.label.advantage import Lookahead
from recap_core.label.relabel import AUDIT_COLUMNS

IDENTITY_FILE = "identity.json"
CHUNK = 1 << 20


class CacheMismatchError(RecapError):
    """A prediction cache to merge was made with another checkpoint, dataset or settings."""


def default_cache_dir(dataset_root: Path) -> Path:
    root = Path(dataset_root)
    return root.with_name(f"{root.name}.value_cache")


def content_hash(path: Path) -> str:
    """sha256 over every file under `path` (relative names and bytes), in sorted order."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(info: DatasetInfo) -> str:
    """What the value model sees of a dataset: features, frames per episode, tasks, video files.

    The label columns (`adv_ind`, `value_pred`, `advantage`) are left out, so relabelling a
    dataset in place does not invalidate its own predictions.
    """
    ignored = {ADV_IND, *AUDIT_COLUMNS}
    features = {k: v for k, v in info.features.items() if k not in ignored}
    videos = sorted(
        (str(p.relative_to(info.root)), p.stat().st_size) for p in (info.root / "videos").rglob("*") if p.is_file()
    )
    payload = {
        "fps": info.fps,
        "features": features,
        "tasks": list(info.tasks),
        "lengths": sorted(episode_lengths(info).items()),
        "videos": videos,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def identity(
    checkpoint_hash: str, info: DatasetInfo, cameras: Iterable[str], use_ema: bool, lookahead: Lookahead
) -> dict[str, Any]:
    return {
        "checkpoint": checkpoint_hash,
        "dataset": dataset_fingerprint(info),
        "cameras": list(cameras),
        "use_ema": bool(use_ema),
        "lookahead": lookahead if isinstance(lookahead, str) else int(lookahead),
    }


class PredictionCache:
    """Per-episode value predictions for one identity."""

    def __init__(self, root: Path, ident: dict[str, Any]) -> None:
        self.identity = ident
        self.key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        id_path = self.dir / IDENTITY_FILE
        if not id_path.exists():
            atomic_write_text(id_path, json.dumps(ident, indent=2, sort_keys=True))

    @staticmethod
    def _name(episode: int) -> str:
        return f"ep-{int(episode):06d}.npy"

    def episodes(self) -> set[int]:
        return {int(p.stem.removeprefix("ep-")) for p in self.dir.glob("ep-*.npy")}

    def has(self, episode: int) -> bool:
        return (self.dir / self._name(episode)).is_file()

    def load(self, episode: int) -> np.ndarray:
        return np.load(self.dir / self._name(episode))

    def save(self, episode: int, values: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(values, dtype=np.float32))
        atomic_write_bytes(self.dir / self._name(episode), buf.getvalue())

    def import_from(self, other: Path) -> int:
        """Copy the episodes of another cache with the same identity (a shard's); returns how many."""
        other = Path(other)
        source = other / self.key if (other / self.key / IDENTITY_FILE).is_file() else other
        id_path = source / IDENTITY_FILE
        if not id_path.is_file():
            raise CacheMismatchError(
                f"{other} holds no value predictions for this run (no {self.key}/{IDENTITY_FILE})",
                fix="pass the --cache folders written by the `--shard i/n` runs, with the same checkpoint, "
                "dataset, --cameras, --use-ema and --lookahead",
            )
        theirs = json.loads(id_path.read_text())
        if theirs != self.identity:
            diff = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
            raise CacheMismatchError(
                f"{source} was made with a different {', '.join(diff)}",
                fix="merge only shards labelled with the same checkpoint, dataset, cameras, EMA and lookahead",
            )
        count = 0
        for path in sorted(source.glob("ep-*.npy")):
            if not (self.dir / path.name).exists():
                atomic_write_bytes(self.dir / path.name, path.read_bytes())
                count += 1
        return count
