"""`recap convert aloha-hdf5`: raw ALOHA HDF5 -> LeRobot v3.0 with RECAP columns, and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from recap_core.data import schema
from recap_core.data.convert_aloha import (
    ALOHA_NAMES,
    convert_aloha_hdf5,
    episode_successes,
    output_cameras,
    parse_camera_map,
    scan_episode,
)
from recap_core.data.dataset import column_array, open_dataset, read_columns, read_table
from recap_core.data.inspect import describe_dataset
from recap_core.data.synthetic import make_aloha_hdf5
from recap_core.errors import ConfigError, DatasetError, OutputExistsError
from tests.data.conftest import recap, tree_digest


def test_cli_converts_and_lerobot_reads_it(tiny_aloha_raw: Path, tmp_path: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    before = tree_digest(tiny_aloha_raw)
    out = tmp_path / "out"
    res = recap("convert", "aloha-hdf5", str(tiny_aloha_raw), str(out), "--fps", "10", "--task", "fold the towel", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["episodes"] == 2 and summary["frames"] == 24 and summary["success_rate"] == 0.5
    # Every file has the attribute: the `attr` rule, stated and recorded for `data inspect`.
    how = {"success_rule": "attr", "successful_episodes": 1, "failed_episodes": 1}
    assert {k: summary[k] for k in how} == how and summary["renamed_cameras"] == {}
    assert json.loads((out / "meta" / "recap_source.json").read_text()) == {"converter": "aloha-hdf5", **how}
    assert tree_digest(tiny_aloha_raw) == before
    assert [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())] == []  # no writer scratch left
    assert sorted(p.name for p in out.iterdir()) == ["data", "meta", "videos"]

    ds = LeRobotDataset("local/out", root=out, video_backend="pyav")
    assert ds.meta.robot_type == "aloha" and ds.fps == 10
    # 14-D without a names attribute: ALOHA's joint names, so --delta-actions can find the grippers.
    assert ds.meta.features["action"]["names"] == list(ALOHA_NAMES)
    assert ds.meta.features["observation.state"]["names"][6] == "left_gripper"
    assert set(ds.meta.video_keys) == {"observation.images.cam_high", "observation.images.cam_left_wrist"}
    with h5py.File(tiny_aloha_raw / "episode_1.hdf5") as f:
        qpos, qvel, img = f["/observations/qpos"][5], f["/observations/qvel"][5], f["/observations/images/cam_high"][5]
        flags = f["/intervention"][:]
    item = ds[12 + 5]
    np.testing.assert_allclose(item["observation.state"].numpy(), qpos, rtol=1e-6)
    np.testing.assert_allclose(item["observation.velocity"].numpy(), qvel, rtol=1e-6)
    decoded = (item["observation.images.cam_high"].numpy().transpose(1, 2, 0) * 255).astype(np.float32)
    assert np.abs(decoded - img).mean() < 12  # h264 at crf 30 on smooth 32x32 frames
    assert item["task"] == "fold the towel"
    assert item["adv_ind"] == ("positive" if flags[5] else "none")

    cols = read_columns(open_dataset(out), list(schema.RECAP_COLUMNS))
    want = schema.recap_labels([12, 12], [True, False], [np.ones(12), flags], ["t", "t"])
    for ep in (0, 1):
        np.testing.assert_allclose(cols[ep]["value_label"], want[ep].value_label, rtol=1e-6)
        np.testing.assert_array_equal(cols[ep]["intervention"], want[ep].intervention)
        np.testing.assert_array_equal(cols[ep]["adv_ind"], want[ep].adv_ind)


def test_task_attribute_penalty_and_no_qvel(tmp_path: Path) -> None:
    raw = make_aloha_hdf5(tmp_path / "raw", episodes=2, frames=[6, 4], cameras=("top",), tasks=[None, "open drawer"],
                          success=[True, False], with_qvel=False, intervention=[0, 0])
    out = convert_aloha_hdf5(raw, tmp_path / "out", fps=5, task="pick", failure_penalty=0.25)
    assert out["tasks"] == ["open drawer", "pick"] and out["intervention_fraction"] == 0
    info = open_dataset(tmp_path / "out")
    assert "observation.velocity" not in info.features and info.cameras == ("top",)
    cols = read_columns(info, ["reward_label", "value_label", "adv_ind"])
    # Episode 1 alone in its task: T_max 4, r = [-1/4]*3 + [-0.25] -> G_0 = -1.0.
    np.testing.assert_allclose(cols[1]["reward_label"], [-0.25, -0.25, -0.25, -0.25])
    np.testing.assert_allclose(cols[1]["value_label"], [-1.0, -0.75, -0.5, -0.25])
    assert set(cols[0]["adv_ind"]) == {"none"}


def test_existing_output_needs_overwrite(tiny_aloha_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        convert_aloha_hdf5(tiny_aloha_raw, out, fps=10, task="t")
    assert (out / "keep.txt").read_text() == "mine"


def _break(path: Path, fn) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda f: f["/observations/qpos"].__setitem__((3, 1), np.nan), r"episode_1.hdf5: /observations/qpos has NaN/inf"),
        (lambda f: f.__delitem__("/action"), r"episode_1.hdf5 has no /action dataset"),
        (lambda f: f.__delitem__("/observations/images/cam_left_wrist"), r"episode_1.hdf5 differs from episode_0.hdf5 in cameras"),
        (lambda f: f["/intervention"].__setitem__(0, 3), r"/intervention must hold 12 values of 0/1"),
        (lambda f: f["/action"].attrs.__setitem__("names", ["a", "b"]), r"/action has 14 dims but its names attribute lists 2"),
    ],
)
def test_bad_episode_is_named_and_nothing_written(tmp_path: Path, breaker, message: str) -> None:
    raw = make_aloha_hdf5(tmp_path / "raw", episodes=2, frames=12)
    _break(raw / "episode_1.hdf5", breaker)
    with pytest.raises(DatasetError, match=message):
        convert_aloha_hdf5(raw, tmp_path / "out", fps=10, task="t")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_names_attribute_becomes_the_feature_names(tmp_path: Path) -> None:
    raw = make_aloha_hdf5(tmp_path / "raw", episodes=2, frames=5, state_dim=3, action_dim=3)
    for k in (0, 1):
        with h5py.File(raw / f"episode_{k}.hdf5", "a") as f:
            f["/observations/qpos"].attrs["names"] = ["shoulder", "elbow", "gripper"]
            f["/action"].attrs["names"] = ["shoulder", "elbow", "gripper"]
    convert_aloha_hdf5(raw, tmp_path / "out", fps=10, task="t")
    features = open_dataset(tmp_path / "out").features
    assert features["action"]["names"] == ["shoulder", "elbow", "gripper"]
    assert features["observation.velocity"]["names"] == ["shoulder", "elbow", "gripper"]
    with h5py.File(raw / "episode_1.hdf5", "a") as f:
        f["/action"].attrs["names"] = ["j0", "j1", "gripper"]
    with pytest.raises(DatasetError, match=r"episode_1\.hdf5 differs from episode_0\.hdf5 in action names"):
        convert_aloha_hdf5(raw, tmp_path / "out2", fps=10, task="t")


def test_cli_bad_inputs_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = recap("convert", "aloha-hdf5", str(empty), str(tmp_path / "o"), "--fps", "10", "--task", "t")
    assert res.returncode == 2 and "holds no episode_<k>.hdf5 files" in res.stderr and "Traceback" not in res.stderr
    raw = make_aloha_hdf5(tmp_path / "raw", episodes=1, frames=3)
    (raw / "episode_1.hdf5").write_bytes(b"not hdf5")
    before = tree_digest(raw)
    res = recap("convert", "aloha-hdf5", str(raw), str(tmp_path / "o"), "--fps", "10", "--task", "t")
    assert res.returncode == 2 and "cannot be opened as HDF5" in res.stderr
    assert tree_digest(raw) == before and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- success rules, camera names


@pytest.fixture(scope="module")
def act_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ACT's recorder: no `success` attribute, a per-step /reward reaching 4, 3 and 4.5, camera `top`."""
    return make_aloha_hdf5(tmp_path_factory.mktemp("act") / "raw", episodes=3, frames=5, cameras=("top", "left_wrist"),
                           image_size=16, with_success_attr=False, reward=[4, 3, 4.5], intervention=[1, 0, 0])


