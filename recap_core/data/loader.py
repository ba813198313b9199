"""The training loader: numpy batches in the batch contract of docs/internals.md.

    images         dict[camera, uint8 [B, H, W, 3]]   chosen cameras, resize-with-pad to the model resolution
    image_masks    dict[camera, bool [B]]
    state          float32 [B, S]                     raw observation.state
    actions        float32 [B, H, A]                  action[t .. t+H-1] of the same episode
    action_is_pad  bool [B, H]                        True past the episode end (those steps repeat the last action)
    prompt         object [B] (str)                   the task text
    adv_ind        object [B] (str); intervention int64 [B]; reward, reward_label, value_label float32 [B]
                                                      (each RECAP field that the dataset has)
    episode_index, frame_index, task_index, index     int64 [B]

Cameras are keyed by their short name ("cam_high" for "observation.images.cam_high").
The action chunk has lerobot's `delta_timestamps` semantics: indices past the episode's last frame
are clamped to it and flagged in `action_is_pad`.

Why it is fast. Random access into mp4 files costs a container open, a seek and a decode of the
whole group of pictures for every sample. Instead, each epoch's order is built from *blocks* of
`shuffle_episodes` episodes: the frames of one block are shuffled together, and every episode
video of the block is decoded once, sequentially, by a pool of worker threads (PyAV releases the
GIL while FFmpeg decodes and scales) while the previous block is being served; near the end of an
epoch the next epoch's first episodes are queued, so decoding never pauses at the boundary.
Decoded frames are kept, already resized, until the last batch that needs them: memory is about
2 x shuffle_episodes x cameras x episode length x H x W x 3 bytes (the default 8, with episodes
of 500 frames and 3 cameras at 224x224: ~3.6 GB; lower `shuffle_episodes` on small hosts). Randomness is therefore
"episodes shuffled globally, frames shuffled within a block": a batch mixes up to
`shuffle_episodes` episodes. Tabular-only loading (`load_images=False`) skips the videos entirely.

Determinism and sharding. The data is split into `shard_count` shards (default: one per process),
and the order is a pure function of (seed, epoch, shard): the episode permutation of an epoch is the
same on every process, episodes are dealt to shards so their frame counts stay balanced, and every
shard yields the same number of rows per epoch (the smallest share, `drop_last`). `batch_size` is
the global batch, `batch_size // shard_count` rows from each shard; process p serves the
consecutive shards p*k .. p*k+k-1 (k = shard_count // process_count), its local batch being their
rows in that order, and reads only their episodes. Because the shards do not depend on how many
processes serve them, 1 process x 4 devices and 2 processes x 2 devices with the same `shard_count`
build the same global batches (the devices of process p come after those of process p-1). `state_dict()` is the position
of the next batch, so a run resumed with `load_state_dict()` sees exactly the batches it would have.
`LoaderConfig.episodes` restricts all of this to some episodes (the train or the validation side
of `recap_core.train.validation.split_episodes`); other episodes are never yielded or decoded.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recap_core.data import schema
from recap_core.errors import DatasetError, RecapError

if TYPE_CHECKING:
    from recap_core.data.dataset import DatasetInfo

RECAP_FIELDS: dict[str, Any] = {
    schema.INTERVENTION: np.int64,
    schema.REWARD: np.float32,
    schema.REWARD_LABEL: np.float32,
    schema.VALUE_LABEL: np.float32,
}
ID_FIELDS = ("episode_index", "frame_index", "task_index", "index")
IMAGE_PREFIX = "observation.images."


def camera_name(key: str) -> str:
    """"observation.images.cam_high" -> "cam_high" (the key in the batch's `images`)."""
    return key.removeprefix(IMAGE_PREFIX)


def vector_column(table: Any, name: str, where: str) -> np.ndarray:
    """A numeric parquet column as float64 [N, D] (fixed-size lists) or [N, 1] (scalars).

    Flattens the Arrow buffer instead of going through Python lists: seconds faster on
    datasets with millions of frames.
    """
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) and _is_number(col.type.value_type):
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        values = flat.reshape(len(col), col.type.list_size)
    elif pa.types.is_list(col.type) and _is_number(col.type.value_type):
        values = np.asarray(col.to_pylist(), dtype=np.float64)
    elif _is_number(col.type):
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)[:, None]
    else:
        raise DatasetError(
            f"column {name!r} of {where} has type {col.type}; expected a numeric vector",
            fix=f"store {name} as a float32 vector feature",
        )
    if values.ndim != 2:
        raise DatasetError(f"column {name!r} of {where} has rows of different lengths", fix="re-create the dataset")
    bad = ~np.isfinite(values)
    if bad.any():
        row, dim = (int(i) for i in np.argwhere(bad)[0])
        at = f"row {row}, dim {dim}"
        names = table.column_names
        if "episode_index" in names:
            frame = f", frame {table.column('frame_index')[row].as_py()}" if "frame_index" in names else ""
            at = f"episode {table.column('episode_index')[row].as_py()}{frame}, {at}"
        raise DatasetError(
            f"column {name!r} of {where} holds NaN/inf ({int(bad.sum())} values; first at {at}); expected finite numbers",
            fix="drop or repair those frames in the source data and convert again",
        )
    return values


