"""v3.0 -> v2.1 -> v3.0 keeps every column (and, because videos are cut without re-encoding, every pixel)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from recap_core.data.dataset import column_array, open_dataset, read_table
from recap_core.data.versions import v21_to_v30, v30_to_v21
from tests.data.conftest import recap, tree_digest


@pytest.fixture(scope="module")
def round_trip(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    before = tree_digest(tiny_dataset)
    base = tmp_path_factory.mktemp("versions")
    v21 = base / "v21"
    res = recap("convert", "v30-to-v21", str(tiny_dataset), str(v21), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"] == "v2.1"
    back = v21_to_v30(v21, base / "v30")
    assert back["episodes"] == 3
    return v21, base / "v30", before


def test_v21_layout(round_trip: tuple[Path, Path, str]) -> None:
    v21, _, _ = round_trip
    info = json.loads((v21 / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_chunks"] == 1 and info["total_videos"] == 6
    assert "data_files_size_in_mb" not in info
    assert open_dataset(v21, version=None).version == "v2.1"
    episodes = [json.loads(line) for line in (v21 / "meta/episodes.jsonl").read_text().splitlines()]
    assert episodes == [{"episode_index": i, "tasks": ["pick up the cube"], "length": 20} for i in range(3)]
    stats = json.loads((v21 / "meta/episodes_stats.jsonl").read_text().splitlines()[1])["stats"]
    assert set(stats["observation.state"]) == {"min", "max", "mean", "std", "count"}
    assert "adv_ind" not in stats  # lerobot keeps no stats for strings
    for ep in range(3):
        assert (v21 / f"data/chunk-000/episode_{ep:06d}.parquet").is_file()
        video = v21 / f"videos/chunk-000/observation.images.cam_high/episode_{ep:06d}.mp4"
        with av.open(str(video)) as c:
            times = [float(f.time) for f in c.decode(video=0)]
        np.testing.assert_allclose(times, np.arange(20) / 10, atol=1e-6)


def test_round_trip_keeps_every_column(tiny_dataset: Path, round_trip: tuple[Path, Path, str]) -> None:
    _, back, before = round_trip
    assert tree_digest(tiny_dataset) == before  # the input was never touched
    a, b = open_dataset(tiny_dataset), open_dataset(back)
    assert set(a.features) == set(b.features)
    ta, tb = read_table(a), read_table(b)
    assert ta.column_names == tb.column_names
    for name in ta.column_names:
        np.testing.assert_array_equal(column_array(ta, name), column_array(tb, name), err_msg=name)


def test_round_trip_frames_identical_through_lerobot(tiny_dataset: Path, round_trip: tuple[Path, Path, str]) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _, back, _ = round_trip
    da = LeRobotDataset("local/a", root=tiny_dataset, video_backend="pyav")
    db = LeRobotDataset("local/b", root=back, video_backend="pyav")
    assert len(da) == len(db) == 60
    for i in (0, 19, 20, 37, 59):
        ia, ib = da[i], db[i]
        for key in da.meta.video_keys:
            np.testing.assert_array_equal(ia[key].numpy(), ib[key].numpy(), err_msg=f"{key} frame {i}")
        assert ia["adv_ind"] == ib["adv_ind"] and ia["task"] == ib["task"]


def test_wrong_version_inputs_exit_2(tiny_dataset: Path, round_trip: tuple[Path, Path, str], tmp_path: Path) -> None:
    v21, _, _ = round_trip
    res = recap("convert", "v30-to-v21", str(v21), str(tmp_path / "x"))
    assert res.returncode == 2 and "v2.1 dataset; this command needs v3.0" in res.stderr
    res = recap("convert", "v21-to-v30", str(tiny_dataset), str(tmp_path / "y"))
    assert res.returncode == 2 and "v3.0 dataset; this command needs v2.1" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_same_output_as_input_is_refused(tiny_dataset: Path) -> None:
    from recap_core.errors import RecapError

    with pytest.raises(RecapError, match="same as the input"):
        v30_to_v21(tiny_dataset, tiny_dataset, overwrite=True)


def test_round_trip_with_image_features(tmp_path: Path) -> None:
    from recap_core.data.synthetic import make_dataset

    src = make_dataset(tmp_path / "img", episodes=2, frames=5, cameras=("cam_high",), use_videos=False)
    v30_to_v21(src, tmp_path / "v21")
    v21_to_v30(tmp_path / "v21", tmp_path / "v30")
    a, b = read_table(open_dataset(src)), read_table(open_dataset(tmp_path / "v30"))
    assert a.column_names == b.column_names
    for name in a.column_names:  # PNG bytes included: images are copied, never re-encoded
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
