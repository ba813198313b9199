"""The value-prediction driver: which frames need a value, batching, prefetch, cache, shards.

`predict_values` walks the episodes that still lack a cached prediction, cuts their needed
frames into fixed-size batches (the last one padded by repeating a row, so a jitted
`predict_fn` compiles once), loads batch i+1.. on a thread while `predict_fn` runs on batch i,
and saves each episode to the cache as soon as all its frames are predicted. `predict_fn` takes
a batch in the loader's contract (docs/internals.md) and returns float values [B]; it is where
the device work (and data parallelism over local devices) happens, so everything here is
testable with any function.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.errors import ConfigError
from recap_core.label.advantage import Lookahead, bootstrap_rows
from recap_core.label.cache import PredictionCache

Batch = dict[str, Any]
PredictFn = Callable[[Batch], np.ndarray]
LoadFn = Callable[[np.ndarray], Batch]
# Builds (load_batch, predict_fn) for the chosen cameras (a `DatasetInfo` and camera names); called
# only if something is uncached, so a fully cached rerun never loads the model.
PredictorFactory = Callable[[Any, tuple[str, ...]], tuple[LoadFn, PredictFn]]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' (0 <= i < n) -> (i, n)."""
    if text is None:
        return None
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise ConfigError(
            f"--shard {text!r} is not of the form i/n with 0 <= i < n",
            fix="e.g. --shard 0/4 on the first of four machines, ... --shard 3/4 on the last",
        )
    return i, n