def test_act_files_by_reward_with_a_renamed_camera(act_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = convert_aloha_hdf5(act_raw, out, fps=50, task="transfer the cube", success="reward",
                                 camera_map={"top": "cam_high"})
    how = {"success_rule": "reward", "success_reward": 4.0, "successful_episodes": 2, "failed_episodes": 1}
    assert {k: summary[k] for k in how} == how and summary["success_rate"] == pytest.approx(2 / 3)
    assert summary["cameras"] == ["left_wrist", "cam_high"] and summary["renamed_cameras"] == {"top": "cam_high"}
    info = open_dataset(out)
    assert set(info.video_keys) == {"observation.images.cam_high", "observation.images.left_wrist"}
    # The RECAP reward column keeps its definition (1 on a successful episode's last frame), not /reward.
    table = read_table(info, ["frame_index", "reward"])
    assert schema.episode_success(column_array(table, "episode_index"), column_array(table, "frame_index"),
                                  column_array(table, "reward")) == {0: True, 1: False, 2: True}
    assert sorted(np.unique(column_array(table, "reward")).tolist()) == [0.0, 1.0]
    record = {"converter": "aloha-hdf5", **how, "cameras": {"top": "cam_high"}}
    assert describe_dataset(out)["source"] == record
    with h5py.File(act_raw / "episode_0.hdf5") as f:
        top = f["/observations/images/top"][2]
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    frame = LeRobotDataset("local/out", root=out, video_backend="pyav")[2]["observation.images.cam_high"]
    assert np.abs((frame.numpy().transpose(1, 2, 0) * 255) - top).mean() < 12  # top's frames, under cam_high


def test_each_success_rule_on_the_same_files(act_raw: Path, tiny_aloha_raw: Path) -> None:
    act = [scan_episode(p, "t") for p in sorted(act_raw.glob("episode_*.hdf5"))]
    assert [e.success for e in act] == [None] * 3 and [e.max_reward for e in act] == [4.0, 3.0, 4.5]
    assert episode_successes(act, "all", None) == ("all", [True] * 3)
    assert episode_successes(act, "none", None) == ("none", [False] * 3)
    assert episode_successes(act, "reward", 3.0) == ("reward", [True] * 3)
    with pytest.raises(DatasetError, match=r"3 of 3 episode files have no root attribute 'success'") as err:
        episode_successes(act, None, None)
    assert "--success all|none|reward" in err.value.fix
    with pytest.raises(DatasetError, match=r"episode_0\.hdf5 has no root attribute 'success', which --success attr reads"):
        episode_successes(act, "attr", None)
    recorded = [scan_episode(p, "t") for p in sorted(tiny_aloha_raw.glob("episode_*.hdf5"))]
    assert episode_successes(recorded, None, None) == ("attr", [True, False])
    assert episode_successes(recorded, "none", None) == ("none", [False, False])  # the rule wins over the attribute
    with pytest.raises(DatasetError, match=r"episode_0\.hdf5 has no /reward dataset, which --success reward reads"):
        episode_successes(recorded, "reward", 4.0)
    with pytest.raises(DatasetError, match=r"1 of 3 episode files .*\(episode_0\.hdf5\)"):
        episode_successes([act[0], *recorded], None, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"success": "maybe"}, r"--success 'maybe' is not a rule"),
        ({"success_reward": 3.0}, r"--success-reward 3 is read only by --success reward"),
        ({"success": "attr", "success_reward": 3.0}, r"--success-reward 3 is read only by --success reward"),
        ({"success": "reward", "success_reward": float("nan")}, r"--success-reward nan is not a finite number"),
    ],
)
def test_bad_success_flags_stop_before_reading(kwargs: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        convert_aloha_hdf5(tmp_path / "no-such-raw", tmp_path / "out", fps=10, task="t", **kwargs)


def test_camera_map_parsing_and_its_refusals() -> None:
    assert parse_camera_map(["top=cam_high", " left = cam_left_wrist "]) == {"top": "cam_high", "left": "cam_left_wrist"}
    for spec in ("top", "=cam_high", "top="):
        with pytest.raises(ConfigError, match="is not SRC=DST"):
            parse_camera_map([spec])
    with pytest.raises(ConfigError, match=r"renames 'top' twice"):
        parse_camera_map(["top=cam_high", "top=cam_low"])
    found = ["top", "left_wrist"]
    assert output_cameras(found, None) == {"top": "top", "left_wrist": "left_wrist"}
    assert output_cameras(found, {"top": "cam_high"}) == {"top": "cam_high", "left_wrist": "left_wrist"}
    assert output_cameras(found, {"top": "left_wrist", "left_wrist": "top"}) == {"top": "left_wrist", "left_wrist": "top"}
    with pytest.raises(ConfigError, match=r"no camera 'front'; cameras found: top, left_wrist"):
        output_cameras(found, {"front": "cam_high"})
    with pytest.raises(ConfigError, match=r"cameras top, left_wrist the one name 'cam_high'"):
        output_cameras(found, {"top": "cam_high", "left_wrist": "cam_high"})
    with pytest.raises(ConfigError, match=r"cameras top, left_wrist the one name 'left_wrist'"):
        output_cameras(found, {"top": "left_wrist"})  # onto a camera that keeps its name
    with pytest.raises(ConfigError, match=r"'observation.images.cam_high' is not a camera name"):
        output_cameras(found, {"top": "observation.images.cam_high"})
