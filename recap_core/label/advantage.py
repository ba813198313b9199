"""N-step advantages from predicted values, vectorised over all episodes of a dataset.

For frame t of an episode with frames 0 .. T-1, lookahead N >= 1, dense rewards r
(`reward_label`) and predicted values V:

    j   = min(t + N, T - 1)                   the bootstrap frame
    A_t = sum_{k=t}^{j-1} r_k + V_j - V_t

While the lookahead fits inside the episode (t + N <= T - 1) this is the seed's
A_t = sum_{k<N} r_{t+k} + V_{t+N} - V_t. Past the end the sum stops and the bootstrap value is
the terminal frame's value V_{T-1}. The terminal reward r_{T-1} is *not* added on top of V_{T-1}:
a value predicts the return-to-go from its own frame, so V_{T-1} already stands for r_{T-1}, and
adding both would count a failure's terminal penalty twice (pistar's labelling script does add
both; with an exact value function our form has zero mean, theirs does not). Consequently the
last frame of every episode has A = 0.

`--lookahead episode` gives Monte Carlo advantages instead: the realised return-to-go minus the
prediction, A_t = sum_{k=t}^{T-1} r_k - V_t (no bootstrap: the episode's outcome itself, through
the dense rewards and the terminal reward or failure penalty).

Frames may arrive in any order; episodes are identified by `episode_index` and ordered by
`frame_index`. Values that were not predicted are NaN and give NaN advantages wherever they are
used, so nothing unpredicted can leak into a threshold unnoticed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from recap_core.errors import ConfigError, DatasetError

DEFAULT_LOOKAHEAD = 50
EPISODE = "episode"
"""`--lookahead episode`: Monte Carlo advantages (the return-to-go to the episode's end)."""
Lookahead = int | Literal["episode"]


def check_lookahead(lookahead: int | str) -> Lookahead:
    """Validate `--lookahead`: a positive number of frames, or "episode" (Monte Carlo)."""
    if lookahead == EPISODE:
        return EPISODE
    try:
        n = int(lookahead)
        whole = n == float(lookahead)
    except (TypeError, ValueError):
        n, whole = 0, False
    if not whole or n < 1:
        raise ConfigError(
            f"--lookahead {lookahead} is not a positive whole number of frames, nor 'episode'",
            fix=f"pass --lookahead N with N >= 1 (default {DEFAULT_LOOKAHEAD}), or --lookahead episode (Monte Carlo)",
        )
    return n


def episode_order(episode_index: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
    """Permutation that sorts frames by (episode, frame); validates that frames are 0..T-1 per episode."""
    order = np.lexsort((frame_index, episode_index))
    ep = episode_index[order]
    fr = frame_index[order]
    starts = np.r_[True, ep[1:] != ep[:-1]] if ep.size else np.zeros(0, dtype=bool)
    start_pos = np.flatnonzero(starts)
    # Position of each frame inside its episode, from the sorted layout.
    within = np.arange(ep.size) - np.repeat(start_pos, np.diff(np.r_[start_pos, ep.size]))
    if not np.array_equal(fr, within):
        bad = int(ep[np.flatnonzero(fr != within)[0]])
        raise DatasetError(
            f"episode {bad}: frame_index is not 0, 1, ..., T-1 (missing or repeated frames)",
            fix="re-convert the dataset; each episode must hold every frame exactly once",
        )
    return order


def episode_groups(episode_index: np.ndarray, frame_index: np.ndarray) -> list[np.ndarray]:
    """The rows of each episode in frame order, episodes ascending (validated as episode_order)."""
    order = episode_order(episode_index, frame_index)
    episodes = episode_index[order]
    starts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
    return np.split(order, starts[1:])


def episode_bounds(sorted_episode_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For frames sorted by episode: each frame's episode start and end (exclusive) position."""
    n = sorted_episode_index.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    is_start = np.r_[True, sorted_episode_index[1:] != sorted_episode_index[:-1]]
    start_pos = np.flatnonzero(is_start)
    end_pos = np.r_[start_pos[1:], n]
    lengths = end_pos - start_pos
    return np.repeat(start_pos, lengths), np.repeat(end_pos, lengths)


def n_step_advantage(
    values: np.ndarray,
    rewards: np.ndarray,
    episode_index: np.ndarray,
    frame_index: np.ndarray,
    lookahead: Lookahead = DEFAULT_LOOKAHEAD,
) -> np.ndarray:
    """A_t for every frame (see the module docstring), float32, in the input order.

    All arrays are per frame, of equal length. Runs in O(frames) with one cumulative sum, so a
    million frames take well under a second.
    """
    lookahead = check_lookahead(lookahead)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    episode_index = np.asarray(episode_index).reshape(-1)
    frame_index = np.asarray(frame_index).reshape(-1)
    n = values.size
    if not (rewards.size == episode_index.size == frame_index.size == n):
        raise ValueError("values, rewards, episode_index and frame_index must have one entry per frame")
    order = episode_order(episode_index, frame_index)
    v = values[order]
    r = rewards[order]
    _, end = episode_bounds(episode_index[order])
    pos = np.arange(n)
    # Float64 prefix sums keep the window sums exact enough on very long datasets.
    prefix = np.r_[0.0, np.cumsum(r)]
    if lookahead == EPISODE:
        adv_sorted = prefix[end] - prefix[pos] - v
    else:
        boot = np.minimum(pos + lookahead, end - 1)
        adv_sorted = prefix[boot] - prefix[pos] + v[boot] - v
    adv = np.empty(n, dtype=np.float32)
    adv[order] = adv_sorted
    return adv


def bootstrap_rows(
    episode_index: np.ndarray, frame_index: np.ndarray, lookahead: Lookahead = DEFAULT_LOOKAHEAD
) -> np.ndarray:
    """For every frame, the (input-order) row whose value bootstraps its advantage (Monte Carlo:
    the frame itself, whose value is the only one its advantage needs)."""
    lookahead = check_lookahead(lookahead)
    episode_index = np.asarray(episode_index).reshape(-1)
    frame_index = np.asarray(frame_index).reshape(-1)
    if lookahead == EPISODE:
        episode_order(episode_index, frame_index)  # validated like the N-step case
        return np.arange(episode_index.size, dtype=np.int64)
    order = episode_order(episode_index, frame_index)
    _, end = episode_bounds(episode_index[order])
    pos = np.arange(order.size)
    boot_sorted = np.minimum(pos + lookahead, end - 1)
    rows = np.empty(order.size, dtype=np.int64)
    rows[order] = order[boot_sorted]
    return rows
