"""The five RECAP columns: their LeRobot feature specs and the label formulas.

Reference: "pi*0.6: a VLA That Learns From Experience" (Physical Intelligence, arXiv 2511.14759),
Sec. IV (value function, Eq. 5 reward) and Sec. V-B (advantage indicator).

Per episode of length T (frames t = 0 .. T-1) of task l, with T_max(l) the longest episode of
task l in the dataset (or a value given by the user):

    intervention_t  1 on human / demo / correction frames, 0 on autonomous frames (given)
    reward_t        sparse: 1 on the last frame (t = T-1) of a successful episode, else 0
    reward_label_t  dense, the paper's r_t = -1 per step normalised by T_max:
                      -1 / T_max               for t < T-1
                       0                       at t = T-1 of a successful episode
                      -failure_penalty         at t = T-1 of a failed episode (the paper's -C_fail / T_max)
    value_label_t   normalised return-to-go  G_t = sum_{k >= t} reward_label_k, clipped to [-1, 0].
                    A success gives G_t = -(T-1-t) / T_max in (-1, 0]; a failure with the default
                    failure_penalty = 1 has G_t <= -1 at every frame, so it is -1 throughout
                    ("failures clipped to -1"). This is the target of the 201-bin value model.
    adv_ind_t       "positive" | "negative" | "none". The initial label (before a value model exists,
                    the seed's Stage 3) is "positive" on intervention frames and "none" on autonomous
                    ones; `recap value label` later replaces "none" with positive / negative.

Encoding of `adv_ind`: a LeRobot `"string"` feature of shape (1,). lerobot 0.4.4 stores it as a
parquet string column, skips it in stats, and returns a Python `str` from `ds[i]`, so the values are
readable without a side table and pass straight into the pistar prompt ("Advantage: positive").
An int8 code with names would also round-trip, but its stats would be computed over codes and
`ds[i]` would return an int tensor, so every reader would need the code table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recap_core.errors import DatasetError

INTERVENTION = "intervention"
REWARD = "reward"
REWARD_LABEL = "reward_label"
VALUE_LABEL = "value_label"
ADV_IND = "adv_ind"

RECAP_COLUMNS: tuple[str, ...] = (INTERVENTION, REWARD, REWARD_LABEL, VALUE_LABEL, ADV_IND)

ADV_POSITIVE = "positive"
ADV_NEGATIVE = "negative"
ADV_NONE = "none"
ADV_VALUES: tuple[str, ...] = (ADV_POSITIVE, ADV_NEGATIVE, ADV_NONE)

# Feature specs exactly as passed to `LeRobotDataset.create(features=...)`.
RECAP_FEATURES: dict[str, dict] = {
    INTERVENTION: {"dtype": "int64", "shape": (1,), "names": None},
    REWARD: {"dtype": "float32", "shape": (1,), "names": None},
    REWARD_LABEL: {"dtype": "float32", "shape": (1,), "names": None},
    VALUE_LABEL: {"dtype": "float32", "shape": (1,), "names": None},
    ADV_IND: {"dtype": "string", "shape": (1,), "names": None},
}

# Default penalty (in units of T_max steps) at the terminal frame of a failed episode. With 1.0 a
# failed episode's return-to-go is <= -1 everywhere, so its value_label is -1 throughout.
DEFAULT_FAILURE_PENALTY = 1.0


@dataclass(frozen=True)
class EpisodeLabels:
    """The five RECAP columns of one episode, one entry per frame."""

    intervention: np.ndarray  # int64 [T]
    reward: np.ndarray  # float32 [T]
    reward_label: np.ndarray  # float32 [T]
    value_label: np.ndarray  # float32 [T]
    adv_ind: np.ndarray  # object (str) [T]

    def frame(self, t: int) -> dict:
        """Frame `t` in the form `LeRobotDataset.add_frame` wants (shape-(1,) arrays, a str)."""
        return {
            INTERVENTION: np.array([self.intervention[t]], dtype=np.int64),
            REWARD: np.array([self.reward[t]], dtype=np.float32),
            REWARD_LABEL: np.array([self.reward_label[t]], dtype=np.float32),
            VALUE_LABEL: np.array([self.value_label[t]], dtype=np.float32),
            ADV_IND: str(self.adv_ind[t]),
        }


def task_t_max(lengths: Sequence[int], task_ids: Sequence, t_max: int | Mapping | None = None) -> dict:
    """T_max per task: the longest episode of each task, unless given (one int, or per task)."""
    if len(lengths) != len(task_ids):
        raise ValueError(f"{len(lengths)} lengths but {len(task_ids)} task ids")
    longest: dict = {}
    for length, task in zip(lengths, task_ids, strict=True):
        longest[task] = max(longest.get(task, 0), int(length))
    if t_max is None:
        return longest
    given = {task: t_max for task in longest} if isinstance(t_max, int | np.integer) else dict(t_max)
    out = {}
    for task, longest_len in longest.items():
        if task not in given:
            raise DatasetError(
                f"no T_max given for task {task!r}",
                fix="give T_max for every task, one number for all tasks, or none to use the longest episode",
            )
        value = int(given[task])
        if value < longest_len:
            raise DatasetError(
                f"T_max {value} for task {task!r} is shorter than its longest episode ({longest_len} frames)",
                fix=f"use a T_max of at least {longest_len}, or leave it unset",
            )
        out[task] = value
    return out


def episode_success(episode_index: np.ndarray, frame_index: np.ndarray, reward: np.ndarray) -> dict[int, bool]:
    """Per episode (ascending): whether its last frame has reward > 0, this schema's success marker."""
    episode_index, frame_index, reward = (np.asarray(a).reshape(-1) for a in (episode_index, frame_index, reward))
    order = np.lexsort((frame_index, episode_index))
    ep = episode_index[order]
    last = np.r_[ep[1:] != ep[:-1], True] if ep.size else np.zeros(0, dtype=bool)
    return {int(e): bool(r > 0) for e, r in zip(ep[last], reward[order][last], strict=True)}


