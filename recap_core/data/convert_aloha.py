"""Raw ALOHA/ACT HDF5 episodes -> a LeRobot v3.0 dataset with the RECAP columns.

Input layout (one file per episode, `RAW_DIR/episode_<k>.hdf5`, taken in order of k):
    /observations/qpos              float [T, S]   -> observation.state
    /observations/qvel              float [T, S]   -> observation.velocity   (optional)
    /observations/images/<camera>   uint8 [T, H, W, 3] -> observation.images.<camera> (video)
    /action                         float [T, A]   -> action
    /intervention                   int/bool [T]   -> intervention (optional; default 0 = autonomous)
    /reward                         number [T]     read by `--success reward` only (optional)
    root attrs: success (bool, 0/1 or "true"/"false"; optional, see below), task (non-empty str,
                overrides --task for that episode)
    qpos / action attrs: names (str [S] / [A], optional) -> the features' per-dim names; without
    them a 14-D robot gets ALOHA's joint names (lerobot's aloha datasets), others none.

Whether an episode succeeded (`success`, the source of the RECAP `reward` column) follows one rule,
stated in the summary and recorded in `meta/recap_source.json` (`recap_core.data.source`):
    attr    each file's root `success` attribute; a file without it is an error
    all     every episode succeeded;   none: every episode failed
    reward  max(/reward) >= success_reward (default 4: ACT's and gym-aloha's sim tasks give a
            per-step reward of 0..4, 4 when the task is done); a file without /reward is an error
Without a rule: `attr` when every file has the attribute, otherwise a refusal, never a guess (ACT's
recorder writes no attribute and keeps failed episodes too). The RECAP `reward` column keeps its
definition (1 on the last frame of a successful episode): the dense /reward is not copied into it.

Cameras keep their names (`observation.images.<camera>`) unless `camera_map` renames them, e.g.
{"top": "cam_high"}: ACT sim and lerobot's aloha_sim call the overhead camera `top`, openpi's ALOHA
clients send `cam_high`.

Every file is checked (shapes, cameras, NaN/inf in every float dataset, the success and task
attributes, empty episodes) before anything is written, so a bad episode stops the conversion up
front with its file name.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data import schema
from recap_core.data.dataset import (
    ProgressFn,
    camera_feature,
    check_finite,
    new_dataset,
    open_dataset,
    output_dataset_dir,
    vector_feature,
    write_episode,
)
from recap_core.data.source import success_counts, write_source_record
from recap_core.errors import ConfigError, DatasetError
from recap_core.fsutil import check_output

EPISODE_FILE = re.compile(r"^episode_(\d+)\.hdf5$")
_ALOHA_ARM = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
ALOHA_NAMES = tuple(f"{side}_{joint}" for side in ("left", "right") for joint in _ALOHA_ARM)
SUCCESS_RULES = ("attr", "all", "none", "reward")
DEFAULT_SUCCESS_REWARD = 4.0  # ACT / gym-aloha TransferCube and Insertion: 4 = task done
CAMERA_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_OTHER_RULES = ("--success all|none|reward (all: every episode succeeded; none: every one failed; reward: "
                f"max of /reward >= --success-reward, default {DEFAULT_SUCCESS_REWARD:g})")


@dataclass(frozen=True)
class RawEpisode:
    """What the first pass learns about one HDF5 episode (arrays are read again when writing)."""

    path: Path
    length: int
    cameras: dict[str, tuple[int, int, int]]
    state_dim: int
    action_dim: int
    has_qvel: bool
    success: bool | None  # the root `success` attribute; None when the file has none
    task: str
    intervention: np.ndarray
    state_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None
    max_reward: float | None = None  # max of /reward; None when the file has none


def _dim_names(ds: Any, dim: int, path: Path) -> tuple[str, ...] | None:
    """Per-dim names from the HDF5 dataset's `names` attribute, else ALOHA's for 14 dims."""
    names = ds.attrs.get("names")
    if names is None:
        return ALOHA_NAMES if dim == len(ALOHA_NAMES) else None
    names = tuple(_attr_str(n) for n in np.asarray(names).reshape(-1))
    if len(names) != dim:
        raise DatasetError(f"{path}: {ds.name} has {dim} dims but its names attribute lists {len(names)}",
                           fix="store one name per dim, or drop the attribute")
    return names


def episode_files(raw_dir: Path) -> list[Path]:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetError(f"raw episode directory {raw_dir} does not exist", fix="check the path")
    found = [(int(m.group(1)), p) for p in raw_dir.iterdir() if (m := EPISODE_FILE.match(p.name))]
    if not found:
        raise DatasetError(
            f"{raw_dir} holds no episode_<k>.hdf5 files",
            fix="point at the folder with the recorded episodes (episode_0.hdf5, episode_1.hdf5, ...)",
        )
    return [p for _, p in sorted(found)]


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr_scalar(value: Any) -> Any:
    """An attribute stored as a one-element array (some writers do) as its element."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(-1)[0]
    return value