def _is_number(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(t) or pa.types.is_integer(t)


class FrameTable:
    """The tabular part of a dataset in memory, plus where each episode's video frames live.

    Rows are ordered by global `index`; episodes are contiguous row ranges. Internally episodes
    are addressed by position (0..E-1), `episode_ids[pos]` is the dataset's `episode_index`.
    """

    def __init__(self, root: str | Path, *, state_key: str, action_key: str, cameras: Sequence[str] | None) -> None:
        from recap_core.data.dataset import (
            camera_keys_for,
            open_dataset,
            read_episodes_meta,
            read_table,
            require_columns,
        )

        self.info = open_dataset(Path(root))
        self.root = self.info.root
        self.fps = self.info.fps
        self.features = self.info.features
        require_columns(self.info, [state_key, action_key], stage="training")
        self.camera_keys: tuple[str, ...] = (
            self.info.camera_keys if cameras is None else tuple(camera_keys_for(self.info, cameras))
        )
        extra = [c for c in (*RECAP_FIELDS, schema.ADV_IND) if c in self.features]
        table = read_table(self.info, [state_key, action_key, *ID_FIELDS, "timestamp", *extra])
        if table.num_rows == 0:
            raise DatasetError(f"dataset {self.root} has no frames", fix="record at least one episode")
        self.num_frames = table.num_rows
        self.state = vector_column(table, state_key, str(self.root)).astype(np.float32)
        self.actions = vector_column(table, action_key, str(self.root)).astype(np.float32)
        self.columns: dict[str, np.ndarray] = {}
        for name in (*ID_FIELDS, *(c for c in RECAP_FIELDS if c in extra)):
            dtype = RECAP_FIELDS.get(name, np.int64)
            self.columns[name] = table.column(name).to_numpy(zero_copy_only=False).astype(dtype)
        if schema.ADV_IND in extra:
            self.columns[schema.ADV_IND] = np.asarray(table.column(schema.ADV_IND).to_pylist(), dtype=object)
        self.timestamps = table.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
        self.prompts = self._prompts()
        self._index_episodes()
        self._video_meta = read_episodes_meta(self.info) if self.info.video_keys else None
        self._image_bytes: dict[str, list[bytes]] = {}
        self._image_lock = threading.Lock()

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def _prompts(self) -> np.ndarray:
        tasks = np.asarray(self.info.tasks, dtype=object)
        task_index = self.columns["task_index"]
        if task_index.size and (task_index.min() < 0 or task_index.max() >= len(tasks)):
            raise DatasetError(
                f"dataset {self.root} uses task_index {int(task_index.max())} but meta/tasks has {len(tasks)} tasks",
                fix="the dataset is inconsistent; re-create it",
            )
        return tasks

    def _index_episodes(self) -> None:
        episode = self.columns["episode_index"]
        starts = np.r_[0, np.flatnonzero(np.diff(episode)) + 1]
        ends = np.r_[starts[1:], len(episode)]
        self.episode_ids = episode[starts]
        if len(np.unique(self.episode_ids)) != len(self.episode_ids):
            raise DatasetError(
                f"the frames of an episode of {self.root} are not contiguous in global index order",
                fix="re-create the dataset (or merge it with `recap data merge`, which re-indexes)",
            )
        self.lengths = (ends - starts).astype(np.int64)
        self.starts = starts.astype(np.int64)
        self.row_episode = np.repeat(np.arange(len(starts)), self.lengths)
        self.episode_start = self.starts[self.row_episode]
        self.episode_end = self.episode_start + self.lengths[self.row_episode]
        # The action chunk is "the next H rows of the episode": that needs frames 0..T-1 in order.
        expected = np.arange(self.num_frames) - self.episode_start
        if not np.array_equal(self.columns["frame_index"], expected):
            row = int(np.flatnonzero(self.columns["frame_index"] != expected)[0])
            raise DatasetError(
                f"episode {int(episode[row])} of {self.root} has frame_index {int(self.columns['frame_index'][row])} "
                f"where {int(expected[row])} was expected (frames missing or out of order)",
                fix="re-create the dataset so every episode has frames 0..T-1",
            )

    def episode_rows(self, pos: int) -> np.ndarray:
        return np.arange(self.starts[pos], self.starts[pos] + self.lengths[pos])

    def video_location(self, key: str, pos: int) -> tuple[Path, float]:
        """(mp4 path, episode start time inside it) of camera `key` for episode position `pos`."""
        return video_location(self.info, self._video_meta, key, int(self.episode_ids[pos]))

    def episode_timestamps(self, pos: int) -> np.ndarray:
        return self.timestamps[self.starts[pos] : self.starts[pos] + self.lengths[pos]]

    def episode_image_bytes(self, key: str, pos: int) -> list[bytes]:
        """Encoded (PNG) frames of an `image` feature for one episode; the column is read once."""
        with self._image_lock:
            if key not in self._image_bytes:
                from recap_core.data.dataset import read_table

                col = read_table(self.info, [key]).column(key).combine_chunks()
                self._image_bytes[key] = col.field("bytes").to_pylist()
        start = int(self.starts[pos])
        return self._image_bytes[key][start : start + int(self.lengths[pos])]


def video_location(info: DatasetInfo, meta: Any, key: str, episode: int) -> tuple[Path, float]:
    """(mp4 path, episode start time inside it) of camera `key` for `episode` of a v3.0 dataset;
    `meta` is its `read_episodes_meta` table (read once by the caller)."""
    rows = np.flatnonzero(meta.column("episode_index").to_numpy() == episode)
    if len(rows) == 0:
        raise DatasetError(
            f"episode {episode} of {info.root} is missing from meta/episodes",
            fix="the dataset is inconsistent; re-create it",
        )
    r = int(rows[0])
    chunk = meta.column(f"videos/{key}/chunk_index")[r].as_py()
    file = meta.column(f"videos/{key}/file_index")[r].as_py()
    from_ts = float(meta.column(f"videos/{key}/from_timestamp")[r].as_py())
    template = info.info.get("video_path") or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    return info.root / template.format(video_key=key, chunk_index=chunk, file_index=file), from_ts


def fitted_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized h, resized w, top pad, left pad) for an aspect-preserving fit into `size`.

    The geometry of openpi's resize_with_pad: scale by the larger of the two ratios, truncate,
    and centre the result on a black canvas.
    """
    out_h, out_w = size
    ratio = max(width / out_w, height / out_h)
    rh, rw = max(1, int(height / ratio)), max(1, int(width / ratio))
    return rh, rw, max(0, (out_h - rh) // 2), max(0, (out_w - rw) // 2)


def resize_with_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size[0], size[1], 3]: bilinear, aspect kept, zero padding."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    rh, rw, top, left = fitted_size(h, w, size)
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), resample=Image.BILINEAR))
    out = np.zeros((*size, 3), dtype=np.uint8)
    out[top : top + rh, left : left + rw] = resized
    return out


def decode_episode_video(
    path: Path, from_ts: float, timestamps: np.ndarray, fps: float, size: tuple[int, int]
) -> np.ndarray:
    """Decode one episode's frames from a (shared) mp4 sequentially: uint8 [T, H, W, 3].

    Frame t is the decoded frame nearest to `from_ts + timestamps[t]` (as lerobot queries it);
    a frame further than 0.4 frame periods away counts as missing. Scaling to the fitted size
    happens in FFmpeg's swscale together with the YUV->RGB conversion (one pass, no GIL).
    """
    import av

    targets = from_ts + np.asarray(timestamps, dtype=np.float64)
    n = len(targets)
    tol = 0.4 / fps
    out = np.zeros((n, *size, 3), dtype=np.uint8)
    filled = np.zeros(n, dtype=bool)
    if not Path(path).is_file():
        raise DatasetError(f"video file {path} is missing", fix="restore the videos/ folder or re-create the dataset")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise DatasetError(f"video file {path} cannot be opened ({exc})", fix="re-encode or restore the file") from exc
    with container:
        stream = container.streams.video[0]
        if targets[0] > tol:
            container.seek(int(targets[0] / stream.time_base), stream=stream, backward=True)
        geometry = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t < targets[0] - tol:
                    continue
                if t > targets[-1] + tol:
                    break
                j = int(np.searchsorted(targets, t))
                if j == n or (j > 0 and t - targets[j - 1] < targets[j] - t):
                    j -= 1
                if abs(targets[j] - t) > tol or filled[j]:
                    continue
                if geometry is None:
                    geometry = fitted_size(frame.height, frame.width, size)
                rh, rw, top, left = geometry
                rgb = frame.reformat(width=rw, height=rh, format="rgb24", interpolation="BILINEAR").to_ndarray()
                out[j, top : top + rh, left : left + rw] = rgb
                filled[j] = True
                if filled[-1]:
                    break
        except av.error.FFmpegError as exc:
            raise DatasetError(f"video file {path} cannot be decoded ({exc})", fix="re-encode or restore the file") from exc
    if not filled.all():
        missing = int(np.flatnonzero(~filled)[0])
        raise DatasetError(
            f"video file {path} has no frame at {targets[missing]:.4f}s (frame {missing} of the episode starting "
            f"at {from_ts:.4f}s); the video is shorter than the data or truncated",
            fix="re-encode the dataset videos or restore the file",
        )
    return out


def decode_episode_images(encoded: list[bytes], size: tuple[int, int]) -> np.ndarray:
    """Decode an `image` feature's PNG/JPEG frames and resize-with-pad them: uint8 [T, H, W, 3]."""
    import io

    from PIL import Image

    frames = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded]
    return np.stack([resize_with_pad(f, size) for f in frames])


