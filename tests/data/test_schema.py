"""RECAP label formulas against hand-computed episodes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recap_core.data import schema
from recap_core.errors import DatasetError


def test_successful_episode_by_hand() -> None:
    # T = 4, T_max = 4: r = [-1/4, -1/4, -1/4, 0]; G = [-3/4, -2/4, -1/4, 0].
    labels = schema.episode_labels(4, True, np.array([1, 0, 0, 0]), t_max=4)
    np.testing.assert_array_equal(labels.reward, [0, 0, 0, 1])
    np.testing.assert_allclose(labels.reward_label, [-0.25, -0.25, -0.25, 0.0])
    np.testing.assert_allclose(labels.value_label, [-0.75, -0.5, -0.25, 0.0])
    assert list(labels.adv_ind) == ["positive", "none", "none", "none"]
    assert labels.intervention.dtype == np.int64
    assert labels.value_label.dtype == np.float32


def test_failed_episode_is_clipped_to_minus_one() -> None:
    labels = schema.episode_labels(3, False, None, t_max=5)
    np.testing.assert_array_equal(labels.reward, [0, 0, 0])
    np.testing.assert_allclose(labels.reward_label, [-0.2, -0.2, -1.0])
    np.testing.assert_allclose(labels.value_label, [-1.0, -1.0, -1.0])
    assert list(labels.adv_ind) == ["none"] * 3


def test_small_failure_penalty_is_not_clipped() -> None:
    # T = 2, T_max = 10, penalty 0.3: G = [-0.1 - 0.3, -0.3].
    labels = schema.episode_labels(2, False, None, t_max=10, failure_penalty=0.3)
    np.testing.assert_allclose(labels.value_label, [-0.4, -0.3], rtol=1e-6)


def test_t_max_is_per_task_longest_episode() -> None:
    lengths = [3, 5, 2]
    tasks = ["a", "a", "b"]
    out = schema.recap_labels(lengths, [True, True, True], None, tasks)
    # Task a: T_max 5 -> the 3-frame episode starts at -2/5; task b: T_max 2 -> starts at -1/2.
    np.testing.assert_allclose(out[0].value_label, [-0.4, -0.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1].value_label[0], -0.8, rtol=1e-6)
    np.testing.assert_allclose(out[2].value_label, [-0.5, 0.0])


def test_given_t_max_and_bad_values() -> None:
    out = schema.recap_labels([2], [True], None, ["a"], t_max=10)
    np.testing.assert_allclose(out[0].reward_label, [-0.1, 0.0], rtol=1e-6)
    with pytest.raises(DatasetError, match="shorter than its longest"):
        schema.recap_labels([20], [True], None, ["a"], t_max=10)
    with pytest.raises(DatasetError, match="no T_max given for task 'b'"):
        schema.recap_labels([2, 2], [True, True], None, ["a", "b"], t_max={"a": 5})


def test_bad_intervention_values() -> None:
    with pytest.raises(DatasetError, match="0 or 1"):
        schema.episode_labels(3, True, np.array([0, 2, 0]), t_max=3)
    with pytest.raises(DatasetError, match="2 entries"):
        schema.episode_labels(3, True, np.array([0, 1]), t_max=3)


def test_frame_is_add_frame_ready() -> None:
    frame = schema.episode_labels(2, True, None, t_max=2).frame(1)
    assert set(frame) == set(schema.RECAP_COLUMNS)
    assert frame["reward"].shape == (1,) and frame["reward"].dtype == np.float32
    assert isinstance(frame["adv_ind"], str)


@pytest.mark.parametrize("length", [1, 7, 50])
def test_value_label_range_and_monotone(length: int) -> None:
    labels = schema.episode_labels(length, True, None, t_max=60)
    assert labels.value_label.min() >= -1 and labels.value_label.max() == 0
    assert np.all(np.diff(labels.value_label) > 0) or length == 1


@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_label_invariants(lengths: list[int], data: st.DataObject) -> None:
    n = len(lengths)
    successes = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    tasks = data.draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n))
    penalty = data.draw(st.floats(0.0, 3.0))
    out = schema.recap_labels(lengths, successes, None, tasks, failure_penalty=penalty)
    for labels, length, ok in zip(out, lengths, successes, strict=True):
        assert len(labels.value_label) == length
        assert labels.value_label.min() >= -1 and labels.value_label.max() <= 0
        # value_label is the clipped reverse cumulative sum of reward_label.
        rtg = np.cumsum(labels.reward_label[::-1].astype(np.float64))[::-1]
        np.testing.assert_allclose(labels.value_label, np.clip(rtg, -1, 0), atol=1e-5)
        assert labels.reward.sum() == (1.0 if ok else 0.0)
        if ok:
            assert labels.value_label[-1] == 0
