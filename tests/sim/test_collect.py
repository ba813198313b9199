"""Raw episodes are written exactly in the ALOHA/ACT HDF5 layout a robot operator records."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from recap_core.errors import OutputExistsError
from recap_core.sim.collect import collect, collect_demos
from recap_core.sim.rollout import InterventionRule
from recap_core.sim.task import ACTION_DIM, CAMERAS, STATE_DIM, get_task

TASK = get_task("handover")


def _layout(path):
    found = {}

    def visit(name, obj):  # returns None so h5py keeps walking
        if isinstance(obj, h5py.Dataset):
            found[name] = (obj.shape, obj.dtype)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        attrs = dict(f.attrs)
    return found, attrs


def test_demos_are_written_in_the_aloha_hdf5_layout(tmp_path):
    raw = tmp_path / "raw"
    result = collect_demos("handover", episodes=2, seed=0, raw_dir=raw)
    assert sorted(p.name for p in raw.iterdir()) == ["episode_0.hdf5", "episode_1.hdf5"]
    assert result.episodes == 2 and result.successes == 2 and result.fps == TASK.fps
    assert result.intervention_frames == result.frames
    datasets, attrs = _layout(raw / "episode_0.hdf5")
    t = datasets["action"][0][0]
    expected = {
        "observations/qpos": ((t, STATE_DIM), np.dtype("float32")),
        "observations/qvel": ((t, STATE_DIM), np.dtype("float32")),
        "action": ((t, ACTION_DIM), np.dtype("float32")),
        "intervention": ((t,), np.dtype("int64")),
        "ground_truth/mistake": ((t,), np.dtype("int8")),  # for checks only; the converter ignores it
        **{f"observations/images/{cam}": ((t, 48, 48, 3), np.dtype("uint8")) for cam in CAMERAS},
    }
    assert datasets == expected
    assert isinstance(attrs["success"], np.bool_ | bool) and bool(attrs["success"])
    assert attrs["task"] in TASK.prompts
    with h5py.File(raw / "episode_0.hdf5", "r") as f:
        assert np.all(f["intervention"][()] == 1)
        qpos, action = f["observations/qpos"][()], f["action"][()]
    # Actions are the expert's next joint positions (plus a little noise), as a leader arm's would be.
    assert np.max(np.abs(qpos[1:] - action[:-1])) < 0.1


def test_collect_flags_only_the_expert_frames_and_records_failures(tmp_path):
    raw = tmp_path / "rollouts"
    marker = 0.321

    def policy(obs):
        return np.full((8, ACTION_DIM), marker, np.float32)

    result = collect(policy, TASK, episodes=2, seed=3, raw_dir=raw, rule=InterventionRule())
    assert 0 < result.intervention_frames < result.frames and result.takeovers >= 2
    for k in range(2):
        with h5py.File(raw / f"episode_{k}.hdf5", "r") as f:
            flags, action = f["intervention"][()], f["action"][()]
            assert isinstance(bool(f.attrs["success"]), bool)
        np.testing.assert_array_equal(flags == 0, np.all(action == np.float32(marker), axis=1))


def test_collect_without_help_records_failed_autonomous_episodes(tmp_path):
    raw = tmp_path / "alone"
    result = collect(
        lambda obs: np.zeros((4, ACTION_DIM)),
        TASK,
        1,
        0,
        raw,
        rule=InterventionRule(stall_steps=10**6, drift_patience=10**6),
    )
    with h5py.File(raw / "episode_0.hdf5", "r") as f:
        assert not f.attrs["success"] and f["intervention"][()].sum() == 0
    assert result.successes == 0 and result.frames == TASK.max_steps


def test_existing_output_is_refused_and_left_untouched(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "keep.txt").write_text("operator data")
    with pytest.raises(OutputExistsError):
        collect_demos(TASK, 1, 0, raw)
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    collect_demos(TASK, 1, 0, raw, overwrite=True)
    assert [p.name for p in raw.iterdir()] == ["episode_0.hdf5"]


def test_a_failing_policy_leaves_no_partial_output(tmp_path):
    raw = tmp_path / "raw"
    calls = []

    def broken(obs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("policy server went away")
        return np.zeros((4, ACTION_DIM))

    with pytest.raises(RuntimeError):
        collect(broken, TASK, 3, 0, raw)
    assert not raw.exists() and list(tmp_path.iterdir()) == []