def _attr_bool(value: Any, path: Path, name: str) -> bool:
    """A bool-like HDF5 attribute, parsed explicitly: `bool("False")` is True, so strings are not cast.

    Allowed: bools (Python or numpy), the integers 0 / 1, and the strings "true" / "false" in any
    case (str or bytes). Anything else is a DatasetError naming the file and the attribute.
    """
    value = _attr_scalar(value)
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and value in (0, 1):
        return bool(value)
    if isinstance(value, str | bytes):
        try:
            text = _attr_str(value).strip().lower()
        except UnicodeDecodeError:
            text = None
        if text in ("true", "false"):
            return text == "true"
    raise DatasetError(
        f"{path}: attribute {name!r} is {value!r} ({type(value).__name__}); expected a boolean "
        '(True/False, 1/0, or the string "true"/"false")',
        fix=f"store it as a bool, e.g. with h5py: f.attrs[{name!r}] = False",
    )


def _attr_task(value: Any, path: Path) -> str:
    """The `task` attribute as text; empty or whitespace-only text is refused like `--task ""`."""
    value = _attr_scalar(value)
    try:
        task = _attr_str(value)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: attribute 'task' is not UTF-8 text ({exc})", fix="store the task as UTF-8 text") from exc
    if not isinstance(value, str | bytes):
        raise DatasetError(
            f"{path}: attribute 'task' is {value!r} ({type(value).__name__}); expected the task text",
            fix='store the task as text, e.g. f.attrs["task"] = "fold the towel", or delete the attribute to use --task',
        )
    if not task.strip():
        raise DatasetError(
            f"{path}: attribute 'task' is empty ({value!r}); an episode's task attribute overrides --task",
            fix='store the task text, e.g. f.attrs["task"] = "fold the towel", or delete the attribute so --task is used',
        )
    return task