def episode_labels(
    length: int,
    success: bool,
    intervention: np.ndarray | None,
    t_max: int,
    failure_penalty: float = DEFAULT_FAILURE_PENALTY,
) -> EpisodeLabels:
    """The five RECAP columns of one episode (formulas in the module docstring)."""
    if length < 1:
        raise DatasetError("an episode has no frames", fix="drop empty episodes before converting")
    if t_max < length:
        raise ValueError(f"t_max {t_max} < episode length {length}")
    if failure_penalty < 0:
        raise DatasetError(
            f"failure penalty {failure_penalty} is negative",
            fix="give the penalty as a positive number (it is subtracted at a failed terminal)",
        )
    if intervention is None:
        interv = np.zeros(length, dtype=np.int64)
    else:
        interv = np.asarray(intervention).reshape(-1).astype(np.int64)
        if interv.shape[0] != length:
            raise DatasetError(
                f"intervention has {interv.shape[0]} entries for an episode of {length} frames",
                fix="give one intervention flag per frame",
            )
        if not np.isin(interv, (0, 1)).all():
            raise DatasetError("intervention must be 0 or 1 on every frame", fix="store 1 for human frames, 0 otherwise")

    reward = np.zeros(length, dtype=np.float32)
    reward_label = np.full(length, -1.0 / t_max, dtype=np.float64)
    if success:
        reward[-1] = 1.0
        reward_label[-1] = 0.0
    else:
        reward_label[-1] = -float(failure_penalty)
    # Return-to-go: reverse cumulative sum, in float64 so long episodes do not drift.
    return_to_go = np.cumsum(reward_label[::-1])[::-1]
    value_label = np.clip(return_to_go, -1.0, 0.0)
    adv_ind = np.where(interv == 1, ADV_POSITIVE, ADV_NONE).astype(object)
    return EpisodeLabels(
        intervention=interv,
        reward=reward,
        reward_label=reward_label.astype(np.float32),
        value_label=value_label.astype(np.float32),
        adv_ind=adv_ind,
    )


def recap_labels(
    lengths: Sequence[int],
    successes: Sequence[bool],
    interventions: Sequence[np.ndarray | None] | None,
    task_ids: Sequence,
    t_max: int | Mapping | None = None,
    failure_penalty: float = DEFAULT_FAILURE_PENALTY,
) -> list[EpisodeLabels]:
    """The RECAP columns of every episode of a dataset, with T_max taken per task."""
    n = len(lengths)
    if len(successes) != n or len(task_ids) != n or (interventions is not None and len(interventions) != n):
        raise ValueError("lengths, successes, interventions and task_ids must have one entry per episode")
    per_task = task_t_max(lengths, task_ids, t_max)
    return [
        episode_labels(
            int(lengths[i]),
            bool(successes[i]),
            None if interventions is None else interventions[i],
            per_task[task_ids[i]],
            failure_penalty,
        )
        for i in range(n)
    ]
