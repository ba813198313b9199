"""Opening, validating and reading datasets; every bad-input path names the file/column and a fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recap_core.data import dataset as D
from recap_core.data import schema
from recap_core.errors import DatasetError
from tests.data.conftest import copy_dataset

DATA = Path("data/chunk-000/file-000.parquet")


def _edit_info(root: Path, **changes) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def _edit_column(root: Path, name: str, fn) -> None:
    path = root / DATA
    table = pq.read_table(path)
    col = table.column(name).to_numpy().copy()
    new = pa.array(fn(col), type=table.schema.field(name).type)
    pq.write_table(table.set_column(table.column_names.index(name), name, new), path)


def test_open_reports_metadata(tiny_dataset: Path) -> None:
    info = D.open_dataset(tiny_dataset)
    assert info.version == "v3.0" and info.fps == 10
    assert (info.episodes, info.frames) == (3, 60)
    assert info.cameras == ("cam_high", "cam_left_wrist")
    assert info.video_keys == info.camera_keys
    assert info.has_recap_columns and info.tasks == ("pick up the cube",)
    D.validate_dataset(info, columns=list(schema.RECAP_COLUMNS))
    assert D.camera_keys_for(info, ["cam_high", "observation.images.cam_left_wrist"]) == list(info.camera_keys)


def test_read_columns_matches_lerobot(tiny_dataset: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = D.open_dataset(tiny_dataset)
    cols = D.read_columns(info, ["observation.state", "value_label", "adv_ind"])
    ds = LeRobotDataset("local/x", root=tiny_dataset, video_backend="pyav")
    item = ds.hf_dataset[25]  # episode 1, frame 5
    np.testing.assert_allclose(cols[1]["observation.state"][5], item["observation.state"].numpy(), rtol=1e-6)
    assert cols[1]["adv_ind"][5] == item["adv_ind"]
    assert D.episode_lengths(info) == {0: 20, 1: 20, 2: 20}


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist"):
        D.open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"not a LeRobot dataset.*meta/info.json is missing") as exc:
        D.open_dataset(tmp_path)
    assert exc.value.fix


def test_unsupported_and_wrong_version(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    _edit_info(root, codebase_version="v1.6")
    with pytest.raises(DatasetError, match=r"'v1.6'"):
        D.open_dataset(root)
    _edit_info(root, codebase_version="v2.1")
    with pytest.raises(DatasetError, match=r"v2.1 dataset; this command needs v3.0") as exc:
        D.open_dataset(root)
    assert "recap convert v21-to-v30" in exc.value.fix
    assert D.open_dataset(root, version=None).version == "v2.1"


def test_missing_column_names_the_producing_command(tiny_plain_dataset: Path) -> None:
    info = D.open_dataset(tiny_plain_dataset)
    assert not info.has_recap_columns
    with pytest.raises(DatasetError, match=r"no column 'value_label'.*recap value train") as exc:
        D.require_columns(info, ["value_label"], stage="recap value train")
    assert "recap convert lerobot" in exc.value.fix


def test_camera_not_present(tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match=r"camera 'cam_low' is not in .*cam_high, cam_left_wrist"):
        D.camera_keys_for(D.open_dataset(tiny_dataset), ["cam_low"])


def test_wrong_dtype(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["adv_ind"]["dtype"] = "int8"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"'adv_ind'.*dtype 'int8'; expected 'string'"):
        D.validate_dataset(D.open_dataset(root))


def test_value_label_out_of_range(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    _edit_column(root, "value_label", lambda v: v + 0.5)
    with pytest.raises(DatasetError, match=r"'value_label' spans .*expected values in \[-1, 0\]"):
        D.validate_dataset(D.open_dataset(root), columns=["value_label"])


def test_nan_in_state(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    path = root / DATA
    table = pq.read_table(path)
    state = np.asarray(table.column("observation.state").to_pylist(), dtype=np.float32)
    state[30, 2] = np.nan
    field = table.schema.field("observation.state")
    arr = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1), pa.float32()), 14)
    pq.write_table(table.set_column(table.column_names.index(field.name), field, arr), path)
    with pytest.raises(DatasetError, match=r"'observation.state' has NaN/inf .*episode 1, frame 10, global index 30"):
        D.validate_dataset(D.open_dataset(root))


def test_bad_adv_ind_value(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    _edit_column(root, "adv_ind", lambda v: np.where(v == "none", "neutral", v))
    with pytest.raises(DatasetError, match=r"'adv_ind' holds \[.neutral.\]"):
        D.validate_dataset(D.open_dataset(root))


def test_empty_episode(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    path = root / DATA
    table = pq.read_table(path)
    keep = pa.compute.not_equal(table.column("episode_index"), 1)
    pq.write_table(table.filter(keep), path)
    with pytest.raises(DatasetError, match=r"episode 1 of .* has no frames"):
        D.validate_dataset(D.open_dataset(root))


def test_missing_video_file(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    (root / "videos/observation.images.cam_left_wrist/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetError, match=r"video file .*file-000.mp4 \(camera observation.images.cam_left_wrist"):
        D.validate_dataset(D.open_dataset(root))


def test_truncated_parquet(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    path = root / DATA
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"file-000.parquet cannot be read as parquet.*truncated"):
        D.validate_dataset(D.open_dataset(root))


def test_state_with_wrong_dtype(tiny_dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(tiny_dataset, tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["dtype"] = "string"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"'observation.state' .* has dtype 'string'; expected 'float32'"):
        D.validate_dataset(D.open_dataset(root))
