"""Policy rollouts: chunk handling, the intervention flag, and expert takeovers."""

from __future__ import annotations

import numpy as np
import pytest

from recap_core.sim.rollout import InterventionRule, action_chunk, run_episode
from recap_core.sim.task import ACTION_DIM, CAMERAS, STATE_DIM, PolicyOutputError, get_task

TASK = get_task("handover")


class RecordingPolicy:
    """Returns chunks of a fixed, recognisable action and remembers what it was asked."""

    def __init__(self, make_chunk):
        self.make_chunk = make_chunk
        self.observations = []
        self.sent = []

    def __call__(self, obs):
        self.observations.append(obs)
        chunk = self.make_chunk(obs)
        self.sent.append(chunk)
        return chunk


def _zeros(obs):
    return np.zeros((8, ACTION_DIM), np.float32)


def test_policy_gets_an_aloha_style_request():
    policy = RecordingPolicy(_zeros)
    run_episode(TASK, 0, 0, policy, record_images=False)
    obs = policy.observations[0]
    assert set(obs) == {"state", "images", "prompt"}
    assert obs["state"].shape == (STATE_DIM,) and obs["state"].dtype == np.float32
    assert tuple(obs["images"]) == CAMERAS
    assert all(img.shape == (48, 48, 3) and img.dtype == np.uint8 for img in obs["images"].values())
    assert obs["prompt"] in TASK.prompts


def test_policy_is_asked_again_every_replan_steps():
    policy = RecordingPolicy(_zeros)
    episode = run_episode(TASK, 0, 0, policy, replan_steps=5, record_images=False)
    assert episode.length == TASK.max_steps
    assert len(policy.observations) == TASK.max_steps // 5


def test_without_a_rule_the_policy_acts_alone_and_nothing_is_flagged():
    episode = run_episode(TASK, 0, 0, RecordingPolicy(_zeros), record_images=False)
    assert not episode.success and episode.takeovers == 0
    assert episode.intervention.sum() == 0
    np.testing.assert_array_equal(episode.action, 0.0)


def test_intervention_flag_marks_exactly_the_expert_frames():
    """Autonomous frames carry the policy's own actions (flag 0); every other frame is the expert's."""
    marker = 0.123  # the policy always sends this distinctive action; the expert never does
    policy = RecordingPolicy(lambda obs: np.full((4, ACTION_DIM), marker, np.float32))
    episode = run_episode(TASK, 0, 1, policy, rule=InterventionRule(), record_images=False)
    policy_frames = np.all(episode.action == np.float32(marker), axis=1)
    np.testing.assert_array_equal(episode.intervention, (~policy_frames).astype(np.int64))
    assert episode.intervention.dtype == np.int64
    assert 0 < episode.intervention.sum() < episode.length
    assert episode.takeovers >= 1


def test_expert_only_episodes_are_fully_flagged_and_succeed():
    episode = run_episode(TASK, 0, 2)
    assert episode.success and episode.takeovers == 0
    np.testing.assert_array_equal(episode.intervention, 1)


@pytest.mark.parametrize("kind", ["zeros", "random", "frozen"])
def test_poor_policies_trigger_takeovers_and_fail_without_help(kind):
    rng = np.random.default_rng(0)
    policies = {
        "zeros": _zeros,
        "random": lambda obs: obs["state"] + rng.normal(0, 0.2, (8, ACTION_DIM)).astype(np.float32),
        "frozen": lambda obs: np.tile(obs["state"], (8, 1)),
    }
    policy = policies[kind]
    alone = [run_episode(TASK, 5, k, policy, record_images=False) for k in range(4)]
    helped = [run_episode(TASK, 5, k, policy, rule=InterventionRule(), record_images=False) for k in range(4)]
    assert sum(e.success for e in alone) == 0
    assert all(e.takeovers >= 1 for e in helped)
    assert sum(e.success for e in helped) > 0 or kind == "frozen"
    assert all(0 < e.intervention.mean() < 1 for e in helped)


def test_a_stalling_policy_is_taken_over_after_the_stall_window():
    rule = InterventionRule(stall_steps=10, takeover_steps=5)
    episode = run_episode(
        TASK, 0, 0, lambda obs: np.tile(obs["state"], (8, 1)), rule=rule, record_images=False
    )
    first = int(np.argmax(episode.intervention))
    assert first == rule.stall_steps
    assert episode.intervention[first : first + rule.takeover_steps].all()
    assert episode.intervention[first + rule.takeover_steps] == 0


def test_action_chunk_accepts_arrays_single_actions_and_openpi_responses():
    chunk = np.ones((3, ACTION_DIM))
    assert action_chunk(chunk).shape == (3, ACTION_DIM)
    assert action_chunk(np.ones(ACTION_DIM)).shape == (1, ACTION_DIM)
    assert action_chunk({"actions": chunk, "policy_timing": {}}).dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((3, 32)),
        np.ones((0, ACTION_DIM)),
        {"action": np.ones((3, ACTION_DIM))},
        "oops",
        np.full((2, 6), np.inf),
    ],
)
def test_bad_policy_outputs_are_user_errors(bad):
    with pytest.raises(PolicyOutputError) as info:
        run_episode(TASK, 0, 0, lambda obs: bad, record_images=False)
    assert info.value.fix


def test_dagger_rollouts_are_deterministic_for_a_seed():
    def policy(obs):  # deterministic, imperfect: lags behind and never closes a gripper fully
        target = obs["state"].copy()
        target[[2, 5]] = 0.6
        return np.tile(target, (6, 1))

    a = run_episode(TASK, 11, 0, policy, rule=InterventionRule())
    b = run_episode(TASK, 11, 0, policy, rule=InterventionRule())
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.intervention, b.intervention)
    np.testing.assert_array_equal(a.images["cam_high"], b.images["cam_high"])
    assert (a.success, a.takeovers) == (b.success, b.takeovers)


def test_simulation_without_rendering_is_fast():
    import time

    start = time.perf_counter()
    steps = sum(run_episode(TASK, 0, k, record_images=False).length for k in range(30))
    # ~10k steps/s on one core; a 20x margin keeps this stable on a loaded machine.
    assert steps / (time.perf_counter() - start) > 500
