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

import math
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


def check_failure_penalty(failure_penalty: float) -> float:
    """The failure penalty (`--failure-penalty`) as a float; NaN, inf and negative values are refused."""
    try:
        value = float(failure_penalty)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"--failure-penalty {failure_penalty!r} is not a number", fix="give a number, e.g. --failure-penalty 1") from exc
    if not math.isfinite(value):
        raise DatasetError(
            f"--failure-penalty {failure_penalty} is not a finite number; it would write NaN/inf reward and value labels",
            fix="give a finite, non-negative penalty in units of T_max steps, e.g. --failure-penalty 1 (the default)",
        )
    if value < 0:
        raise DatasetError(
            f"failure penalty {failure_penalty} is negative",
            fix="give the penalty as a positive number (it is subtracted at a failed terminal)",
        )
    return value


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
    failure_penalty = check_failure_penalty(failure_penalty)
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


# ---------------------------------------------------------------------------------------------
# Validation of stored column values (one place: `dataset.validate_dataset` calls it for every
# stage, `recap data merge` for each source and `recap data inspect` for its problems list).

# Slack for float32 round-off at the ends of value_label's [-1, 0].
VALUE_LABEL_TOLERANCE = 1e-6
_RELABEL_FIX = "recompute the labels: recap convert lerobot IN OUT --success ... (from the dataset without RECAP columns)"


def _first_bad(ok_rows: np.ndarray) -> int | None:
    bad = np.flatnonzero(~ok_rows)
    return int(bad[0]) if bad.size else None


def check_column_values(
    values: Mapping[str, np.ndarray],
    episode_index: np.ndarray,
    frame_index: np.ndarray,
    *,
    where: str,
    index: np.ndarray | None = None,
) -> None:
    """Raise a DatasetError at the first bad value, naming `where` (the dataset), the column, the
    episode and the frame; return None when every value is allowed.

    `values` maps column names to arrays with one row per frame ([N] or [N, D]), aligned with
    `episode_index` / `frame_index` (and the optional global `index`). Rules:
        intervention   0 or 1
        reward         finite
        reward_label   finite
        value_label    finite and within [-1, 0]
        adv_ind        one of "positive", "negative", "none"
        any other numeric column (observation.state, action, ...): finite
    Other non-numeric columns are not checked.
    """
    episode_index = np.asarray(episode_index).reshape(-1)
    frame_index = np.asarray(frame_index).reshape(-1)

    def at(row: int) -> str:
        text = f"episode {int(episode_index[row])}, frame {int(frame_index[row])}"
        return text + (f", global index {int(np.asarray(index).reshape(-1)[row])}" if index is not None else "")

    for name, raw in values.items():
        arr = np.asarray(raw)
        n = len(episode_index)
        if arr.shape[:1] != (n,):
            raise ValueError(f"column {name!r} has {arr.shape[:1]} rows; expected {n}")
        if name == ADV_IND:
            text = np.array([v if isinstance(v, str) else repr(v) for v in arr.reshape(-1)], dtype=object).reshape(n, -1)
            ok = np.isin(text, ADV_VALUES).all(axis=1)
            row = _first_bad(ok)
            if row is not None:
                unknown = sorted({str(v) for v in text[~ok].reshape(-1) if v not in ADV_VALUES})
                raise DatasetError(
                    f"{where}: column 'adv_ind' holds {unknown[:5]} (first at {at(row)}); expected only {list(ADV_VALUES)}",
                    fix="relabel with: recap value label, or recompute with: recap convert lerobot IN OUT",
                )
            continue
        if arr.dtype.kind not in "biuf":
            if name not in RECAP_FEATURES:
                continue  # strings and other non-numeric columns have no numeric rule
            try:  # a numeric RECAP column read as Python objects (e.g. with nulls)
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise DatasetError(
                    f"{where}: column {name!r} holds non-numeric values; expected {RECAP_FEATURES[name]['dtype']}",
                    fix=_RELABEL_FIX,
                ) from exc
        numbers = arr.astype(np.float64, copy=False).reshape(n, -1)
        finite = np.isfinite(numbers).all(axis=1)
        row = _first_bad(finite)
        if row is not None:
            raise DatasetError(
                f"{where}: column {name!r} has NaN/inf values (first at {at(row)}); expected finite numbers",
                fix=_RELABEL_FIX if name in RECAP_FEATURES else "fix or drop that episode in the source data and convert again",
            )
        if name == INTERVENTION:
            row = _first_bad(np.isin(numbers, (0, 1)).all(axis=1))
            if row is not None:
                unknown = sorted({float(v) for v in numbers.reshape(-1) if v not in (0, 1)})
                shown = [int(v) if v.is_integer() else v for v in unknown[:5]]
                raise DatasetError(
                    f"{where}: column 'intervention' holds {shown} (first at {at(row)}); expected only 0 or 1",
                    fix="store 1 on human frames and 0 on autonomous ones; " + _RELABEL_FIX,
                )
        elif name == VALUE_LABEL:
            inside = (numbers >= -1.0 - VALUE_LABEL_TOLERANCE) & (numbers <= VALUE_LABEL_TOLERANCE)
            row = _first_bad(inside.all(axis=1))
            if row is not None:
                value = float(numbers[row][~inside[row]][0])
                raise DatasetError(
                    f"{where}: column 'value_label' spans [{numbers.min():.4g}, {numbers.max():.4g}]; expected values in "
                    f"[-1, 0] (first outside at {at(row)}: {value:.4g})",
                    fix=_RELABEL_FIX,
                )
