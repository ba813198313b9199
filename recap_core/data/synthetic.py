"""Tiny, deterministic robot datasets for tests, benchmarks and the demo.

`make_dataset` writes a real LeRobot v3.0 dataset through `LeRobotDataset.create` (cameras stored as
video by default, RECAP columns from `schema.recap_labels`); `make_aloha_hdf5` writes the same kind
of episodes as raw ALOHA/ACT HDF5 files, the input of `recap convert aloha-hdf5`.

Content is smooth in time and space (moving colour gradients, sine-wave joints) so video codecs
reproduce it closely and a model can actually learn something from it.

Defaults when not given: every episode succeeds except the last one (when there are 2 or more),
episode 0 is a human demonstration (all intervention frames), and every other odd episode has a
short human correction in its middle third; the rest is autonomous.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recap_core.data import schema

DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist")


def _per_episode(value, episodes: int, name: str) -> list:
    if isinstance(value, int | np.integer | bool | np.bool_):
        return [value] * episodes
    value = list(value)
    if len(value) != episodes:
        raise ValueError(f"{name} has {len(value)} entries for {episodes} episodes")
    return value


def default_successes(episodes: int) -> list[bool]:
    return [not (episodes >= 2 and ep == episodes - 1) for ep in range(episodes)]


def default_intervention(episode: int, length: int) -> np.ndarray:
    flags = np.zeros(length, dtype=np.int64)
    if episode == 0:
        flags[:] = 1
    elif episode % 2 == 1:
        flags[length // 3 : max(length // 3 + 1, 2 * length // 3)] = 1
    return flags


def episode_arrays(
    episode: int,
    length: int,
    *,
    cameras: Sequence[str],
    image_size: int | tuple[int, int],
    state_dim: int,
    action_dim: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Raw arrays of one synthetic episode: {'images': {cam: uint8 [T,H,W,3]}, 'qpos', 'qvel', 'action'}."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rng = np.random.default_rng([seed, episode])
    t = np.arange(length, dtype=np.float64)[:, None]
    freq = rng.uniform(0.05, 0.2, size=(1, state_dim))
    phase = rng.uniform(0, 2 * np.pi, size=(1, state_dim))
    qpos = np.sin(freq * t + phase).astype(np.float32)
    qvel = (freq * np.cos(freq * t + phase)).astype(np.float32)
    # The action is where the arm goes next: the state one step ahead (then resized to action_dim).
    ahead = np.sin(freq * (t + 1) + phase)
    action = np.resize(ahead.T, (action_dim, length)).T.astype(np.float32)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = {}
    for c, cam in enumerate(cameras):
        frames = np.empty((length, height, width, 3), dtype=np.uint8)
        for i in range(length):
            shift = (i * 2.0 + c * 7.0 + episode * 3.0)
            r = 127 + 100 * np.sin((xx + shift) / max(width, 1) * 2 * np.pi)
            g = 127 + 100 * np.cos((yy - shift) / max(height, 1) * 2 * np.pi)
            b = np.full_like(xx, 60.0 + 40.0 * c + 5.0 * (i % 10))
            frames[i] = np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)
        images[cam] = frames
    return {"images": images, "qpos": qpos, "qvel": qvel, "action": action}


def make_dataset(
    root: Path,
    *,
    episodes: int = 3,
    frames: int | Sequence[int] = 20,
    image_size: int | tuple[int, int] = 32,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    state_dim: int = 14,
    action_dim: int = 14,
    tasks: Sequence[str] = ("pick up the cube",),
    success: Sequence[bool] | None = None,
    intervention: Sequence[np.ndarray | int] | None = None,
    with_recap: bool = True,
    seed: int = 0,
    use_videos: bool = True,
    fps: int = 10,
    robot_type: str = "aloha",
    failure_penalty: float = schema.DEFAULT_FAILURE_PENALTY,
) -> Path:
    """Write a LeRobot v3.0 dataset at `root` (must not exist) and return `root`.

    Features: `observation.images.<cam>` (video or image), `observation.state` [state_dim],
    `action` [action_dim] and, with `with_recap`, the five RECAP columns. Episode `k` has task
    `tasks[k % len(tasks)]`; `frames` is one length for all episodes or one per episode.
    """
    from recap_core.data.dataset import (
        camera_feature,
        new_dataset,
        prune_image_scratch,
        vector_feature,
        write_episode,
    )

    root = Path(root)
    lengths = [int(n) for n in _per_episode(frames, episodes, "frames")]
    successes = default_successes(episodes) if success is None else [bool(s) for s in _per_episode(success, episodes, "success")]
    if intervention is None:
        flags = [default_intervention(ep, n) for ep, n in enumerate(lengths)]
    else:
        given = _per_episode(intervention, episodes, "intervention")
        flags = [np.full(n, int(f), np.int64) if np.ndim(f) == 0 else np.asarray(f, np.int64) for f, n in zip(given, lengths, strict=True)]
    episode_tasks = [tasks[ep % len(tasks)] for ep in range(episodes)]
    labels = schema.recap_labels(lengths, successes, flags, episode_tasks, failure_penalty=failure_penalty) if with_recap else None

    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    features = {f"observation.images.{cam}": camera_feature(height, width, use_videos) for cam in cameras}
    features["observation.state"] = vector_feature(state_dim, names=[f"q{i}" for i in range(state_dim)])
    features["action"] = vector_feature(action_dim, names=[f"a{i}" for i in range(action_dim)])
    ds = new_dataset(root, fps=fps, features=features, robot_type=robot_type, use_videos=use_videos, with_recap=with_recap)
    try:
        for ep, length in enumerate(lengths):
            raw = episode_arrays(ep, length, cameras=cameras, image_size=image_size, state_dim=state_dim, action_dim=action_dim, seed=seed)
            arrays = {f"observation.images.{cam}": raw["images"][cam] for cam in cameras}
            arrays["observation.state"] = raw["qpos"]
            arrays["action"] = raw["action"]
            write_episode(ds, arrays, episode_tasks[ep], labels[ep] if labels is not None else None)
    finally:
        ds.finalize()
    prune_image_scratch(root)
    return root


def make_aloha_hdf5(
    raw_dir: Path,
    *,
    episodes: int = 2,
    frames: int | Sequence[int] = 20,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    image_size: int | tuple[int, int] = 32,
    state_dim: int = 14,
    action_dim: int = 14,
    success: Sequence[bool] | None = None,
    intervention: Sequence[np.ndarray | int] | None = None,
    tasks: Sequence[str | None] | None = None,
    with_qvel: bool = True,
    seed: int = 0,
    with_success_attr: bool | Sequence[bool] = True,
    reward: Sequence[float | np.ndarray] | None = None,
) -> Path:
    """Write raw episodes `raw_dir/episode_<k>.hdf5` in the ALOHA/ACT layout and return `raw_dir`.

    Layout: `/observations/qpos` [T,S], `/observations/qvel` [T,S] (with `with_qvel`),
    `/observations/images/<cam>` uint8 [T,H,W,3], `/action` [T,A], `/intervention` int [T]
    (always written here; optional for the converter), root attrs `success` (bool; per episode
    only where `with_success_attr` is true: ACT's recorder writes none) and, when `tasks[k]` is
    given, `task`. `reward[k]`: episode k's `/reward` [T] (ACT / gym-aloha: per-step reward, 4 when
    the task is done), given as the array or as its final value m (a staircase of whole steps 0, 1, ... ending at m).
    """
    import h5py

    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    lengths = [int(n) for n in _per_episode(frames, episodes, "frames")]
    successes = default_successes(episodes) if success is None else [bool(s) for s in _per_episode(success, episodes, "success")]
    given = None if intervention is None else _per_episode(intervention, episodes, "intervention")
    task_list = [None] * episodes if tasks is None else _per_episode(tasks, episodes, "tasks")
    attrs = _per_episode(with_success_attr, episodes, "with_success_attr")
    rewards = None if reward is None else _per_episode(reward, episodes, "reward")
    for ep, length in enumerate(lengths):
        raw = episode_arrays(ep, length, cameras=cameras, image_size=image_size, state_dim=state_dim, action_dim=action_dim, seed=seed)
        if given is None:
            flags = default_intervention(ep, length)
        else:
            flags = np.full(length, int(given[ep]), np.int64) if np.ndim(given[ep]) == 0 else np.asarray(given[ep], np.int64)
        with h5py.File(raw_dir / f"episode_{ep}.hdf5", "w") as f:
            obs = f.create_group("observations")
            obs.create_dataset("qpos", data=raw["qpos"])
            if with_qvel:
                obs.create_dataset("qvel", data=raw["qvel"])
            imgs = obs.create_group("images")
            for cam in cameras:
                imgs.create_dataset(cam, data=raw["images"][cam], chunks=(1, *raw["images"][cam].shape[1:]))
            f.create_dataset("action", data=raw["action"])
            f.create_dataset("intervention", data=flags)
            if attrs[ep]:
                f.attrs["success"] = bool(successes[ep])
            if rewards is not None:
                given_reward = rewards[ep]
                if np.ndim(given_reward) == 0:
                    steps = np.floor(np.linspace(0, float(given_reward), length))
                    steps[-1] = float(given_reward)
                else:
                    steps = np.asarray(given_reward)
                f.create_dataset("reward", data=steps.astype(np.float32))
            if task_list[ep] is not None:
                f.attrs["task"] = str(task_list[ep])
    return raw_dir