class LoaderStateError(RecapError):
    """A saved loader position does not belong to this dataset / seed / sharding."""


@dataclass(frozen=True)
class LoaderConfig:
    """How to batch a dataset. `batch_size` is global; each process yields its share."""

    batch_size: int
    action_horizon: int = 50
    cameras: tuple[str, ...] | None = None  # None: every camera of the dataset
    image_size: tuple[int, int] = (224, 224)  # (height, width) after resize-with-pad
    load_images: bool = True
    seed: int = 0
    shuffle: bool = True
    shuffle_episodes: int = 8  # episodes whose frames are shuffled together (see module docstring)
    num_workers: int = 4  # decode threads
    prefetch: int = 4  # batches assembled ahead of the consumer
    num_epochs: int | None = None  # None: iterate forever
    process_index: int = 0
    process_count: int = 1
    shard_count: int | None = None  # data shards (a multiple of process_count); None: one per process
    state_key: str = "observation.state"
    action_key: str = "action"
    episodes: tuple[int, ...] | None = None  # episode_index values to load (a train/val split); None: all


class TrainLoader:
    """Iterate training batches (numpy) over a LeRobot v3.0 dataset; see the module docstring."""

    def __init__(self, root: str | Path, config: LoaderConfig) -> None:
        self.root = Path(root)
        self.config = config
        _check_config(config)
        self.frames = FrameTable(
            self.root,
            state_key=config.state_key,
            action_key=config.action_key,
            cameras=config.cameras if config.load_images else (),
        )
        self.cameras: tuple[str, ...] = self.frames.camera_keys
        self.shard_count = config.shard_count or config.process_count
        per_process = self.shard_count // config.process_count
        self.shards = tuple(range(config.process_index * per_process, (config.process_index + 1) * per_process))
        """The shards this process serves, in the order its local batch holds them."""
        self.shard_batch_size = config.batch_size // self.shard_count
        self.local_batch_size = self.shard_batch_size * len(self.shards)
        self.episode_positions = self._selected_positions()
        self.num_episodes = len(self.episode_positions)
        self.num_frames = int(self.frames.lengths[self.episode_positions].sum())
        if self.num_episodes < self.shard_count:
            who = "processes" if self.shard_count == config.process_count else "data shards"
            raise DatasetError(
                f"dataset {self.root} has {self.num_episodes} episodes{self._selection_note()}, fewer than the "
                f"{self.shard_count} {who} that share it",
                fix=f"use fewer {who} or a dataset with more episodes",
            )
        self._position = (0, 0)  # (epoch, batch within epoch) of the next batch to yield
        self._order_cache: dict[int, np.ndarray] = {}
        self.steps_per_epoch = self._steps_per_epoch()

    def _selected_positions(self) -> np.ndarray:
        """Positions (into the frame table) of the episodes this loader reads, in dataset order."""
        ids = self.frames.episode_ids
        wanted = self.config.episodes
        if wanted is None:
            return np.arange(len(ids))
        unknown = sorted(set(int(e) for e in wanted) - set(ids.tolist()))
        if unknown:
            raise DatasetError(
                f"dataset {self.root} has no episode {', '.join(map(str, unknown[:5]))} "
                f"(it has episode_index {int(ids.min())}..{int(ids.max())}, {len(ids)} episodes)",
                fix="pass episode indices that exist in the dataset (see `recap data inspect`)",
            )
        if not wanted:
            raise DatasetError(f"no episodes of {self.root} were selected", fix="select at least one episode")
        return np.flatnonzero(np.isin(ids, np.asarray(wanted, dtype=np.int64)))

    def _selection_note(self) -> str:
        return "" if self.config.episodes is None else " (in the selected episodes)"

    # ----- epoch order and sharding ------------------------------------------------------------
    def _episode_owner(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(episode permutation of this epoch, owning shard of each position in it)."""
        chosen = self.episode_positions
        n = len(chosen)
        cfg = self.config
        perm = chosen[np.random.default_rng([cfg.seed, epoch]).permutation(n)] if cfg.shuffle else chosen
        # Deal episodes to the shard with the fewest frames so far: shares stay balanced even
        # when episode lengths differ a lot, and every process computes the same assignment.
        load = np.zeros(self.shard_count, dtype=np.int64)
        owner = np.empty(n, dtype=np.int64)
        for pos, ep in enumerate(perm):
            p = int(np.argmin(load))
            owner[pos] = p
            load[p] += self.frames.lengths[ep]
        return perm, owner

    def _steps_in_epoch(self, epoch: int) -> int:
        perm, owner = self._episode_owner(epoch)
        frames = np.bincount(owner, weights=self.frames.lengths[perm], minlength=self.shard_count)
        return int(frames.min()) // self.shard_batch_size

    def _steps_per_epoch(self) -> int:
        steps = self._steps_in_epoch(0)
        if steps == 0:
            raise DatasetError(
                f"dataset {self.root} has {self.num_frames} frames{self._selection_note()}: too few for one batch of "
                f"{self.shard_batch_size} per data shard ({self.shard_count} shards)",
                fix="lower --batch-size or add episodes",
            )
        return steps

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Row indices (into the frame table) this process yields in `epoch`, batch after batch."""
        if epoch in self._order_cache:
            return self._order_cache[epoch]
        cfg = self.config
        perm, owner = self._episode_owner(epoch)
        steps, per_shard = self._steps_in_epoch(epoch), self.shard_batch_size
        shard_orders = []
        for shard in self.shards:
            mine = perm[owner == shard]
            parts = []
            for b, start in enumerate(range(0, len(mine), cfg.shuffle_episodes)):
                rows = np.concatenate([self.frames.episode_rows(ep) for ep in mine[start : start + cfg.shuffle_episodes]])
                if cfg.shuffle:
                    np.random.default_rng([cfg.seed, epoch, shard, b]).shuffle(rows)
                parts.append(rows)
            shard_orders.append(np.concatenate(parts)[: steps * per_shard].reshape(steps, per_shard))
        # batch s: shard 0's rows of step s, then shard 1's, ... (one shard: its order as it is)
        order = np.concatenate(shard_orders, axis=1).reshape(-1)
        self._order_cache = {epoch: order}  # one epoch at a time; orders are cheap to rebuild
        return order

    # ----- resumable position ------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Position of the next batch, plus what it depends on (checked by `load_state_dict`)."""
        epoch, step = self._position
        return {
            "epoch": epoch,
            "step_in_epoch": step,
            "seed": self.config.seed,
            "batch_size": self.config.batch_size,
            "process_index": self.config.process_index,
            "process_count": self.config.process_count,
            "shard_count": self.shard_count,
            "num_frames": self.num_frames,
            "num_episodes": self.num_episodes,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position: the next batch is the one that followed it."""
        mine = self.state_dict()
        state = {"shard_count": state.get("process_count", 1), **state}  # saved before shards existed
        # The position is the same on every process (process 0 saved it), and the data of a position
        # depends on the shards, not on how many processes serve them.
        for key in ("seed", "batch_size", "shard_count", "num_frames", "num_episodes"):
            if key in state and int(state[key]) != mine[key]:
                raise LoaderStateError(
                    f"saved loader position has {key}={state[key]}, this loader has {mine[key]}",
                    fix="resume with the same dataset, seed, batch size and data shards as the saved run "
                        "(data.shards, or as many processes when it is unset)",
                )
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if not 0 <= step <= self.steps_per_epoch:
            raise LoaderStateError(
                f"saved loader position step_in_epoch={step} is outside 0..{self.steps_per_epoch}",
                fix="resume with the same dataset and batch size as the saved run",
            )
        self._position = (epoch + step // self.steps_per_epoch, step % self.steps_per_epoch)

    # ----- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current position on; a background thread assembles them ahead."""
        # A loader left unfinished is closed by the garbage collector, at interpreter exit possibly
        # after module globals (ours, `queue`'s, `threading`'s) are gone: held here as a local, the
        # check still works then, and the cleanup (pointless for a daemon thread) is skipped.
        exiting = sys.is_finalizing
        out: queue.Queue = queue.Queue(maxsize=max(1, self.config.prefetch))
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(self._position, out, stop), daemon=True)
        producer.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                position, batch = item
                epoch, step = position
                self._position = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
                yield batch
        finally:
            if not exiting():
                stop.set()
                _drain(out)
                producer.join(timeout=10)

    def _produce(self, start: tuple[int, int], out: queue.Queue, stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(max_workers=max(1, self.config.num_workers), thread_name_prefix="recap-decode")
        try:
            epoch, first_step = start
            cache = self._epoch_cache(epoch, first_step, pool)
            while not self._finished(epoch):
                upcoming = None
                for i, rows in enumerate(cache.batch_rows):
                    item = ((epoch, first_step + i), self._assemble(rows, cache.images_for(i, rows)))
                    if not _put(out, item, stop):
                        return
                    cache.release_after(i)
                    # Once every decode of this epoch is queued, queue the next epoch's first
                    # episodes too, so the workers never idle at an epoch boundary.
                    if upcoming is None and cache.all_submitted() and not self._finished(epoch + 1):
                        upcoming = self._epoch_cache(epoch + 1, 0, pool)
                        upcoming.prime()
                epoch, first_step = epoch + 1, 0
                cache = upcoming if upcoming is not None else self._epoch_cache(epoch, 0, pool)
            _put(out, _END, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(out, exc, stop)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _finished(self, epoch: int) -> bool:
        return self.config.num_epochs is not None and epoch >= self.config.num_epochs

    def _epoch_cache(self, epoch: int, first_step: int, pool: ThreadPoolExecutor) -> _EpisodeCache:
        order = self.epoch_order(epoch)
        bs = self.local_batch_size
        batch_rows = [order[s * bs : (s + 1) * bs] for s in range(first_step, self.steps_per_epoch)]
        return _EpisodeCache(self, pool, batch_rows)

    def _assemble(self, rows: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, Any]:
        f = self.frames
        horizon = self.config.action_horizon
        ahead = rows[:, None] + np.arange(horizon)[None, :]
        last = f.episode_end[rows][:, None] - 1
        batch: dict[str, Any] = {
            "images": {camera_name(k): v for k, v in images.items()},
            "image_masks": {camera_name(k): np.ones(len(rows), dtype=bool) for k in images},
            "state": f.state[rows],
            "actions": f.actions[np.minimum(ahead, last)],
            "action_is_pad": ahead > last,
            "prompt": f.prompts[f.columns["task_index"][rows]],
        }
        for name in ("adv_ind", *RECAP_FIELDS):
            if name in f.columns:
                batch[name] = f.columns[name][rows]
        for name in ID_FIELDS:
            batch[name] = f.columns[name][rows]
        return batch


class _EpisodeCache:
    """Decoded, resized frames of the episodes one epoch's batches need, decoded ahead in a pool.

    Episodes are decoded in the order batches first need them, at most `ahead_limit` held at a
    time beyond what the current batch needs, and dropped after the last batch that uses them.
    """

    def __init__(self, loader: TrainLoader, pool: ThreadPoolExecutor, batch_rows: list[np.ndarray]) -> None:
        self.loader = loader
        self.pool = pool
        self.batch_rows = batch_rows
        f = loader.frames
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        if loader.cameras:
            for i, rows in enumerate(batch_rows):
                for ep in np.unique(f.row_episode[rows]).tolist():
                    self.first.setdefault(ep, i)
                    self.last[ep] = i
        self.schedule = sorted(self.first, key=self.first.__getitem__)
        self.next_to_submit = 0
        cfg = loader.config
        self.ahead_limit = max(2 * cfg.shuffle_episodes, 2 * cfg.num_workers)
        self.live: dict[int, dict[str, Future]] = {}

    def all_submitted(self) -> bool:
        return self.next_to_submit == len(self.schedule)

    def prime(self) -> None:
        """Queue decodes up to the look-ahead limit (no batch waits on them yet)."""
        self._fill(-1)

    def _fill(self, i: int) -> None:
        # Everything batch i needs must be queued; beyond that keep the pool busy up to the limit.
        while self.next_to_submit < len(self.schedule):
            ep = self.schedule[self.next_to_submit]
            if self.first[ep] > i and len(self.live) >= self.ahead_limit:
                break
            loader = self.loader
            self.live[ep] = {
                key: self.pool.submit(decode_camera, loader.frames, key, ep, loader.config.image_size)
                for key in loader.cameras
            }
            self.next_to_submit += 1

    def images_for(self, i: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        if not self.loader.cameras:
            return {}
        self._fill(i)
        f = self.loader.frames
        eps = f.row_episode[rows]
        pos = rows - f.episode_start[rows]
        out = {}
        for key in self.loader.cameras:
            decoded = {ep: self.live[ep][key].result() for ep in np.unique(eps).tolist()}
            out[key] = np.stack([decoded[e][p] for e, p in zip(eps.tolist(), pos.tolist(), strict=True)])
        return out

    def release_after(self, i: int) -> None:
        for ep in [ep for ep in self.live if self.last[ep] <= i]:
            del self.live[ep]


def decode_camera(frames: FrameTable, key: str, ep: int, size: tuple[int, int]) -> np.ndarray:
    """All frames of one episode (`ep`: its position in `frames`) of one camera, resized with pad:
    uint8 [T, H, W, 3]. The training loader and `recap value label` both decode through this."""
    if frames.features[key]["dtype"] == "video":
        path, from_ts = frames.video_location(key, ep)
        return decode_episode_video(path, from_ts, frames.episode_timestamps(ep), frames.fps, size)
    return decode_episode_images(frames.episode_image_bytes(key, ep), size)


def _check_config(cfg: LoaderConfig) -> None:
    def bad(what: str, fix: str) -> None:
        raise RecapError(what, fix=fix)

    if cfg.process_count < 1 or not 0 <= cfg.process_index < cfg.process_count:
        bad(f"process_index {cfg.process_index} is outside 0..{cfg.process_count - 1}", "use jax.process_index()")
    if cfg.batch_size < 1 or cfg.batch_size % cfg.process_count:
        bad(
            f"batch size {cfg.batch_size} is not a positive multiple of the {cfg.process_count} processes",
            "use a batch size divisible by the number of processes",
        )
    shards = cfg.shard_count or cfg.process_count
    if shards < 1 or shards % cfg.process_count or cfg.batch_size % shards:
        bad(
            f"data.shards={cfg.shard_count} must be a multiple of the {cfg.process_count} processes and divide "
            f"the batch size {cfg.batch_size}",
            "set data.shards to the total device count (or leave it unset: one shard per process)",
        )
    if cfg.action_horizon < 1:
        bad(f"action horizon {cfg.action_horizon} must be at least 1", "use the model's action_horizon")
    if cfg.shuffle_episodes < 1 or cfg.num_workers < 0:
        bad("shuffle_episodes must be >= 1 and num_workers >= 0", "use the defaults")
    if len(cfg.image_size) != 2 or min(cfg.image_size) < 1:
        bad(f"image size {cfg.image_size} is not (height, width)", "use e.g. (224, 224)")


_END = object()


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put with a timeout loop so a stopped consumer never leaves the producer blocked."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(out: queue.Queue) -> None:
    while True:
        try:
            out.get_nowait()
        except queue.Empty:
            return
