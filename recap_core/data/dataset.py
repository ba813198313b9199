"""Open, validate, read and write LeRobot datasets: the layer every stage goes through.

- `open_dataset(path)` reads `meta/info.json`, checks the format version and returns a `DatasetInfo`.
- `require_columns(info, columns, stage=...)` names the command that produces a missing column.
- `validate_dataset(info)` runs the bad-input checks (dtypes, stored values through
  `schema.check_column_values`: NaN/inf, intervention 0/1, value_label range, adv_ind; empty
  episodes, truncated parquet, missing video files) before a stage spends time on the data.
- `video_problems(info)` names every video file whose first frame (or last packets) cannot be read.
- `read_columns(info, columns)` reads the tabular (non-video) columns per episode with pyarrow,
  without lerobot, so labelers and stats do not pay for video decoding.
- `new_dataset` / `write_episode` write a v3.0 dataset through `LeRobotDataset.create`.

Frames are always decoded with `video_backend="pyav"` (torchcodec needs a system FFmpeg).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recap_core.data import schema
from recap_core.errors import DatasetError
from recap_core.fsutil import atomic_output_dir

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

V30 = "v3.0"
V21 = "v2.1"
SUPPORTED_VERSIONS = (V30, V21)
IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
# Columns lerobot adds to every dataset.
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# Video codec for datasets we write: h264 encodes and decodes everywhere through PyAV's bundled
# FFmpeg and, unlike SVT-AV1, does not print encoder banners on stderr.
DEFAULT_VCODEC = "h264"

# Which command produces each column a stage may need; used in missing-column errors.
PRODUCED_BY: dict[str, str] = {
    schema.INTERVENTION: "recap convert lerobot IN OUT --intervention COLUMN (or recap convert aloha-hdf5)",
    schema.REWARD: "recap convert lerobot IN OUT --success all|COLUMN|FILE",
    schema.REWARD_LABEL: "recap convert lerobot IN OUT --success all|COLUMN|FILE",
    schema.VALUE_LABEL: "recap convert lerobot IN OUT --success all|COLUMN|FILE",
    schema.ADV_IND: "recap convert lerobot IN OUT (initial labels), then recap value label",
    STATE: "the robot recorder (rename your state column to observation.state)",
    ACTION: "the robot recorder (rename your action column to action)",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a stage needs to know about a dataset before reading it."""

    root: Path
    version: str
    fps: int
    features: dict[str, dict]
    camera_keys: tuple[str, ...]  # full feature names, e.g. "observation.images.cam_high"
    video_keys: tuple[str, ...]
    state_dim: int | None
    action_dim: int | None
    episodes: int
    frames: int
    tasks: tuple[str, ...]
    robot_type: str | None = None
    info: dict = field(default_factory=dict, repr=False)

    @property
    def cameras(self) -> tuple[str, ...]:
        """Short camera names ("cam_high"), as users type them."""
        return tuple(k.removeprefix(IMAGE_PREFIX) for k in self.camera_keys)

    @property
    def has_recap_columns(self) -> bool:
        return all(c in self.features for c in schema.RECAP_COLUMNS)

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "version": self.version,
            "fps": self.fps,
            "episodes": self.episodes,
            "frames": self.frames,
            "cameras": list(self.cameras),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "tasks": list(self.tasks),
            "robot_type": self.robot_type,
        }


# ---------------------------------------------------------------------------------------------
# Opening


def read_meta_record(root: Path, rel: Path, *, key: str, kind: type, writer: str, fix: str) -> dict | None:
    """A recap sidecar under a dataset's meta/ (`meta/recap_source.json`, `meta/recap_label.json`):
    None when the dataset has none; a DatasetError naming the file when it is not JSON or lacks
    `key` of type `kind` (then it was not written by `writer`)."""
    path = Path(root) / rel
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})", fix=fix) from exc
    if not isinstance(record, dict) or not isinstance(record.get(key), kind):
        what = "text" if kind is str else "object"
        raise DatasetError(f"{path} has no {key!r} {what}; it was not written by `{writer}`", fix=fix)
    return record