def shard_episodes(episodes: np.ndarray, frames_per_episode: np.ndarray, shard: tuple[int, int] | None) -> np.ndarray:
    """Contiguous episode ranges with about equal frame counts; shard i of n gets range i."""
    if shard is None:
        return episodes
    i, n = shard
    cum = np.cumsum(frames_per_episode)
    total = cum[-1] if cum.size else 0
    # An episode belongs to the shard in which its first frame falls.
    first = cum - frames_per_episode
    owner = np.minimum((first * n) // max(total, 1), n - 1)
    return episodes[owner == i]


def needed_mask(
    intervention: np.ndarray, episode_index: np.ndarray, frame_index: np.ndarray, lookahead: Lookahead
) -> np.ndarray:
    """Frames whose value an advantage needs: autonomous frames and their bootstrap frames."""
    autonomous = np.asarray(intervention).reshape(-1) == 0
    mask = autonomous.copy()
    mask[bootstrap_rows(episode_index, frame_index, lookahead)[autonomous]] = True
    return mask


@dataclass
class PredictStats:
    episodes_predicted: int = 0
    episodes_cached: int = 0
    frames_predicted: int = 0
    batches: int = 0


def _batches(rows: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Fixed-size row batches; the last is padded by repeating its last row. Yields (rows, real)."""
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        real = chunk.size
        if real < batch_size:
            chunk = np.r_[chunk, np.full(batch_size - real, chunk[-1])]
        yield chunk, real


def predict_values(
    episode_rows: dict[int, np.ndarray],
    needed: np.ndarray,
    load_batch: LoadFn,
    predict_fn: PredictFn,
    cache: PredictionCache,
    *,
    batch_size: int,
    prefetch: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> PredictStats:
    """Predict V for the needed frames of every episode not yet in `cache`.

    `episode_rows[ep]` are the episode's rows (positions in index order, in frame order) and
    `needed[row]` says whether that frame needs a value. Finished episodes go to the cache
    one by one, so an exception (or a kill) loses at most the episodes in flight.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1", fix="pass --batch-size 8 (or larger on big GPUs)")
    stats = PredictStats()
    todo = [ep for ep in sorted(episode_rows) if not cache.has(ep)]
    stats.episodes_cached = len(episode_rows) - len(todo)
    pending: dict[int, np.ndarray] = {}
    remaining: dict[int, int] = {}
    work_rows, work_eps, work_pos = [], [], []
    for ep in todo:
        rows = episode_rows[ep]
        need = needed[rows]
        values = np.full(rows.size, np.nan, dtype=np.float32)
        if not need.any():
            cache.save(ep, values)
            stats.episodes_predicted += 1
            continue
        pending[ep] = values
        remaining[ep] = int(need.sum())
        pos = np.flatnonzero(need)
        work_rows.append(rows[pos])
        work_eps.append(np.full(pos.size, ep))
        work_pos.append(pos)
    if not pending:
        return stats
    all_rows = np.concatenate(work_rows)
    all_eps = np.concatenate(work_eps)
    all_pos = np.concatenate(work_pos)
    batches = list(_batches(np.arange(all_rows.size), batch_size))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-prefetch") as pool:
        futures: OrderedDict[int, Future] = OrderedDict()
        next_submit = 0

        def fill() -> None:
            nonlocal next_submit
            while next_submit < len(batches) and len(futures) <= prefetch:
                sel, _ = batches[next_submit]
                futures[next_submit] = pool.submit(load_batch, all_rows[sel])
                next_submit += 1

        try:
            for i, (sel, real) in enumerate(batches):
                fill()
                batch = futures.pop(i).result()
                fill()  # keep the loader busy while the device computes
                values = np.asarray(predict_fn(batch), dtype=np.float32).reshape(-1)
                if values.size != sel.size:
                    raise ValueError(f"predict_fn returned {values.size} values for a batch of {sel.size}")
                for j in range(real):
                    k = sel[j]
                    ep = int(all_eps[k])
                    pending[ep][all_pos[k]] = values[j]
                    remaining[ep] -= 1
                    if remaining[ep] == 0:
                        cache.save(ep, pending.pop(ep))
                        stats.episodes_predicted += 1
                stats.frames_predicted += real
                stats.batches += 1
                if on_batch is not None:
                    on_batch(real)
        finally:
            for future in futures.values():
                future.cancel()
    return stats


class InferenceFrames:
    """Batches (loader contract) of arbitrary rows; each episode's video is decoded once.

    Labelling reads episodes in order, so a small LRU of decoded episodes is enough.
    """

    def __init__(
        self, root: Path, *, cameras: tuple[str, ...] | None, image_size: tuple[int, int], keep_episodes: int = 4
    ) -> None:
        from recap_core.data.loader import FrameTable

        self.frames = FrameTable(root, state_key="observation.state", action_key="action", cameras=cameras)
        self.image_size = image_size
        self.keep = keep_episodes
        self._decoded: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _episode_images(self, pos: int) -> dict[str, np.ndarray]:
        from recap_core.data.loader import decode_camera

        with self._lock:
            if pos in self._decoded:
                self._decoded.move_to_end(pos)
                return self._decoded[pos]
        images = {key: decode_camera(self.frames, key, pos, self.image_size) for key in self.frames.camera_keys}
        with self._lock:
            self._decoded[pos] = images
            while len(self._decoded) > self.keep:
                self._decoded.popitem(last=False)
        return images

    def __call__(self, rows: np.ndarray) -> Batch:
        from recap_core.data.loader import camera_name

        f = self.frames
        # Rows are positions in the dataset ordered by global `index` (FrameTable's row order).
        eps = f.row_episode[rows]
        within = rows - f.episode_start[rows]
        images: dict[str, np.ndarray] = {}
        decoded = {int(e): self._episode_images(int(e)) for e in np.unique(eps)}
        for key in f.camera_keys:
            images[camera_name(key)] = np.stack([decoded[int(e)][key][p] for e, p in zip(eps, within, strict=True)])
        batch: Batch = {
            "images": images,
            "image_masks": {name: np.ones(rows.size, dtype=bool) for name in images},
            "state": f.state[rows],
            "prompt": f.prompts[f.columns["task_index"][rows]],
        }
        for name, column in f.columns.items():
            batch[name] = column[rows]
        return batch
