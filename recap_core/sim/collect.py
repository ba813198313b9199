"""Record toy-task episodes exactly as a robot operator's raw data: ALOHA/ACT HDF5 files.

`collect_demos` records the scripted expert (the "human" teleoperating: every frame is an
intervention); `collect` lets a policy act with the expert ready to take over (DAgger-style).
Each episode becomes `RAW_DIR/episode_<k>.hdf5`::

    /observations/qpos                float32 [T, S]
    /observations/qvel                float32 [T, S]
    /observations/images/<camera>     uint8   [T, H, W, 3]
    /action                           float32 [T, A]
    /intervention                     int64   [T]      1 = expert/human frame
    /ground_truth/mistake             int8    [T]      the sim's ground truth (operators.MISTAKES)
    attrs: success (bool), task (str: the prompt), sim (bool, as in ALOHA's own files),
           operator (str: careful / sloppy / hesitant for demos, policy for rollouts)

The ground truth is for checks (label precision at mistake frames); `recap convert` ignores it,
so no training run ever sees it.

which `recap convert aloha-hdf5 RAW_DIR OUT --fps <task.fps>` turns into a LeRobot dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from recap_core.fsutil import atomic_output_dir
from recap_core.sim.operators import MISTAKES, OperatorMix
from recap_core.sim.rollout import Episode, InterventionRule, PolicyFn, run_episode
from recap_core.sim.task import STATE_NAMES, TaskSpec, get_task

ProgressFn = Callable[[Episode], None]


@dataclasses.dataclass(frozen=True)
class CollectResult:
    raw_dir: Path
    task: str
    fps: int
    episodes: int
    successes: int
    frames: int
    intervention_frames: int
    takeovers: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def episode_filename(index: int) -> str:
    return f"episode_{index}.hdf5"


def write_episode_hdf5(path: Path, episode: Episode) -> None:
    """Write one episode in the ALOHA/ACT layout (images required)."""
    if not episode.images:
        raise ValueError("an episode written to HDF5 needs its images; run it with record_images=True")
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = True
        f.attrs["success"] = bool(episode.success)
        f.attrs["task"] = episode.prompt
        obs = f.create_group("observations")
        obs.create_dataset("qpos", data=episode.qpos).attrs["names"] = list(STATE_NAMES)
        obs.create_dataset("qvel", data=episode.qvel).attrs["names"] = list(STATE_NAMES)
        images = obs.create_group("images")
        for cam, frames in episode.images.items():
            # One frame per chunk, as ALOHA's recorder does, so readers can stream frames.
            images.create_dataset(cam, data=frames, chunks=(1, *frames.shape[1:]))
        f.create_dataset("action", data=episode.action).attrs["names"] = list(STATE_NAMES)
        f.create_dataset("intervention", data=episode.intervention)
        f.attrs["operator"] = episode.operator
        if episode.mistake.size:
            truth = f.create_group("ground_truth")
            truth.create_dataset("mistake", data=episode.mistake).attrs["names"] = list(MISTAKES)


def _record(
    task: TaskSpec | str,
    episodes: int,
    seed: int,
    raw_dir: Path,
    policy_fn: PolicyFn | None,
    rule: InterventionRule | None,
    replan_steps: int,
    overwrite: bool,
    progress: ProgressFn | None,
    first_index: int,
    operators: OperatorMix | None = None,
) -> CollectResult:
    spec = get_task(task)
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    successes = frames = flagged = takeovers = 0
    with atomic_output_dir(Path(raw_dir), overwrite) as tmp:
        for k in range(first_index, first_index + episodes):
            # The operator of demo k comes from a generator of its own: demo k is the same scene
            # whatever the mix, and the mix's draw the same whatever the scene.
            operator = operators.pick(np.random.default_rng([seed, k, 2])) if operators is not None else None
            episode = run_episode(spec, seed, k, policy_fn, rule=rule, replan_steps=replan_steps, operator=operator)
            write_episode_hdf5(tmp / episode_filename(k), episode)
            successes += int(episode.success)
            frames += episode.length
            flagged += int(episode.intervention.sum())
            takeovers += episode.takeovers
            if progress is not None:
                progress(episode)
    return CollectResult(Path(raw_dir), spec.name, spec.fps, episodes, successes, frames, flagged, takeovers)


def collect_demos(
    task: TaskSpec | str,
    episodes: int,
    seed: int,
    raw_dir: Path,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    operators: OperatorMix | None = None,
) -> CollectResult:
    """Teleoperated demonstrations: every frame is flagged intervention=1 (a human acted).

    `operators` mixes careful, sloppy and hesitant operators (default: the careful expert only).
    """
    return _record(task, episodes, seed, raw_dir, None, None, 1, overwrite, progress, 0, operators)


def collect(
    policy_fn: PolicyFn,
    task: TaskSpec | str,
    episodes: int,
    seed: int,
    raw_dir: Path,
    *,
    rule: InterventionRule | None = None,
    replan_steps: int = 5,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    first_index: int = 0,
) -> CollectResult:
    """Policy rollouts with expert takeovers (DAgger-style corrections).

    Use a different `seed` (or `first_index`) than the demos so rollouts start from new scenes.
    """
    return _record(
        task,
        episodes,
        seed,
        raw_dir,
        policy_fn,
        rule or InterventionRule(),
        replan_steps,
        overwrite,
        progress,
        first_index,
    )