def meta_record_bytes(record: dict) -> bytes:
    """How such a sidecar is written (strict JSON: NaN is an error, not a token)."""
    return (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()


def read_info_json(root: Path) -> dict:
    """`meta/info.json`, or a DatasetError saying why the directory is not a LeRobot dataset."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist", fix="check the path")
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(
            f"{root} is not a LeRobot dataset: {path} is missing",
            fix="point at the dataset root (the folder holding meta/, data/ and videos/)",
        )
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})", fix="restore meta/info.json from a backup") from exc
    _check_info_json(path, info)
    return info


_INFO_FIX = "repair meta/info.json (restore it from a backup, or re-create the dataset)"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_info_json(path: Path, info: Any) -> None:
    """The keys and value types of `meta/info.json` that recap reads; a DatasetError names the first bad key."""

    def bad(key: str, value: Any, expected: str) -> DatasetError:
        return DatasetError(f"{path}: key {key!r} is {_short_repr(value)} ({type(value).__name__}); expected {expected}", fix=_INFO_FIX)

    if not isinstance(info, dict):
        raise DatasetError(
            f"{path} holds a JSON {type(info).__name__}; expected an object with the keys codebase_version, fps and features",
            fix=_INFO_FIX,
        )
    for key in ("codebase_version", "fps", "features"):
        if key not in info:
            raise DatasetError(f"{path} has no {key!r} key", fix="this is not a LeRobot info.json; re-create the dataset")
    if not isinstance(info["codebase_version"], str):
        raise bad("codebase_version", info["codebase_version"], 'a version string such as "v3.0"')
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not np.isfinite(fps) or fps <= 0 or fps != int(fps):
        raise bad("fps", fps, "a positive whole number of frames per second")
    features = info["features"]
    if not isinstance(features, dict) or not features:
        raise bad("features", features, 'an object mapping each feature name to its spec {"dtype": ..., "shape": [...]}')
    for name, spec in features.items():
        if not isinstance(spec, dict):
            raise bad(f"features.{name}", spec, 'an object such as {"dtype": "float32", "shape": [14]}')
        if not isinstance(spec.get("dtype"), str):
            raise bad(f"features.{name}.dtype", spec.get("dtype"), 'a dtype string such as "float32" or "video"')
        shape = spec.get("shape")
        if not isinstance(shape, list | tuple) or not all(_is_count(d) for d in shape):
            raise bad(f"features.{name}.shape", shape, "a list of non-negative integers")
    for key in ("total_episodes", "total_frames"):
        if key in info and not _is_count(info[key]):
            raise bad(key, info[key], "a non-negative integer")
    if "chunks_size" in info and not (_is_count(info["chunks_size"]) and info["chunks_size"] > 0):
        raise bad("chunks_size", info["chunks_size"], "a positive integer")
    for key in ("robot_type", "data_path", "video_path"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise bad(key, info[key], "a string (or null)")


def dataset_version(root: Path) -> str:
    """'v3.0' or 'v2.1'; any other version is a DatasetError with the way forward."""
    info = read_info_json(root)
    version = str(info["codebase_version"])
    if version not in SUPPORTED_VERSIONS:
        raise DatasetError(
            f"{root / 'meta' / 'info.json'} has codebase_version {version!r}; recap reads v3.0 and v2.1",
            fix="upgrade older datasets with lerobot's converters to v2.1 first, then: recap convert v21-to-v30 IN OUT",
        )
    return version


def open_dataset(root: Path, *, version: str | None = V30) -> DatasetInfo:
    """Read and check the metadata of a dataset; `version=None` accepts v2.1 and v3.0."""
    root = Path(root)
    found = dataset_version(root)
    if version is not None and found != version:
        fix = (
            f"convert it first: recap convert v21-to-v30 {root} {root}_v30"
            if found == V21
            else f"convert it first: recap convert v30-to-v21 {root} {root}_v21"
        )
        raise DatasetError(f"{root} is a LeRobot {found} dataset; this command needs {version}", fix=fix)
    info = read_info_json(root)
    features = info["features"]
    camera_keys = tuple(k for k, f in features.items() if f.get("dtype") in ("video", "image"))
    video_keys = tuple(k for k in camera_keys if features[k]["dtype"] == "video")
    return DatasetInfo(
        root=root,
        version=found,
        fps=int(info["fps"]),
        features=features,
        camera_keys=camera_keys,
        video_keys=video_keys,
        state_dim=_vector_dim(features, STATE),
        action_dim=_vector_dim(features, ACTION),
        episodes=int(info.get("total_episodes", 0)),
        frames=int(info.get("total_frames", 0)),
        tasks=tuple(_read_tasks(root, found)),
        robot_type=info.get("robot_type"),
        info=info,
    )


def _vector_dim(features: dict, key: str) -> int | None:
    if key not in features:
        return None
    shape = features[key]["shape"]
    return int(shape[0]) if len(shape) == 1 else int(np.prod(shape))


def _read_tasks(root: Path, version: str) -> list[str]:
    """Task strings ordered by task_index."""
    if version == V21:
        path = root / "meta" / "tasks.jsonl"
        if not path.is_file():
            return []
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return [str(r["task"]) for r in sorted(rows, key=lambda r: int(r["task_index"]))]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path} is not a list of JSON lines with task_index and task ({exc!r})",
                fix="restore meta/tasks.jsonl from a backup or re-create the dataset",
            ) from exc
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise DatasetError(f"{path} is missing", fix="the dataset is incomplete; re-create or re-download it")
    # A pandas DataFrame indexed by the task string: columns task_index + __index_level_0__.
    table = read_parquet(path)
    names = [c for c in table.column_names if c != "task_index"]
    index = table.column("task_index").to_pylist()
    tasks = table.column(names[0]).to_pylist() if names else []
    return [t for _, t in sorted(zip(index, tasks, strict=True))]


def camera_keys_for(info: DatasetInfo, cameras: Iterable[str]) -> list[str]:
    """Feature names for camera names given by a user ("cam_high" or the full key)."""
    keys = []
    for cam in cameras:
        key = cam if cam.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + cam
        if key not in info.camera_keys:
            raise DatasetError(
                f"camera {cam!r} is not in {info.root} (it has: {', '.join(info.cameras) or 'no cameras'})",
                fix="pass one of the dataset's camera names",
            )
        keys.append(key)
    return keys


def require_columns(info: DatasetInfo, columns: Iterable[str], *, stage: str) -> None:
    """Raise a DatasetError naming the first missing column and the command that produces it."""
    missing = [c for c in columns if c not in info.features]
    if missing:
        producer = PRODUCED_BY.get(missing[0], "the tool that recorded the dataset")
        raise DatasetError(
            f"{info.root} has no column {missing[0]!r}"
            + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else "")
            + f", which `{stage}` needs",
            fix=f"add it with: {producer}",
        )


# ---------------------------------------------------------------------------------------------
# Reading tabular columns


def read_parquet(path: Path, columns: Sequence[str] | None = None):
    """A parquet file as a pyarrow Table; a truncated or corrupt file is a DatasetError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(
            f"{path} cannot be read as parquet ({exc}); it is truncated or corrupt",
            fix="restore the file from a backup or re-create the dataset",
        ) from exc


def data_files(info: DatasetInfo) -> list[Path]:
    files = sorted((info.root / "data").glob("**/*.parquet"))
    if not files:
        raise DatasetError(f"{info.root / 'data'} holds no parquet files", fix="the dataset is incomplete; re-create it")
    return files


def read_table(info: DatasetInfo, columns: Sequence[str] | None = None):
    """All frames of the dataset as one pyarrow Table, ordered by global `index`."""
    import pyarrow as pa

    if columns is not None:
        require_columns(info, [c for c in columns if c not in INDEX_COLUMNS], stage="reading the dataset")
        columns = list(dict.fromkeys([*columns, "episode_index", "index"]))
    tables = [read_parquet(p, columns) for p in data_files(info)]
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    return table.sort_by("index")


def column_array(table, name: str) -> np.ndarray:
    """A column as numpy: scalars -> [N], fixed-size lists -> [N, D], strings -> object [N]."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        return np.asarray(col.to_pylist(), dtype=np.float64 if pa.types.is_floating(col.type.value_type) else None)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def read_columns(info: DatasetInfo, columns: Sequence[str]) -> dict[int, dict[str, np.ndarray]]:
    """Tabular columns per episode: {episode_index: {column: array [T, ...]}} in frame order.

    List columns come back as float64/ints [T, D]; use `read_table` + `column_array` for the
    whole dataset at once.
    """
    table = read_table(info, columns)
    episode = table.column("episode_index").to_numpy()
    arrays = {c: column_array(table, c) for c in columns}
    out: dict[int, dict[str, np.ndarray]] = {}
    bounds = np.flatnonzero(np.diff(episode)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(episode)], strict=True):
        out[int(episode[start])] = {c: a[start:stop] for c, a in arrays.items()}
    return out


def episode_lengths(info: DatasetInfo) -> dict[int, int]:
    """{episode_index: number of frames} from the data itself (not the metadata)."""
    table = read_table(info, ["episode_index"])
    eps, counts = np.unique(table.column("episode_index").to_numpy(), return_counts=True)
    return {int(e): int(c) for e, c in zip(eps, counts, strict=True)}


# ---------------------------------------------------------------------------------------------
# Validation


def validate_dataset(
    info: DatasetInfo, *, columns: Sequence[str] = (), check_videos: bool = True, decode_videos: bool = False
) -> None:
    """The bad-input checks every stage runs before it starts; raises DatasetError on the first.

    Checks: every parquet reads (not truncated), declared dtypes of the RECAP columns, the stored
    values (`schema.check_column_values`: no NaN/inf in state, action, the RECAP columns and the
    numeric columns among `columns`; intervention 0/1, value_label within [-1, 0], adv_ind values;
    each failure names the dataset, column, episode and frame), every metadata episode has frames,
    and every video file the metadata names exists (with `decode_videos`, also decodes: see
    `video_problems`).
    """
    require_columns(info, columns, stage="this command")
    meta = info.root / "meta" / "info.json"
    for name in schema.RECAP_COLUMNS:
        if name in info.features:
            want = schema.RECAP_FEATURES[name]["dtype"]
            got = info.features[name].get("dtype")
            if got != want:
                raise DatasetError(
                    f"column {name!r} in {meta} has dtype {got!r}; expected {want!r}",
                    fix="re-create the RECAP columns with: recap convert lerobot IN OUT",
                )
    for name in (STATE, ACTION):
        if name in info.features and info.features[name].get("dtype") not in ("float32", "float64"):
            raise DatasetError(
                f"column {name!r} in {meta} has dtype {info.features[name].get('dtype')!r}; expected 'float32'",
                fix="store joint positions and actions as float32 vectors and convert again",
            )
    checked = [
        c for c in dict.fromkeys((*columns, STATE, ACTION, *schema.RECAP_COLUMNS))
        if c in info.features and c not in INDEX_COLUMNS and info.features[c]["dtype"] not in ("video", "image")
    ]
    table = read_table(info, [*checked, "frame_index"])
    schema.check_column_values(
        {name: column_array(table, name) for name in checked},
        column_array(table, "episode_index"),
        column_array(table, "frame_index"),
        index=column_array(table, "index"),
        where=str(info.root),
    )
    if info.version == V30:
        _check_episodes(info, table)
        if check_videos:
            _check_video_files(info)
    if decode_videos:
        problems = video_problems(info)
        if problems:
            raise DatasetError(
                problems[0] + (f" (and {len(problems) - 1} more unreadable video files)" if len(problems) > 1 else ""),
                fix="restore the videos/ folder from a backup or re-create the dataset",
            )


def read_episodes_meta(info: DatasetInfo, *, with_stats: bool = False):
    """`meta/episodes/*.parquet` as one Table sorted by episode_index (per-episode stats optional)."""
    files = sorted((info.root / "meta" / "episodes").glob("**/*.parquet"))
    if not files:
        raise DatasetError(f"{info.root / 'meta' / 'episodes'} holds no parquet files", fix="the dataset is incomplete; re-create it")
    import pyarrow as pa

    tables = []
    for path in files:
        table = read_parquet(path)
        tables.append(table if with_stats else table.select([c for c in table.column_names if not c.startswith("stats/")]))
    return pa.concat_tables(tables, promote_options="default").sort_by("episode_index")


def _check_episodes(info: DatasetInfo, table) -> None:
    meta = read_episodes_meta(info)
    lengths = dict(zip(*np.unique(table.column("episode_index").to_numpy(), return_counts=True), strict=True))
    for ep, length in zip(meta.column("episode_index").to_pylist(), meta.column("length").to_pylist(), strict=True):
        if length == 0 or lengths.get(ep, 0) == 0:
            raise DatasetError(
                f"episode {ep} of {info.root} has no frames",
                fix="drop empty episodes from the source before converting",
            )
        if lengths[ep] != length:
            raise DatasetError(
                f"episode {ep} has {lengths[ep]} frames in data/ but meta/episodes says {length}",
                fix="the dataset is inconsistent; re-create it",
            )


def _check_video_files(info: DatasetInfo) -> None:
    if not info.video_keys:
        return
    meta = read_episodes_meta(info)
    template = info.info.get("video_path") or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    for key in info.video_keys:
        chunks = meta.column(f"videos/{key}/chunk_index").to_pylist()
        files = meta.column(f"videos/{key}/file_index").to_pylist()
        for ep, c, f in zip(meta.column("episode_index").to_pylist(), chunks, files, strict=True):
            path = info.root / template.format(video_key=key, chunk_index=c, file_index=f)
            if not path.is_file():
                raise DatasetError(
                    f"video file {path} (camera {key}, episode {ep}) is missing",
                    fix="restore the videos/ folder or re-create the dataset",
                )


def video_problems(info: DatasetInfo) -> list[str]:
    """One message per video file under `videos/` that cannot be read, naming its path.

    Cheap: per file, the container is opened, its first frame decoded, and the packets of its last
    group of pictures are located (a file cut short loses them, while its first frame may still
    decode). No other frame is decoded.
    """
    import av.logging

    videos = info.root / "videos"
    if not videos.is_dir():
        return []
    problems = []
    # FFmpeg's own complaints about a broken file ("partial file", ...) are captured, not printed:
    # the problems list says it once, with the path.
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture():
            for path in sorted(videos.rglob("*.mp4")):
                why = _video_problem(path)
                if why is not None:
                    problems.append(f"video file {path} {why}")
    finally:
        av.logging.set_level(previous)
    return problems


def _video_problem(path: Path) -> str | None:
    import av

    size = path.stat().st_size
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "has no video stream"
            stream = container.streams.video[0]
            if next(container.decode(stream), None) is None:
                return "holds no decodable frame"
            if stream.duration is None:
                return None
            container.seek(int((stream.start_time or 0) + stream.duration), stream=stream, backward=True)
            tail = [p for p in container.demux(stream) if p.size]
            if not tail or any(p.pos is not None and p.pos >= 0 and p.pos + p.size > size for p in tail):
                return "is truncated: the packets of its last frames are missing"
    except Exception as exc:  # any failure to read the file (FFmpeg, container, index) means unreadable
        return f"cannot be decoded ({type(exc).__name__}: {exc})"
    return None


def check_finite(name: str, values: np.ndarray, where: str, *, first_frame: int = 0) -> None:
    """Raise on NaN/inf in `values` (used by converters before writing), naming the first bad frame.

    `values` holds frames `first_frame`, `first_frame + 1`, ... along its first axis.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        first = [int(i) for i in np.argwhere(~np.isfinite(arr))[0]]
        if not first:
            at = "its only value"
        else:
            at = f"frame {first_frame + first[0]}" + (f", dim {', '.join(map(str, first[1:]))}" if first[1:] else "")
        raise DatasetError(
            f"{where}: {name} has NaN/inf (first at {at}: {arr[tuple(first)]}); expected finite numbers",
            fix="fix or drop that episode in the source data (or re-record it)",
        )


# ---------------------------------------------------------------------------------------------
# Writing


def camera_feature(height: int, width: int, use_videos: bool = True) -> dict:
    return {"dtype": "video" if use_videos else "image", "shape": (height, width, 3), "names": ["height", "width", "channels"]}


def vector_feature(dim: int, dtype: str = "float32", names: Sequence[str] | None = None) -> dict:
    return {"dtype": dtype, "shape": (dim,), "names": list(names) if names is not None else None}


# Called after each episode is written: (episodes done, episodes in total).
ProgressFn = Callable[[int, int], None]


@contextlib.contextmanager
def output_dataset_dir(out: Path, overwrite: bool = False, *, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """A not-yet-existing temporary root that becomes `out` in one rename when the block succeeds.

    `LeRobotDataset.create` insists on creating its root itself, so the temporary directory made
    by `atomic_output_dir` is removed again before it is handed out.
    """
    with atomic_output_dir(out, overwrite, inputs=inputs) as tmp:
        tmp.rmdir()
        yield tmp
        prune_image_scratch(tmp)


def prune_image_scratch(root: Path) -> None:
    """Remove the empty `images/` folders LeRobot's writer leaves behind once frames are encoded
    into videos (a dataset's files are data, meta and videos; empty folders only confuse)."""
    images = Path(root) / "images"
    if not images.is_dir():
        return
    for folder in sorted((p for p in images.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only empty ones go
    with contextlib.suppress(OSError):
        images.rmdir()


def quiet_writers() -> None:
    """Silence per-episode encoder logs and `datasets` progress bars; our CLI shows its own progress."""
    import av
    import datasets

    av.logging.set_level(av.logging.ERROR)
    av.logging.set_libav_level(av.logging.ERROR)  # lerobot restores FFmpeg's own logger after each encode
    datasets.disable_progress_bars()


def new_dataset(
    root: Path,
    *,
    fps: int,
    features: dict[str, dict],
    robot_type: str | None = None,
    use_videos: bool = True,
    with_recap: bool = True,
    vcodec: str = DEFAULT_VCODEC,
) -> LeRobotDataset:
    """A new, empty v3.0 dataset at `root` (which must not exist) with the RECAP columns added."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    quiet_writers()
    feats = {k: dict(v) for k, v in features.items() if k not in INDEX_COLUMNS}
    if with_recap:
        feats.update({k: dict(v) for k, v in schema.RECAP_FEATURES.items()})
    return LeRobotDataset.create(
        repo_id=f"local/{Path(root).name}",
        fps=int(fps),
        features=feats,
        root=root,
        robot_type=robot_type,
        use_videos=use_videos,
        vcodec=vcodec,
        video_backend="pyav",
    )


def write_episode(
    ds: LeRobotDataset,
    arrays: dict[str, np.ndarray],
    tasks: str | Sequence[str],
    labels: schema.EpisodeLabels | None = None,
) -> None:
    """Append one episode: `arrays` maps each feature to [T, ...] values (images uint8 HWC).

    Values may be anything indexable by frame with a length (numpy arrays, h5py datasets); they
    are read one frame at a time.
    """
    lengths = {k: len(v) for k, v in arrays.items()}
    length = next(iter(lengths.values()))
    if any(n != length for n in lengths.values()):
        raise DatasetError(f"episode arrays have different lengths: {lengths}", fix="give every feature one row per frame")
    for t in range(length):
        frame: dict[str, Any] = {}
        for key, values in arrays.items():
            spec = ds.features[key]
            value = values[t]
            if spec["dtype"] == "string":
                frame[key] = str(value)
            elif spec["dtype"] in ("video", "image"):
                frame[key] = np.asarray(value, dtype=np.uint8)
            else:
                frame[key] = np.asarray(value, dtype=spec["dtype"]).reshape(spec["shape"])
        if labels is not None:
            frame.update(labels.frame(t))
        frame["task"] = tasks if isinstance(tasks, str) else str(tasks[t])
        ds.add_frame(frame)
    # lerobot encodes the cameras of an episode in a forked process pool. Forking a process in
    # which JAX has started (a library user's notebook, our tests) can deadlock, so encode in
    # this process there; the CLI's converters never import JAX and keep the parallel encoding.
    ds.save_episode(parallel_encoding="jax" not in sys.modules)
