"""Percentile binarisation: exact positive counts up to ties, intervention and skip invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recap_core.errors import ConfigError
from recap_core.label.threshold import binarise, positives_wanted


def test_positives_wanted_is_robust_to_float_noise():
    assert positives_wanted(10, 30) == 3
    assert positives_wanted(10, 100) == 10
    assert positives_wanted(10, 0.01) == 1
    assert positives_wanted(7, 50) == 4
    assert positives_wanted(0, 30) == 0


@settings(max_examples=60, deadline=None)
@given(
    n_eps=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    top=st.floats(min_value=0.5, max_value=100.0),
    per_task=st.booleans(),
    coarse=st.booleans(),
)
def test_positive_counts_and_invariants(n_eps, seed, top, per_task, coarse):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, n_eps)
    ep = np.repeat(np.arange(n_eps), lengths)
    n = ep.size
    task = np.repeat(rng.integers(0, 3, n_eps), lengths)
    # Some episodes are pure demos; others mix in interventions.
    demo = rng.random(n_eps) < 0.3
    interv = np.where(demo[ep], 1, (rng.random(n) < 0.2).astype(int))
    adv = rng.normal(size=n)
    if coarse:  # many ties
        adv = np.round(adv)
    out = binarise(adv, interv, ep, task, top_percent=top, per_task=per_task)

    assert set(out.adv_ind) <= {"positive", "negative"}
    assert (out.adv_ind[interv == 1] == "positive").all()
    assert out.skipped_episodes == [int(e) for e in np.arange(n_eps) if (interv[ep == e] == 1).all()]
    auto = interv == 0
    groups = [auto & (task == t) for t in np.unique(task[auto])] if per_task else [auto]
    for mask in [g for g in groups if g.any()]:
        k = math.ceil(round(mask.sum() * top / 100, 9))
        a = adv[mask]
        lab = out.adv_ind[mask]
        pos = int((lab == "positive").sum())
        kth = np.sort(a)[::-1][k - 1]
        # Exactly k positives, plus only frames tied with the k-th.
        assert pos == k + int((a == kth).sum() - (np.sort(a)[::-1][:k] == kth).sum())
        # Same advantage, same label; every positive beats every negative.
        if (lab == "negative").any():
            assert a[lab == "positive"].min() > a[lab == "negative"].max()
    assert out.positive_autonomous == int((out.adv_ind[auto] == "positive").sum())


def test_distinct_advantages_give_exact_count_and_threshold():
    adv = np.arange(10, dtype=float)
    out = binarise(adv, np.zeros(10, int), np.zeros(10, int), np.zeros(10, int), top_percent=30)
    assert list(out.adv_ind) == ["negative"] * 7 + ["positive"] * 3
    assert out.thresholds == {"all": 7.0}
    assert out.positive_fraction == pytest.approx(0.3)


def test_per_task_thresholds_are_separate():
    adv = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0])
    task = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = binarise(adv, np.zeros(8, int), np.arange(8) // 2, task, top_percent=50, per_task=True)
    assert out.thresholds == {"0": 2.0, "1": 12.0}
    assert list(out.adv_ind) == ["negative", "negative", "positive", "positive"] * 2
    glob = binarise(adv, np.zeros(8, int), np.arange(8) // 2, task, top_percent=50)
    assert list(glob.adv_ind) == ["negative"] * 4 + ["positive"] * 4


def test_demo_only_dataset_labels_everything_positive():
    out = binarise(np.full(4, np.nan), np.ones(4, int), np.array([0, 0, 1, 1]), np.zeros(4, int))
    assert list(out.adv_ind) == ["positive"] * 4
    assert out.skipped_episodes == [0, 1] and out.thresholds == {} and out.autonomous_frames == 0


@pytest.mark.parametrize("bad", [0, -1, 100.5, float("nan")])
def test_bad_top_percent(bad):
    with pytest.raises(ConfigError, match="--top-percent"):
        binarise(np.zeros(2), np.zeros(2, int), np.zeros(2, int), np.zeros(2, int), top_percent=bad)
