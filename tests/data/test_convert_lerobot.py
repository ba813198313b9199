"""`recap convert lerobot`: add the RECAP columns to an existing v3.0 / v2.1 dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recap_core.data import schema
from recap_core.data.convert_lerobot import convert_lerobot
from recap_core.data.dataset import new_dataset, open_dataset, read_columns, vector_feature, write_episode
from recap_core.data.source import read_source_record
from recap_core.data.versions import v30_to_v21
from recap_core.errors import DatasetError
from tests.data.conftest import recap, tree_digest


@pytest.fixture(scope="module")
def flagged_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No cameras; per-frame `next.success` and `human` columns; lengths 5, 3, 4."""
    root = tmp_path_factory.mktemp("flagged") / "ds"
    ds = new_dataset(root, fps=5, with_recap=False, features={
        "observation.state": vector_feature(2), "action": vector_feature(2),
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "human": {"dtype": "int64", "shape": (1,), "names": None},
    })
    for ep, (n, ok) in enumerate([(5, True), (3, False), (4, True)]):
        write_episode(ds, {
            "observation.state": np.zeros((n, 2)), "action": np.ones((n, 2)),
            "next.success": np.array([[ok and t == n - 1] for t in range(n)]),
            "human": np.array([[int(t < 2 and ep != 1)] for t in range(n)]),
        }, "stack" if ep != 2 else "unstack")
    ds.finalize()
    return root


def test_cli_all_demos_and_lerobot_reads_it(tiny_plain_dataset: Path, tmp_path: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    before = tree_digest(tiny_plain_dataset)
    out = tmp_path / "out"
    res = recap("convert", "lerobot", str(tiny_plain_dataset), str(out), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["success_rate"] == 1.0 and summary["intervention_fraction"] == 1.0
    assert tree_digest(tiny_plain_dataset) == before
    video = "videos/observation.images.cam_high/chunk-000/file-000.mp4"
    assert (out / video).read_bytes() == (tiny_plain_dataset / video).read_bytes()

    ds = LeRobotDataset("local/out", root=out, video_backend="pyav")
    item = ds[14]  # last frame of episode 0 (15 frames)
    assert item["adv_ind"] == "positive" and float(item["reward"]) == 1.0 and float(item["value_label"]) == 0.0
    assert float(ds[0]["value_label"]) == pytest.approx(-14 / 15)
    assert set(ds.meta.stats) >= {"value_label", "reward", "reward_label", "intervention"}
    assert ds.meta.stats["reward"]["max"][0] == 1.0


def test_success_and_intervention_columns(flagged_dataset: Path, tmp_path: Path) -> None:
    result = convert_lerobot(flagged_dataset, tmp_path / "out", success="next.success", intervention="human")
    assert result["success_rate"] == pytest.approx(2 / 3)
    how = {"success_rule": "column", "success_from": "next.success", "successful_episodes": 2, "failed_episodes": 1}
    assert {k: result[k] for k in how} == how
    assert read_source_record(tmp_path / "out") == {"converter": "lerobot", **how}
    cols = read_columns(open_dataset(tmp_path / "out"), list(schema.RECAP_COLUMNS))
    # Task "stack": episodes 0 (5 frames) and 1 (3 frames) -> T_max 5; "unstack": episode 2 -> T_max 4.
    want = schema.recap_labels([5, 3, 4], [True, False, True], [np.array([1, 1, 0, 0, 0]), np.zeros(3), np.array([1, 1, 0, 0])], ["s", "s", "u"])
    for ep in range(3):
        for name in schema.RECAP_COLUMNS:
            np.testing.assert_array_equal(cols[ep][name], getattr(want[ep], name), err_msg=f"{name} episode {ep}")


def test_success_file_json_and_csv(flagged_dataset: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "s.csv"
    csv_file.write_text("episode_index,success\n0,false\n1,true\n2,1\n")
    result = convert_lerobot(flagged_dataset, tmp_path / "a", success=str(csv_file), intervention="none")
    assert (result["success_rule"], result["success_from"], result["failed_episodes"]) == ("file", "s.csv", 1)
    cols = read_columns(open_dataset(tmp_path / "a"), ["reward", "adv_ind"])
    assert [cols[ep]["reward"][-1] for ep in range(3)] == [0.0, 1.0, 1.0]
    assert set(cols[0]["adv_ind"]) == {"none"}
    bad = tmp_path / "s.json"
    bad.write_text('{"0": true, "2": false}')
    with pytest.raises(DatasetError, match=r"s.json has no entry for episode\(s\) \[1\]"):
        convert_lerobot(flagged_dataset, tmp_path / "b", success=str(bad))
    assert not (tmp_path / "b").exists()


def test_v21_input(flagged_dataset: Path, tmp_path: Path) -> None:
    v30_to_v21(flagged_dataset, tmp_path / "v21")
    result = convert_lerobot(tmp_path / "v21", tmp_path / "out", success="next.success")
    assert result["input_version"] == "v2.1"
    info = open_dataset(tmp_path / "out")
    assert info.has_recap_columns and info.episodes == 3
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())


def test_cli_bad_inputs_exit_2(tiny_dataset: Path, tiny_plain_dataset: Path, tmp_path: Path) -> None:
    res = recap("convert", "lerobot", str(tiny_dataset), str(tmp_path / "a"))
    assert res.returncode == 2 and "already has RECAP column(s)" in res.stderr
    res = recap("convert", "lerobot", str(tiny_plain_dataset), str(tmp_path / "b"), "--success", "next.done")
    assert res.returncode == 2 and "--success 'next.done' is neither" in res.stderr
    res = recap("convert", "lerobot", str(tiny_plain_dataset), str(tmp_path / "c"), "--intervention", "observation.state")
    assert res.returncode == 2 and "holds values other than 0/1" in res.stderr
    assert not any(tmp_path.iterdir())
