"""Closed-loop evaluation on the toy task: success rate with a Wilson 95% interval.

The policy acts alone (no expert takeovers). Episode k of seed s is the same scene for every
policy, so two policies evaluated with the same seed face the same initial conditions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recap_core.fsutil import atomic_output_dir
from recap_core.sim.operators import MISTAKES
from recap_core.sim.rollout import MILESTONES, Episode, PolicyFn, run_episode
from recap_core.sim.task import TaskSpec, get_task

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
VIDEO_SCALE = 4  # head-camera frames are tiny; upscale (nearest) so a person can see them


@dataclasses.dataclass(frozen=True)
class EpisodeOutcome:
    index: int
    variant: str
    success: bool
    length: int
    milestones: tuple[str, ...] = ()
    mistakes: tuple[str, ...] = ()  # the operators.MISTAKES kinds the policy made in this episode


@dataclasses.dataclass(frozen=True)
class EvalResult:
    task: str
    policy: str
    seed: int
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    # Throughput, as the paper reports it: successes per 1,000 environment steps (an episode ends at
    # success or at the time limit), and the mean length of the successful episodes.
    successes_per_1000_steps: float
    mean_steps_to_success: float | None
    mistake_rates: dict[str, float]  # share of episodes with at least one frame of each mistake kind
    milestone_rates: dict[str, float]  # share of episodes reaching each of rollout.MILESTONES
    by_variant: dict[str, dict[str, float]]
    outcomes: list[EpisodeOutcome]
    videos: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; stays inside [0, 1] and is sane at 0 or n."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # Exact at the edges (0 or n successes), where rounding would leave a 1e-17 residue.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    """Animated GIF of uint8 [T, H, W, 3] frames."""
    big = frames.repeat(VIDEO_SCALE, axis=1).repeat(VIDEO_SCALE, axis=2)
    images = [Image.fromarray(frame) for frame in big]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def evaluate(
    policy_fn: PolicyFn | None,
    task: TaskSpec | str,
    episodes: int,
    seed: int,
    *,
    replan_steps: int = 5,
    video_dir: Path | None = None,
    video_episodes: int = 3,
    overwrite: bool = False,
    policy_name: str = "policy",
    progress: Callable[[Episode], None] | None = None,
) -> EvalResult:
    """Run `episodes` closed-loop episodes; `policy_fn=None` evaluates the scripted expert.

    With `video_dir`, the head camera of the first `video_episodes` episodes is saved as
    `episode_<k>.gif` (the directory is written atomically; an existing one needs `overwrite`).
    """
    spec = get_task(task)
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    if policy_fn is None:
        policy_name = "expert"

    def play(video_frames: dict[int, np.ndarray]) -> list[EpisodeOutcome]:
        outcomes = []
        for k in range(episodes):
            filmed = k in video_frames
            episode = run_episode(spec, seed, k, policy_fn, replan_steps=replan_steps, record_images=filmed)
            if filmed:
                video_frames[k] = episode.images["cam_high"]
            made = tuple(MISTAKES[i] for i in sorted(set(episode.mistake.tolist())) if i)
            outcomes.append(EpisodeOutcome(k, episode.variant, episode.success, episode.length, episode.milestones, made))
            if progress is not None:
                progress(episode)
        return outcomes

    videos: list[str] = []
    if video_dir is None:
        outcomes = play({})
    else:
        with atomic_output_dir(Path(video_dir), overwrite) as tmp:
            frames: dict[int, np.ndarray] = dict.fromkeys(range(min(video_episodes, episodes)), np.empty(0))
            outcomes = play(frames)
            for k, clip in frames.items():
                write_gif(tmp / f"episode_{k}.gif", clip, spec.fps)
                videos.append(str(Path(video_dir) / f"episode_{k}.gif"))
    return summarize(spec.name, policy_name, seed, outcomes, videos)


def success_stats(outcomes: Sequence[Any]) -> dict[str, Any]:
    """episodes, successes, success_rate with its Wilson 95% interval (ci_low, ci_high) and
    mean_length of episodes with `.success` and `.length`: the toy task's and gymnasium's
    evaluations (`gym_env.summarize_gym`) report them alike."""
    successes = sum(o.success for o in outcomes)
    low, high = wilson_interval(successes, len(outcomes))
    return {"episodes": len(outcomes), "successes": successes, "success_rate": successes / len(outcomes),
            "ci_low": low, "ci_high": high, "mean_length": float(np.mean([o.length for o in outcomes]))}


def summarize(
    task: str, policy: str, seed: int, outcomes: list[EpisodeOutcome], videos: list[str]
) -> EvalResult:
    stats = success_stats(outcomes)
    successes = stats["successes"]
    by_variant: dict[str, dict[str, float]] = {}
    for name in sorted({o.variant for o in outcomes}):
        mine = [o for o in outcomes if o.variant == name]
        wins = sum(o.success for o in mine)
        by_variant[name] = {"episodes": len(mine), "successes": wins, "success_rate": wins / len(mine)}
    return EvalResult(
        task=task,
        policy=policy,
        seed=seed,
        **stats,
        successes_per_1000_steps=1000.0 * successes / max(sum(o.length for o in outcomes), 1),
        mean_steps_to_success=float(np.mean([o.length for o in outcomes if o.success])) if successes else None,
        mistake_rates={m: sum(m in o.mistakes for o in outcomes) / len(outcomes) for m in MISTAKES if m != "none"},
        milestone_rates={m: sum(m in o.milestones for o in outcomes) / len(outcomes) for m in MILESTONES},
        by_variant=by_variant,
        outcomes=outcomes,
        videos=videos,
    )
