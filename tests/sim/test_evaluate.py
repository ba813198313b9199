"""Closed-loop evaluation: interval math, outcomes, determinism and videos."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from recap_core.errors import OutputExistsError
from recap_core.sim.evaluate import evaluate, wilson_interval
from recap_core.sim.task import ACTION_DIM, get_task


def test_wilson_interval_matches_known_values():
    # 8/10 successes: the textbook Wilson 95% interval (e.g. statsmodels proportion_confint, method="wilson").
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # Closed forms at the edges: 0/n -> [0, z^2/(n+z^2)], n/n -> [n/(n+z^2), 1].
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    # Symmetry and shrinking with more trials.
    a, b = wilson_interval(3, 10)
    c, d = wilson_interval(7, 10)
    assert a == pytest.approx(1 - d) and b == pytest.approx(1 - c)
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] < d - c
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_expert_evaluation_succeeds_and_reports_per_variant():
    result = evaluate(None, "handover", episodes=8, seed=0)
    assert result.policy == "expert" and result.episodes == 8
    assert result.success_rate == result.successes / 8 >= 7 / 8
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(result.successes, 8))
    assert sum(v["episodes"] for v in result.by_variant.values()) == 8
    assert result.mean_length == pytest.approx(np.mean([o.length for o in result.outcomes]))
    assert not math.isnan(result.mean_length)
    # The expert always grasps with the source arm and hands over before it succeeds.
    assert result.milestone_rates == {"source_grasp": 1.0, "dest_holds": 1.0, "success": result.success_rate}
    assert all(o.milestones == ("source_grasp", "dest_holds", "success") for o in result.outcomes if o.success)


def test_a_zero_policy_fails_every_episode_at_the_time_limit():
    task = get_task("handover-left-to-right")
    result = evaluate(lambda obs: np.zeros((5, ACTION_DIM)), task, episodes=3, seed=1)
    assert result.successes == 0 and result.ci_low == 0.0
    assert result.mean_length == task.max_steps
    assert set(result.milestone_rates.values()) == {0.0}
    assert list(result.by_variant) == ["left_to_right"]


def test_same_seed_gives_the_same_scenes_and_outcomes():
    seen = {0: [], 1: []}

    def recorder(run):
        def policy(obs):
            seen[run].append(obs["images"]["cam_high"].copy())
            return np.tile(obs["state"], (5, 1))

        return policy

    a = evaluate(recorder(0), "handover", episodes=2, seed=4)
    b = evaluate(recorder(1), "handover", episodes=2, seed=4)
    assert a.outcomes == b.outcomes
    assert len(seen[0]) == len(seen[1]) and all(
        np.array_equal(x, y) for x, y in zip(seen[0], seen[1], strict=True)
    )


def test_video_writes_head_camera_gifs_and_refuses_to_overwrite(tmp_path):
    videos = tmp_path / "videos"
    result = evaluate(None, "handover", episodes=3, seed=0, video_dir=videos, video_episodes=2)
    assert sorted(p.name for p in videos.iterdir()) == ["episode_0.gif", "episode_1.gif"]
    assert result.videos == [str(videos / "episode_0.gif"), str(videos / "episode_1.gif")]
    with Image.open(videos / "episode_0.gif") as gif:
        assert gif.n_frames == result.outcomes[0].length
        assert gif.size == (48 * 4, 48 * 4)
    with pytest.raises(OutputExistsError):
        evaluate(None, "handover", episodes=1, seed=0, video_dir=videos)
