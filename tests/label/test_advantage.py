"""N-step advantage math against a slow, obviously-correct per-frame loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recap_core.errors import ConfigError, DatasetError
from recap_core.label.advantage import bootstrap_rows, check_lookahead, n_step_advantage


def loop_reference(values, rewards, lengths, lookahead):
    """A_t = sum_{k=t}^{j-1} r_k + V_j - V_t with j = min(t + N, T - 1), one frame at a time."""
    out = []
    start = 0
    for T in lengths:
        v = values[start : start + T]
        r = rewards[start : start + T]
        for t in range(T):
            j = min(t + lookahead, T - 1)
            total = 0.0
            for k in range(t, j):
                total += float(r[k])
            out.append(total + float(v[j]) - float(v[t]))
        start += T
    return np.array(out)


episodes = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(lengths=episodes, lookahead=st.integers(min_value=1, max_value=60), seed=st.integers(0, 2**31 - 1))
def test_matches_loop_reference(lengths, lookahead, seed):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    values = rng.uniform(-1, 0, n)
    rewards = rng.uniform(-0.1, 0, n)
    ep = np.repeat(np.arange(len(lengths)) * 3 + 5, lengths)  # non-contiguous episode ids
    fr = np.concatenate([np.arange(t) for t in lengths])
    got = n_step_advantage(values, rewards, ep, fr, lookahead)
    want = loop_reference(values, rewards, lengths, lookahead)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(lengths=episodes, lookahead=st.integers(min_value=1, max_value=30), seed=st.integers(0, 2**31 - 1))
def test_frame_order_does_not_matter(lengths, lookahead, seed):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    values, rewards = rng.uniform(-1, 0, n), rng.uniform(-0.1, 0, n)
    ep = np.repeat(np.arange(len(lengths)), lengths)
    fr = np.concatenate([np.arange(t) for t in lengths])
    perm = rng.permutation(n)
    sorted_adv = n_step_advantage(values, rewards, ep, fr, lookahead)
    shuffled_adv = n_step_advantage(values[perm], rewards[perm], ep[perm], fr[perm], lookahead)
    np.testing.assert_array_equal(shuffled_adv, sorted_adv[perm])


def test_hand_computed_tail_uses_terminal_value_without_double_counting():
    # One episode of 4 frames, N = 2.
    v = np.array([-0.9, -0.6, -0.3, -1.0])
    r = np.array([-0.1, -0.2, -0.3, -1.0])
    adv = n_step_advantage(v, r, np.zeros(4, int), np.arange(4), lookahead=2)
    expected = [
        -0.1 - 0.2 + (-0.3) - (-0.9),  # j = 2
        -0.2 - 0.3 + (-1.0) - (-0.6),  # j = 3 = T-1
        -0.3 + (-1.0) - (-0.3),  # j = min(4, 3) = 3: the sum stops before the terminal frame
        0.0,  # the terminal frame bootstraps on itself
    ]
    np.testing.assert_allclose(adv, expected, atol=1e-6)


def test_exact_value_function_gives_zero_advantage():
    # V = return-to-go (unclipped) makes every advantage 0, including the tail: no double counting.
    r = np.array([-0.25, -0.25, -0.25, -1.0])
    v = np.cumsum(r[::-1])[::-1]
    adv = n_step_advantage(v, r, np.zeros(4, int), np.arange(4), lookahead=3)
    np.testing.assert_allclose(adv, 0.0, atol=1e-6)


def test_nan_values_propagate():
    v = np.array([-0.5, np.nan, -0.2])
    adv = n_step_advantage(v, np.zeros(3), np.zeros(3, int), np.arange(3), lookahead=1)
    assert np.isnan(adv[0]) and np.isnan(adv[1]) and adv[2] == 0.0


def test_bootstrap_rows():
    ep = np.array([1, 1, 1, 0, 0])
    fr = np.array([0, 1, 2, 0, 1])
    np.testing.assert_array_equal(bootstrap_rows(ep, fr, 2), [2, 2, 2, 4, 4])


def test_monte_carlo_advantage_is_the_return_to_go_minus_the_value():
    """`--lookahead episode`: A_t = sum_{k>=t} r_k - V_t, terminal reward included, no bootstrap."""
    ep = np.array([1, 1, 1, 0, 0])
    fr = np.array([2, 0, 1, 1, 0])  # any order
    r = np.array([0.5, -0.1, -0.2, -1.0, -0.3])
    v = np.array([0.4, -0.2, 0.1, -0.9, -1.0])
    want = np.array([0.5 - 0.4, (-0.1 - 0.2 + 0.5) + 0.2, (-0.2 + 0.5) - 0.1, -1.0 + 0.9, (-0.3 - 1.0) + 1.0])
    np.testing.assert_allclose(n_step_advantage(v, r, ep, fr, "episode"), want, atol=1e-6)
    # A lookahead that reaches past every end bootstraps on the last value instead (N-step's rule).
    assert not np.allclose(n_step_advantage(v, r, ep, fr, 10), want)
    np.testing.assert_array_equal(bootstrap_rows(ep, fr, "episode"), np.arange(5))  # needs its own value only
    assert check_lookahead("episode") == "episode" and check_lookahead("50") == 50


@pytest.mark.parametrize("bad", [0, -3, 1.5, "ten", "1.5", "episodes"])
def test_bad_lookahead(bad):
    with pytest.raises(ConfigError, match="--lookahead"):
        n_step_advantage(np.zeros(2), np.zeros(2), np.zeros(2, int), np.arange(2), bad)


def test_missing_frames_are_a_dataset_error():
    with pytest.raises(DatasetError, match="episode 7"):
        n_step_advantage(np.zeros(2), np.zeros(2), np.array([7, 7]), np.array([0, 2]), 3)
