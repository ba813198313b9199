"""Percentile binarisation of advantages into the `adv_ind` labels.

Rules (the seed's Stage 5, made exact):
- An episode whose every frame is an intervention (a demo) is skipped: nothing is predicted for it.
- Intervention frames are labelled "positive" everywhere.
- The autonomous frames of a group (all of them, or one task with `per_task`) are ranked by
  advantage. With n frames and top percent p, k = ceil(n * p / 100) frames should be positive; the
  threshold is the k-th largest advantage and a frame is positive iff its advantage >= threshold.
  So exactly k frames are positive unless other frames tie with the k-th one; tied frames always
  share a label (a frame's label depends on its advantage, never on its position). The threshold
  is the (100 - p) percentile of the group's advantages in the nearest-rank sense.
- Every other autonomous frame is "negative"; afterwards no autonomous frame is "none".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from recap_core.data.schema import ADV_NEGATIVE, ADV_POSITIVE
from recap_core.errors import ConfigError, DatasetError

DEFAULT_TOP_PERCENT = 30.0
ALL_TASKS = "all"


def check_top_percent(top_percent: float) -> float:
    """Validate `--top-percent` (0 < p <= 100)."""
    p = float(top_percent)
    if not (0.0 < p <= 100.0) or math.isnan(p):
        raise ConfigError(
            f"--top-percent {top_percent} is outside (0, 100]",
            fix="pass the share of autonomous frames to label positive, e.g. --top-percent 30",
        )
    return p


def positives_wanted(n: int, top_percent: float) -> int:
    """k = ceil(n * p / 100), computed so that e.g. 10 frames at 30% give 3, not 4 (float noise)."""
    if n == 0:
        return 0
    exact = round(n * top_percent / 100.0, 9)
    return min(n, max(1, math.ceil(exact)))


def kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest entry (1-based) of a non-empty array."""
    return float(np.partition(values, values.size - k)[values.size - k])


def skipped_episodes(intervention: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """Sorted indices of episodes in which every frame is an intervention."""
    episodes, inverse = np.unique(episode_index, return_inverse=True)
    autonomous_per_ep = np.bincount(inverse, weights=(intervention == 0), minlength=episodes.size)
    return episodes[autonomous_per_ep == 0]


@dataclass(frozen=True)
class Binarised:
    """The result of thresholding: labels plus what a report needs."""

    adv_ind: np.ndarray  # object (str) [frames]
    thresholds: dict[str, float]  # group ("all" or task index as str) -> threshold
    autonomous_frames: int
    positive_autonomous: int
    skipped_episodes: list[int] = field(default_factory=list)

    @property
    def positive_fraction(self) -> float:
        return self.positive_autonomous / self.autonomous_frames if self.autonomous_frames else 0.0


def binarise(
    advantage: np.ndarray,
    intervention: np.ndarray,
    episode_index: np.ndarray,
    task_index: np.ndarray,
    top_percent: float = DEFAULT_TOP_PERCENT,
    per_task: bool = False,
) -> Binarised:
    """Label every frame positive / negative from its advantage (rules in the module docstring)."""
    p = check_top_percent(top_percent)
    advantage = np.asarray(advantage, dtype=np.float64).reshape(-1)
    intervention = np.asarray(intervention).reshape(-1)
    episode_index = np.asarray(episode_index).reshape(-1)
    task_index = np.asarray(task_index).reshape(-1)
    autonomous = intervention == 0
    if np.isnan(advantage[autonomous]).any():
        row = int(np.flatnonzero(autonomous & np.isnan(advantage))[0])
        raise DatasetError(
            f"no advantage for autonomous frame at row {row} (episode {int(episode_index[row])}): "
            "its value or its bootstrap value was not predicted",
            fix="rerun `recap value label`; after --merge-shards, check that every shard finished",
        )
    labels = np.full(advantage.size, ADV_NEGATIVE, dtype=object)
    labels[~autonomous] = ADV_POSITIVE
    thresholds: dict[str, float] = {}
    if per_task:
        groups = [(str(int(t)), autonomous & (task_index == t)) for t in np.unique(task_index[autonomous])]
    else:
        groups = [(ALL_TASKS, autonomous)] if autonomous.any() else []
    for name, mask in groups:
        adv = advantage[mask]
        threshold = kth_largest(adv, positives_wanted(adv.size, p))
        thresholds[name] = threshold
        positive = mask & (advantage >= threshold)
        labels[positive] = ADV_POSITIVE
    return Binarised(
        adv_ind=labels,
        thresholds=thresholds,
        autonomous_frames=int(autonomous.sum()),
        positive_autonomous=int((autonomous & (labels == ADV_POSITIVE)).sum()),
        skipped_episodes=[int(e) for e in skipped_episodes(intervention, episode_index)],
    )