def _check_all_finite(f: Any, path: Path, rows: int = 4096) -> None:
    """NaN/inf in ANY float dataset of the file (qpos, qvel, effort, action, rewards, ...) is
    refused, naming the dataset key and the first bad frame; read `rows` frames at a time."""
    import h5py

    floats: list[Any] = []
    f.visititems(lambda _, obj: floats.append(obj) if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fc" else None)
    for ds in floats:
        if ds.ndim == 0 or ds.size == 0:
            check_finite(ds.name, ds[()], str(path))
            continue
        for start in range(0, ds.shape[0], rows):
            check_finite(ds.name, ds[start : start + rows], str(path), first_frame=start)


def _max_reward(f: Any, path: Path, length: int) -> float:
    """The largest per-step value of /reward ([T] or [T, 1] numbers)."""
    ds = f["/reward"]
    if ds.dtype.kind not in "biuf" or ds.shape not in ((length,), (length, 1)):
        raise DatasetError(f"{path}: /reward is {ds.dtype} {ds.shape}; expected {length} numbers (one reward per frame)",
                           fix="store the per-step reward as a [T] array, or delete /reward")
    return float(np.max(ds[()]))


def _dataset(f, key: str, path: Path, ndim: int):
    if key not in f:
        raise DatasetError(f"{path} has no {key} dataset", fix="write episodes in the ALOHA layout (see `recap convert aloha-hdf5 --help`)")
    ds = f[key]
    if ds.ndim != ndim:
        raise DatasetError(f"{path}: {key} has shape {ds.shape}; expected {ndim} dimensions", fix="store one row per frame")
    return ds


def scan_episode(path: Path, default_task: str) -> RawEpisode:
    """Read the shapes and labels of one episode and check them; no image data is loaded."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path} cannot be opened as HDF5 ({exc})", fix="re-export the episode; the file is corrupt or truncated") from exc
    with f:
        qpos = _dataset(f, "/observations/qpos", path, 2)
        action = _dataset(f, "/action", path, 2)
        length = qpos.shape[0]
        if length == 0:
            raise DatasetError(f"{path} is an empty episode (0 frames)", fix="delete the file or re-record the episode")
        if action.shape[0] != length:
            raise DatasetError(f"{path}: /action has {action.shape[0]} frames but /observations/qpos has {length}", fix="store one action per frame")
        has_qvel = "/observations/qvel" in f
        if has_qvel and f["/observations/qvel"].shape != qpos.shape:
            raise DatasetError(f"{path}: /observations/qvel has shape {f['/observations/qvel'].shape}; expected {qpos.shape}", fix="store qvel like qpos")
        if "/observations/images" not in f or not len(f["/observations/images"]):
            raise DatasetError(f"{path} has no cameras under /observations/images", fix="store each camera as /observations/images/<camera> uint8 [T,H,W,3]")
        cameras = {}
        for cam, images in f["/observations/images"].items():
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != length or images.shape[-1] != 3:
                raise DatasetError(
                    f"{path}: /observations/images/{cam} is {images.dtype} {images.shape}; expected uint8 [{length}, H, W, 3]",
                    fix="store raw RGB frames (decode JPEG-compressed episodes first)",
                )
            cameras[cam] = tuple(images.shape[1:])
        _check_all_finite(f, path)
        if "/intervention" in f:
            flags = np.asarray(f["/intervention"][()]).reshape(-1)
            if flags.shape[0] != length or not np.isin(flags, (0, 1)).all():
                raise DatasetError(f"{path}: /intervention must hold {length} values of 0/1 (got shape {flags.shape})", fix="store 1 on human frames, 0 on autonomous ones")
            intervention = flags.astype(np.int64)
        else:
            intervention = np.zeros(length, dtype=np.int64)
        success = _attr_bool(f.attrs["success"], path, "success") if "success" in f.attrs else None
        max_reward = _max_reward(f, path, length) if "/reward" in f else None
        # The episode's own task attribute overrides --task (the default for files without one).
        task = _attr_task(f.attrs["task"], path) if "task" in f.attrs else default_task
        state_names = _dim_names(qpos, qpos.shape[1], path)
        action_names = _dim_names(action, action.shape[1], path)
    return RawEpisode(path, length, cameras, qpos.shape[1], action.shape[1], has_qvel, success, task, intervention,
                      state_names, action_names, max_reward)


def _check_consistent(episodes: list[RawEpisode]) -> None:
    first = episodes[0]
    for ep in episodes[1:]:
        for what, a, b in (
            ("cameras", first.cameras, ep.cameras),
            ("state dim", first.state_dim, ep.state_dim),
            ("action dim", first.action_dim, ep.action_dim),
            ("qvel present", first.has_qvel, ep.has_qvel),
            ("qpos names", first.state_names, ep.state_names),
            ("action names", first.action_names, ep.action_names),
        ):
            if a != b:
                raise DatasetError(
                    f"{ep.path.name} differs from {first.path.name} in {what}: {b} vs {a}",
                    fix="convert episodes of one robot setup together; split the folder otherwise",
                )


def _file_list(paths: Sequence[Path], shown: int = 3) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_success_rule(rule: str | None, success_reward: float | None) -> float | None:
    """Refuse an unknown rule or a threshold the rule does not read; the threshold `reward` uses."""
    if rule is not None and rule not in SUCCESS_RULES:
        raise ConfigError(f"--success {rule!r} is not a rule", fix=f"use one of: {', '.join(SUCCESS_RULES)}")
    if success_reward is not None and rule != "reward":
        raise ConfigError(f"--success-reward {success_reward:g} is read only by --success reward (this run: "
                          f"--success {rule or 'not given'})", fix="add --success reward, or drop --success-reward")
    if rule != "reward":
        return None
    threshold = DEFAULT_SUCCESS_REWARD if success_reward is None else float(success_reward)
    if not math.isfinite(threshold):
        raise ConfigError(f"--success-reward {threshold} is not a finite number", fix="pass the reward of a finished task, e.g. 4")
    return threshold


def episode_successes(episodes: Sequence[RawEpisode], rule: str | None, threshold: float | None) -> tuple[str, list[bool]]:
    """(the rule applied, success per episode); see the module docstring for the rules."""
    lacking = [e.path for e in episodes if e.success is None]
    if rule is None:
        if lacking:
            raise DatasetError(
                f"{len(lacking)} of {len(episodes)} episode files have no root attribute 'success' "
                f"({_file_list(lacking)}), so whether they succeeded is unknown (ACT's recorder keeps failed episodes too)",
                fix=f"say how to label them with {_OTHER_RULES}",
            )
        rule = "attr"
    if rule == "attr":
        if lacking:
            raise DatasetError(f"{lacking[0]} has no root attribute 'success', which --success attr reads"
                               + (f" ({len(lacking)} files lack it: {_file_list(lacking)})" if len(lacking) > 1 else ""),
                               fix=f"store it in every file (h5py: f.attrs['success'] = True), or label the episodes with {_OTHER_RULES}")
        return rule, [bool(e.success) for e in episodes]
    if rule in ("all", "none"):
        return rule, [rule == "all"] * len(episodes)
    no_reward = [e.path for e in episodes if e.max_reward is None]
    if no_reward:
        raise DatasetError(f"{no_reward[0]} has no /reward dataset, which --success reward reads"
                           + (f" ({len(no_reward)} files lack it: {_file_list(no_reward)})" if len(no_reward) > 1 else ""),
                           fix="store the per-step reward as /reward [T], or use --success attr|all|none")
    return rule, [e.max_reward >= threshold for e in episodes]


def parse_camera_map(specs: Sequence[str]) -> dict[str, str]:
    """`--camera SRC=DST` flags as {SRC: DST}; a malformed flag or a camera named twice is an error."""
    renames: dict[str, str] = {}
    for spec in specs:
        src, sep, dst = (part.strip() for part in spec.partition("="))
        if not sep or not src or not dst:
            raise ConfigError(f"--camera {spec!r} is not SRC=DST", fix="rename a camera like this: --camera top=cam_high")
        if src in renames:
            raise ConfigError(f"--camera renames {src!r} twice ({src}={renames[src]} and {spec})",
                              fix="give each source camera one --camera flag")
        renames[src] = dst
    return renames


def output_cameras(found: Sequence[str], camera_map: Mapping[str, str] | None) -> dict[str, str]:
    """Source camera -> the dataset's camera name, in the files' order (unmapped cameras keep theirs)."""
    camera_map = dict(camera_map or {})
    for src, dst in camera_map.items():
        if src not in found:
            raise ConfigError(f"--camera {src}={dst}: the episodes have no camera {src!r}; cameras found: {', '.join(found)}",
                              fix="name one of the cameras found as SRC")
        if not CAMERA_NAME.match(dst):
            raise ConfigError(f"--camera {src}={dst}: {dst!r} is not a camera name (letters, digits, _ and -)",
                              fix="give the short name, e.g. --camera top=cam_high (it becomes observation.images.cam_high)")
    names = {cam: camera_map.get(cam, cam) for cam in found}
    for name, count in Counter(names.values()).items():
        if count > 1:
            sources = [cam for cam, n in names.items() if n == name]
            raise ConfigError(f"--camera would give cameras {', '.join(sources)} the one name {name!r}",
                              fix="map each camera to a name of its own (a camera not renamed keeps its name)")
    return names


def convert_aloha_hdf5(
    raw_dir: Path,
    out: Path,
    *,
    fps: int,
    task: str,
    robot_type: str = "aloha",
    failure_penalty: float = schema.DEFAULT_FAILURE_PENALTY,
    t_max: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    success: str | None = None,
    success_reward: float | None = None,
    camera_map: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Convert `raw_dir/episode_<k>.hdf5` into a new v3.0 dataset at `out`; returns a summary.

    `success`: one of SUCCESS_RULES, or None for `attr` when every file has the attribute (else a
    DatasetError); `success_reward`: the `reward` rule's threshold (default 4). `camera_map`: {source
    camera: dataset camera} for the cameras to rename.
    """
    import h5py

    if fps <= 0:
        raise DatasetError(f"--fps {fps} must be positive", fix="pass the recording rate, e.g. --fps 50")
    if not task.strip():
        raise DatasetError("--task is empty", fix='describe the task, e.g. --task "fold the towel"')
    failure_penalty = schema.check_failure_penalty(failure_penalty)
    threshold = check_success_rule(success, success_reward)
    check_output(Path(out), overwrite, inputs=(Path(raw_dir),))  # fail fast, before reading anything
    files = episode_files(raw_dir)
    episodes = [scan_episode(p, task) for p in files]
    _check_consistent(episodes)
    first = episodes[0]
    cameras = output_cameras(list(first.cameras), camera_map)
    rule, successes = episode_successes(episodes, success, threshold)
    # How the episodes were labelled: in the summary and in meta/recap_source.json.
    how = {"success_rule": rule, **({"success_reward": threshold} if threshold is not None else {}),
           **success_counts(successes)}
    renamed = {src: dst for src, dst in cameras.items() if src != dst}
    labels = schema.recap_labels(
        [e.length for e in episodes],
        successes,
        [e.intervention for e in episodes],
        [e.task for e in episodes],
        t_max=t_max,
        failure_penalty=failure_penalty,
    )
    features = {f"observation.images.{cameras[cam]}": camera_feature(h, w) for cam, (h, w, _) in first.cameras.items()}
    features["observation.state"] = vector_feature(first.state_dim, names=first.state_names)
    if first.has_qvel:
        features["observation.velocity"] = vector_feature(first.state_dim, names=first.state_names)
    features["action"] = vector_feature(first.action_dim, names=first.action_names)

    with output_dataset_dir(out, overwrite, inputs=(Path(raw_dir),)) as tmp:
        ds = new_dataset(tmp, fps=fps, features=features, robot_type=robot_type)
        try:
            for i, (ep, ep_labels) in enumerate(zip(episodes, labels, strict=True)):
                # h5py datasets are passed as they are: write_episode reads them one frame at a
                # time, so a long 4-camera 480x640 episode never sits in memory whole.
                with h5py.File(ep.path, "r") as f:
                    arrays = {f"observation.images.{cameras[cam]}": f[f"/observations/images/{cam}"] for cam in ep.cameras}
                    arrays["observation.state"] = f["/observations/qpos"]
                    if ep.has_qvel:
                        arrays["observation.velocity"] = f["/observations/qvel"]
                    arrays["action"] = f["/action"]
                    write_episode(ds, arrays, ep.task, ep_labels)
                if progress is not None:
                    progress(i + 1, len(episodes))
        finally:
            ds.finalize()
        write_source_record(tmp, {"converter": "aloha-hdf5", **how, **({"cameras": renamed} if renamed else {})})
        open_dataset(tmp)  # what we wrote must open as v3.0 before it replaces anything
    frames = sum(e.length for e in episodes)
    return {
        "output": str(out),
        "episodes": len(episodes),
        "frames": frames,
        "fps": fps,
        "cameras": list(cameras.values()),
        "renamed_cameras": renamed,
        "tasks": sorted({e.task for e in episodes}),
        **how,
        "success_rate": float(np.mean(successes)),
        "intervention_fraction": float(sum(int(e.intervention.sum()) for e in episodes) / frames),
    }
