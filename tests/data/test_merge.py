"""`recap data merge`: re-indexing, every feature kept, stats vs numpy, mismatches name both sides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recap_core.data.dataset import column_array, open_dataset, read_table
from recap_core.data.merge import merge_datasets
from recap_core.data.synthetic import make_dataset
from recap_core.errors import DatasetError
from tests.data.conftest import recap, tree_digest


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("merge")
    a = make_dataset(base / "a", episodes=2, frames=6, cameras=("cam_high",), tasks=("pick",), state_dim=3, action_dim=3)
    b = make_dataset(base / "b", episodes=3, frames=[4, 5, 7], cameras=("cam_high",), tasks=("place", "pick"),
                     state_dim=3, action_dim=3, seed=1)
    return a, b


def test_cli_merge_matches_numpy(sources: tuple[Path, Path], tmp_path: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    a, b = sources
    before = (tree_digest(a), tree_digest(b))
    out = tmp_path / "merged"
    res = recap("data", "merge", str(a), str(b), "--output", str(out), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["episodes"], summary["frames"], summary["tasks"]) == (5, 28, ["pick", "place"])
    assert (tree_digest(a), tree_digest(b)) == before

    ia, ib, im = open_dataset(a), open_dataset(b), open_dataset(out)
    assert set(im.features) == set(ia.features)  # every feature kept, not just five
    ta, tb, tm = read_table(ia), read_table(ib), read_table(im)
    for name in ("observation.state", "action", "intervention", "reward", "reward_label", "value_label", "adv_ind", "frame_index"):
        want = np.concatenate([column_array(ta, name), column_array(tb, name)])
        np.testing.assert_array_equal(column_array(tm, name), want, err_msg=name)
    np.testing.assert_array_equal(column_array(tm, "index"), np.arange(28))
    np.testing.assert_array_equal(column_array(tm, "episode_index"), np.repeat(np.arange(5), [6, 6, 4, 5, 7]))
    # b's task "pick" (its index 1) maps to merged index 0; "place" becomes 1.
    np.testing.assert_array_equal(column_array(tm, "task_index"), np.repeat([0, 0, 1, 0, 1], [6, 6, 4, 5, 7]))

    state = column_array(tm, "observation.state")
    stats = json.loads((out / "meta/stats.json").read_text())["observation.state"]
    np.testing.assert_allclose(stats["mean"], state.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["std"], state.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["min"], state.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["max"], state.max(0), rtol=1e-6)

    ds = LeRobotDataset("local/m", root=out, video_backend="pyav")
    item = ds[12 + 4 + 2]  # episode 3 (b's episode 1), frame 2
    assert int(item["episode_index"]) == 3 and item["task"] == "pick"
    src = LeRobotDataset("local/b", root=b, video_backend="pyav")[4 + 2]
    np.testing.assert_array_equal(item["observation.images.cam_high"].numpy(), src["observation.images.cam_high"].numpy())
    assert item["adv_ind"] == src["adv_ind"]


def test_mismatches_name_both_sides(sources: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = sources
    other_dim = make_dataset(tmp_path / "c", episodes=1, frames=3, cameras=("cam_high",), state_dim=4, action_dim=3)
    with pytest.raises(DatasetError, match=r"feature 'observation.state' differs in shape: \[3\] in .* vs \[4\] in") as exc:
        merge_datasets([a, other_dim], tmp_path / "out")
    assert str(a) in exc.value.message and str(other_dim) in exc.value.message
    other_cam = make_dataset(tmp_path / "d", episodes=1, frames=3, cameras=("cam_low",), state_dim=3, action_dim=3)
    with pytest.raises(DatasetError, match=r"only in the first: \['observation.images.cam_high'\]"):
        merge_datasets([a, other_cam], tmp_path / "out")
    other_fps = make_dataset(tmp_path / "e", episodes=1, frames=3, cameras=("cam_high",), state_dim=3, action_dim=3, fps=20)
    with pytest.raises(DatasetError, match=r"differ in fps: 10 vs 20"):
        merge_datasets([a, other_fps], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_bad_inputs_exit_2(sources: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = sources
    res = recap("data", "merge", str(a), "--output", str(tmp_path / "o"))
    assert res.returncode == 2 and "at least two datasets" in res.stderr
    res = recap("data", "merge", str(a), str(tmp_path), "--output", str(tmp_path / "o"))
    assert res.returncode == 2 and "not a LeRobot dataset" in res.stderr
    assert not (tmp_path / "o").exists()
