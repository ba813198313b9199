"""Scripted operators of different skill, and the ground truth the sim records about their mistakes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from recap_core.errors import ConfigError
from recap_core.sim.collect import collect, collect_demos
from recap_core.sim.expert import ScriptedExpert
from recap_core.sim.operators import MISTAKES, OPERATORS, OperatorMix, mistake_kind
from recap_core.sim.rollout import episode_rng, run_episode
from recap_core.sim.task import ACTION_DIM, GRIPPER_INDICES, HandoverEnv, get_task

TASK = get_task("handover-easy")
DROP, IDLE = MISTAKES.index("drop"), MISTAKES.index("idle")


def _play(operator: str, episodes: int = 24):
    return [run_episode(TASK, 3, k, record_images=False, operator=OPERATORS[operator]) for k in range(episodes)]


def test_careful_operator_is_the_expert_and_makes_no_mistake():
    for k in range(6):
        careful = run_episode(TASK, 3, k, record_images=False, operator=OPERATORS["careful"])
        expert = run_episode(TASK, 3, k, record_images=False)
        np.testing.assert_array_equal(careful.action, expert.action)
        assert careful.success and careful.operator == "careful"
        assert not careful.mistake.any()


def test_sloppy_operator_drops_the_cube_and_often_gives_up():
    played = _play("sloppy")
    dropped = [e for e in played if (e.mistake == DROP).any()]
    # 2/3 of the episodes drop (24 draws), 3/4 of those give up: the rates show within wide bounds.
    assert 8 <= len(dropped) <= 22
    assert all(e.success for e in played if e not in dropped)
    failed = [e for e in dropped if not e.success]
    assert failed and len(failed) < len(dropped) + 1
    for e in failed:  # a give-up: still until the time runs out, every still frame flagged idle
        first_drop = int(np.flatnonzero(e.mistake == DROP)[0])
        assert e.length == TASK.max_steps
        assert (e.mistake[first_drop + 2 :] == IDLE).mean() > 0.9
    # A dropped cube lies out of the other arm's reach: a recovery takes the source arm again.
    recovered = [e for e in dropped if e.success]
    careful_lengths = {k: run_episode(TASK, 3, k, record_images=False).length for k in range(24)}
    assert all(e.length > careful_lengths[e.index] for e in recovered)


def test_hesitant_operator_pauses_and_finishes_late():
    played = _play("hesitant", 12)
    for e in played:
        assert e.success
        idle = int((e.mistake == IDLE).sum())
        assert 15 <= idle <= 60, idle
        assert not (e.mistake == DROP).any()
        assert e.length >= run_episode(TASK, 3, e.index, record_images=False).length + idle - 2


def test_mistake_kind_is_read_from_the_scene_and_the_action():
    rng = episode_rng(0, 0)
    env = HandoverEnv(TASK, rng)
    expert = ScriptedExpert.for_episode(rng)
    assert mistake_kind(env, env.qpos.copy(), expert) == "idle"  # nothing moves, the expert would
    assert mistake_kind(env, expert.action(env), expert) == "none"
    while not env.holders or env.gripper(env.holders[0]) > 0.05:  # grasped and fully closed
        env.step(expert.action(env))
    opened = expert.action(env)
    opened[GRIPPER_INDICES[env.holders[0]]] = 1.0
    # From closed, one frame of "open" moves the gripper to 0.34: the cube is still held.
    assert mistake_kind(env, opened, expert) == "none"
    env.step(opened)
    assert env.holders and mistake_kind(env, opened, expert) == "drop"
    env.step(opened)
    assert not env.holders  # it did fall
    assert mistake_kind(env, expert.action(env), expert) == "none"


def test_a_policy_gets_the_same_ground_truth():
    still = run_episode(TASK, 0, 0, lambda obs: np.tile(obs["state"], (4, 1)), record_images=False)
    assert still.operator == "policy" and not still.success
    assert (still.mistake == IDLE).all()


def test_operator_mix_is_parsed_and_drawn_per_episode(tmp_path):
    mix = OperatorMix.parse("careful=0.5, sloppy=0.25,hesitant=0.25")
    assert mix.shares == (("careful", 0.5), ("sloppy", 0.25), ("hesitant", 0.25))
    assert OperatorMix.parse("sloppy").shares == (("sloppy", 1.0),)
    for bad in ("", "clumsy=1", "careful=x", "careful=-1", "careful=nan"):
        with pytest.raises(ConfigError):
            OperatorMix.parse(bad)
    raw = tmp_path / "raw"
    collect_demos(TASK, 12, 0, raw, operators=mix)
    seen = {}
    for k in range(12):
        with h5py.File(raw / f"episode_{k}.hdf5", "r") as f:
            seen[k] = str(f.attrs["operator"])
            mistake = f["ground_truth/mistake"][()]
            assert list(f["ground_truth/mistake"].attrs["names"]) == list(MISTAKES)
            assert mistake.shape == f["action"].shape[:1]
            if seen[k] == "careful":
                assert not mistake.any()
    assert set(seen.values()) <= set(OPERATORS) and len(set(seen.values())) >= 2
    # The same seed draws the same operators; the scenes do not depend on the mix.
    again = tmp_path / "again"
    collect_demos(TASK, 12, 0, again, operators=mix)
    for k in range(12):
        with h5py.File(again / f"episode_{k}.hdf5", "r") as f:
            assert str(f.attrs["operator"]) == seen[k]


def test_rollouts_record_ground_truth_and_the_converter_ignores_it(tmp_path):
    import pyarrow.parquet as pq

    from recap_core.data.convert_aloha import convert_aloha_hdf5

    raw = tmp_path / "rollouts"
    collect(lambda obs: np.tile(obs["state"], (4, 1)), TASK, 1, 0, raw)
    with h5py.File(raw / "episode_0.hdf5", "r") as f:
        assert f.attrs["operator"] == "policy"
        flags, mistake = f["intervention"][()], f["ground_truth/mistake"][()]
    assert (mistake[flags == 0] == IDLE).all()  # the policy stood still on its own frames
    assert not mistake[flags == 1].any()  # the expert's corrections are sound
    out = tmp_path / "ds"
    convert_aloha_hdf5(raw, out, fps=TASK.fps, task="x")
    columns = set(pq.read_table(next((out / "data").rglob("*.parquet"))).column_names)
    assert not any("mistake" in c or "ground_truth" in c or "operator" in c for c in columns)
    assert ACTION_DIM == 6
