"""The label audit replays rollouts in the sim and measures each autonomous action against the expert."""

from __future__ import annotations

import numpy as np
import pytest

from recap_core.errors import DatasetError
from recap_core.sim.audit import expert_deviation
from recap_core.sim.expert import ScriptedExpert
from recap_core.sim.rollout import InterventionRule, episode_rng, run_episode
from recap_core.sim.task import GRIPPER_INDICES, JOINT_INDICES, HandoverEnv, get_task

SEED, INDEX = 7, 2


def _hold_still(obs):
    """A policy that targets where the arms already are: it drifts from the expert at once."""
    return np.asarray(obs["state"], np.float32)[None]


@pytest.fixture(scope="module")
def episode():
    rule = InterventionRule(joint_threshold=0.05, drift_patience=3, takeover_steps=10)
    return run_episode(get_task("handover"), SEED, INDEX, _hold_still, rule=rule, record_images=False)


def test_deviation_is_measured_on_autonomous_frames_only(episode) -> None:
    assert episode.intervention.any() and not episode.intervention.all()  # both kinds of frame
    joints, gripper = expert_deviation("handover", SEED, INDEX, episode.qpos, episode.action, episode.intervention)
    auto = episode.intervention == 0
    assert np.isnan(joints[~auto]).all() and not gripper[~auto].any()
    assert np.isfinite(joints[auto]).all() and (joints[auto] >= 0).all()
    # Frame 0 is autonomous: the deviation is the hold-still target against the expert's first action.
    rng = episode_rng(SEED, INDEX)
    env = HandoverEnv(get_task("handover"), rng)
    wanted = ScriptedExpert.for_episode(rng).action(env)
    assert auto[0]
    assert joints[0] == pytest.approx(np.abs(env.qpos - wanted)[list(JOINT_INDICES)].max())
    assert gripper[0] == bool(np.any((env.qpos[list(GRIPPER_INDICES)] >= 0.5) != (wanted[list(GRIPPER_INDICES)] >= 0.5)))


def test_the_wrong_seed_does_not_replay(episode) -> None:
    with pytest.raises(DatasetError, match="does not replay") as err:
        expert_deviation("handover", SEED + 1, INDEX, episode.qpos, episode.action, episode.intervention)
    assert "seed and episode order" in err.value.fix


def test_actions_that_were_not_executed_do_not_replay(episode) -> None:
    actions = episode.action.copy()
    actions[5, 0] += 0.3
    with pytest.raises(DatasetError, match="frame 6"):
        expert_deviation("handover", SEED, INDEX, episode.qpos, actions, episode.intervention)
