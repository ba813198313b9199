"""Synthetic datasets are real LeRobot v3.0 datasets that lerobot opens, with our RECAP labels."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from recap_core.data import schema
from recap_core.data.synthetic import make_aloha_hdf5, make_dataset


def test_lerobot_opens_synthetic_dataset_and_returns_recap_columns(tiny_dataset: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/tiny", root=tiny_dataset, video_backend="pyav")
    assert ds.meta.total_episodes == 3 and len(ds) == 60
    assert set(ds.meta.video_keys) == {"observation.images.cam_high", "observation.images.cam_left_wrist"}
    item = ds[19]  # last frame of episode 0: a successful demonstration
    assert item["observation.images.cam_high"].shape == (3, 32, 32)
    assert item["observation.state"].shape == (14,)
    assert item["adv_ind"] == "positive"
    assert int(item["intervention"]) == 1
    assert float(item["reward"]) == 1.0 and float(item["value_label"]) == 0.0
    last = ds[59]  # last frame of the last episode: failed by default
    assert float(last["reward"]) == 0.0 and float(last["value_label"]) == -1.0
    assert ds[40]["adv_ind"] == "none"


def test_labels_match_schema_formulas(tiny_dataset_two_tasks: Path) -> None:
    from recap_core.data.dataset import open_dataset, read_columns

    info = open_dataset(tiny_dataset_two_tasks)
    assert info.tasks == ("pick up the cube", "open the drawer")
    assert (info.state_dim, info.action_dim, info.cameras) == (6, 7, ("cam_high",))
    cols = read_columns(info, list(schema.RECAP_COLUMNS))
    lengths = [12, 16, 8, 10]
    # Tasks alternate: T_max(cube) = max(12, 8) = 12, T_max(drawer) = max(16, 10) = 16.
    want = schema.recap_labels(lengths, [True, True, True, False], None, ["c", "d", "c", "d"])
    for ep in range(4):
        assert len(cols[ep]["value_label"]) == lengths[ep]
        np.testing.assert_allclose(cols[ep]["value_label"], want[ep].value_label, rtol=1e-6)
    np.testing.assert_allclose(cols[2]["value_label"][0], -7 / 12, rtol=1e-6)


def test_make_aloha_hdf5_layout(tiny_aloha_raw: Path) -> None:
    files = sorted(tiny_aloha_raw.glob("episode_*.hdf5"))
    assert [f.name for f in files] == ["episode_0.hdf5", "episode_1.hdf5"]
    with h5py.File(files[1]) as f:
        assert f["/observations/qpos"].shape == (12, 14)
        assert f["/observations/qvel"].shape == (12, 14)
        assert f["/observations/images/cam_high"].dtype == np.uint8
        assert f["/observations/images/cam_left_wrist"].shape == (12, 32, 32, 3)
        assert f["/action"].shape == (12, 14)
        assert f["/intervention"][:].sum() == 4  # odd episode: a correction over the middle third
        assert not bool(f.attrs["success"])


def test_deterministic(tmp_path: Path) -> None:
    a = make_aloha_hdf5(tmp_path / "a", episodes=1, frames=4, tasks=["t"], with_qvel=False)
    b = make_aloha_hdf5(tmp_path / "b", episodes=1, frames=4, tasks=["t"], with_qvel=False)
    with h5py.File(a / "episode_0.hdf5") as fa, h5py.File(b / "episode_0.hdf5") as fb:
        np.testing.assert_array_equal(fa["/observations/images/cam_high"][:], fb["/observations/images/cam_high"][:])
        assert "qvel" not in fa["observations"] and fa.attrs["task"] == "t"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="success has 1 entries for 2 episodes"):
        make_dataset(tmp_path / "x", episodes=2, frames=5, success=[True])
