"""The toy task's geometry, dynamics, rendering and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from recap_core.sim.kinematics import forward, inverse
from recap_core.sim.render import render_cameras
from recap_core.sim.rollout import run_episode
from recap_core.sim.task import (
    ARMS,
    CAMERAS,
    MAX_JOINT_STEP,
    STATE_DIM,
    TASKS,
    VARIANTS,
    HandoverEnv,
    PolicyOutputError,
    UnknownTaskError,
    get_task,
    list_tasks,
)


@pytest.mark.parametrize("arm", ARMS)
def test_inverse_kinematics_reaches_points_in_the_workspace(arm):
    rng = np.random.default_rng(0)
    for _ in range(50):
        angle = rng.uniform(0.2, np.pi - 0.2)
        dist = rng.uniform(0.15, arm.reach - 0.02)
        target = np.asarray(arm.base) + dist * np.array([np.cos(angle), np.sin(angle)])
        _, tip = forward(arm, *inverse(arm, target))
        np.testing.assert_allclose(tip, target, atol=1e-9)


def test_inverse_kinematics_clamps_unreachable_targets_to_the_reach():
    arm = ARMS[0]
    _, tip = forward(arm, *inverse(arm, np.array([5.0, 0.5])))
    assert np.linalg.norm(tip - np.asarray(arm.base)) == pytest.approx(arm.reach, abs=2e-3)


def test_task_registry_lists_variants_with_distinct_prompts():
    names = [t.name for t in list_tasks()]
    assert names == list(TASKS)
    both = get_task("handover")
    assert len(set(both.prompts)) == 2
    for spec in list_tasks():
        assert set(spec.variants) <= set(VARIANTS)


def test_unknown_task_is_a_user_error_listing_the_names():
    with pytest.raises(UnknownTaskError) as info:
        get_task("stack-cubes")
    assert "stack-cubes" in info.value.message and "handover" in info.value.message
    assert info.value.fix


def test_cube_spawns_out_of_the_destination_arm_reach_and_target_out_of_the_source_reach():
    task = get_task("handover")
    for k in range(30):
        env = HandoverEnv(task, np.random.default_rng([3, k]))
        src, dst = env.variant.source_arm, env.variant.dest_arm
        assert np.linalg.norm(env.cube - np.asarray(ARMS[dst].base)) > ARMS[dst].reach
        assert np.linalg.norm(env.target - np.asarray(ARMS[src].base)) > ARMS[src].reach
        assert not env.done and env.holders == []


def test_joints_move_at_most_one_speed_limited_step_toward_the_target():
    env = HandoverEnv(get_task("handover"), np.random.default_rng(0))
    before = env.qpos.copy()
    env.step(before + 1.0)
    moved = env.qpos - before
    assert np.all(moved[[0, 1, 3, 4]] == pytest.approx(MAX_JOINT_STEP))
    assert env.t == 1
    np.testing.assert_allclose(env.qvel, moved * env.task.fps)


@pytest.mark.parametrize(
    "bad", [np.zeros(STATE_DIM + 1), np.zeros((2, STATE_DIM)), np.full(STATE_DIM, np.nan)]
)
def test_malformed_actions_raise_policy_output_error(bad):
    env = HandoverEnv(get_task("handover"), np.random.default_rng(0))
    with pytest.raises(PolicyOutputError) as info:
        env.step(bad)
    assert info.value.fix


def test_episode_times_out_at_the_limit():
    env = HandoverEnv(get_task("handover"), np.random.default_rng(0))
    while not env.done:
        env.step(env.qpos)
    assert env.t == env.task.max_steps and not env.success


def test_render_gives_every_camera_as_uint8_hwc_and_shows_the_cube():
    env = HandoverEnv(get_task("handover"), np.random.default_rng(1))
    images = render_cameras(env)
    assert tuple(images) == CAMERAS
    for image in images.values():
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    red = (images["cam_high"][..., 0] > 180) & (images["cam_high"][..., 1] < 80)
    assert red.sum() >= 4
    moved = HandoverEnv(get_task("handover"), np.random.default_rng(1))
    moved.cube = moved.cube + 0.2
    assert not np.array_equal(render_cameras(moved)["cam_high"], images["cam_high"])


def test_same_seed_same_episode_other_seed_other_episode():
    task = get_task("handover")
    a = run_episode(task, seed=7, index=2)
    b = run_episode(task, seed=7, index=2)
    c = run_episode(task, seed=8, index=2)
    np.testing.assert_array_equal(a.qpos, b.qpos)
    np.testing.assert_array_equal(a.action, b.action)
    for cam in CAMERAS:
        np.testing.assert_array_equal(a.images[cam], b.images[cam])
    assert a.qpos.shape != c.qpos.shape or not np.array_equal(a.qpos, c.qpos)
