"""`inspect_dataset` on tiny datasets with known counts, stage readiness, and the `recap data` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recap_core.errors import DatasetError
from recap_core.stages import inspect_dataset

RECAP = [sys.executable, "-m", "recap_cli.main"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}


def recap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RECAP, *args], capture_output=True, text=True, env=ENV, timeout=120)


def test_report_counts(tiny_dataset_two_tasks: Path) -> None:
    # Episodes 12/16/8/10 frames, tasks alternate; synthetic defaults: the last episode fails,
    # episode 0 is all intervention, odd episodes have a correction in their middle third
    # (ep1 frames 5..9, ep3 frames 3..5), adv_ind starts positive exactly on intervention frames.
    r = inspect_dataset(tiny_dataset_two_tasks)
    assert (r["version"], r["fps"], r["episodes"], r["frames"]) == ("v3.0", 10, 4, 46)
    assert r["episode_length"] == {"min": 8, "mean": 11.5, "max": 16}
    assert r["cameras"] == ["cam_high"] and (r["state_dim"], r["action_dim"]) == (6, 7)
    assert r["tasks"] == [
        {"task_index": 0, "task": "pick up the cube", "episodes": 2, "frames": 20},
        {"task_index": 1, "task": "open the drawer", "episodes": 2, "frames": 26},
    ]
    assert r["features"]["observation.state"] == {"dtype": "float32", "shape": [6]}
    assert all(r["recap_columns"].values())
    assert (r["successful_episodes"], r["success_rate"]) == (3, 0.75)
    assert r["intervention_fraction"] == pytest.approx((12 + 5 + 3) / 46)
    assert r["intervention_episodes"] == 3
    assert r["adv_ind_counts"] == {"positive": 20, "negative": 0, "none": 26}
    assert r["value_label_range"] == [-1.0, 0.0]
    assert r["source"] is None  # not made by a recap converter: no meta/recap_source.json
    assert r["problems"] == []
    assert all(stage["ready"] for stage in r["ready"].values())
    json.dumps(r)  # the documented schema is plain JSON


def test_plain_dataset_is_ready_for_sft_only(tiny_plain_dataset: Path) -> None:
    r = inspect_dataset(tiny_plain_dataset)
    assert not any(r["recap_columns"].values())
    assert r["success_rate"] is r["intervention_fraction"] is r["adv_ind_counts"] is r["value_label_range"] is None
    ready = r["ready"]
    assert ready["sft"] == {"ready": True, "missing": [], "why": None, "fix": None}
    assert not ready["finetune"]["ready"] and ready["finetune"]["missing"] == ["adv_ind"]
    assert not ready["value-train"]["ready"] and ready["value-train"]["missing"] == ["value_label"]
    assert ready["value-label"]["missing"] == ["reward_label", "intervention"]
    assert "recap convert lerobot" in ready["value-label"]["fix"]


def test_all_none_adv_ind_is_not_ready_for_finetune(tmp_path: Path) -> None:
    from recap_core.data.synthetic import make_dataset

    root = make_dataset(tmp_path / "ds", episodes=2, frames=5, cameras=("cam_high",), intervention=0, image_size=16)
    r = inspect_dataset(root)
    assert r["adv_ind_counts"] == {"positive": 0, "negative": 0, "none": 10}
    assert r["intervention_fraction"] == 0.0 and r["intervention_episodes"] == 0
    assert not r["ready"]["finetune"]["ready"] and "recap value label" in r["ready"]["finetune"]["fix"]
    assert r["ready"]["sft"]["ready"]


def test_validation_problems_block_readiness(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_dataset_two_tasks, tmp_path / "ds"))
    path = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    values = table["value_label"].to_numpy().copy()
    values[4] = 0.5
    table = table.set_column(table.schema.get_field_index("value_label"), "value_label", pa.array(values, pa.float32()))
    pq.write_table(table, path)
    r = inspect_dataset(root)
    assert r["value_label_range"][1] == pytest.approx(0.5)
    assert len(r["problems"]) == 1 and "value_label" in r["problems"][0]
    assert not r["ready"]["value-train"]["ready"] and "fails validation" in r["ready"]["value-train"]["why"]


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        inspect_dataset(tmp_path)


def test_cli_inspect_json_and_ready_for(tiny_dataset_two_tasks: Path, tiny_plain_dataset: Path) -> None:
    proc = recap("data", "inspect", str(tiny_dataset_two_tasks), "--json", "--ready-for", "finetune")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(inspect_dataset(tiny_dataset_two_tasks)))
    proc = recap("data", "inspect", str(tiny_plain_dataset), "--ready-for", "finetune")
    assert proc.returncode == 1
    assert "missing column adv_ind" in proc.stdout


def test_cli_inspect_bad_input_exits_2(tmp_path: Path, tiny_plain_dataset: Path) -> None:
    proc = recap("data", "inspect", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "not a LeRobot dataset" in proc.stderr and "Fix:" in proc.stderr and "Traceback" not in proc.stderr
    proc = recap("data", "inspect", str(tiny_plain_dataset), "--ready-for", "train")
    assert proc.returncode == 2 and "value-train" in proc.stderr
    proc = recap("data", "inspect", str(tiny_plain_dataset), "--ready-for", "value_train")  # the old spelling
    assert proc.returncode == 1 and "value_label" in proc.stdout  # not ready: the column is missing


def test_cli_stats_writes_openpi_file_atomically(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "assets" / "norm_stats.json"
    proc = recap("data", "stats", str(tiny_dataset_two_tasks), "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["norm_stats"] == json.loads(out.read_text())["norm_stats"] and list(json.loads(out.read_text())) == ["norm_stats"]
    assert printed["convention"] == {"actions": "absolute", "delta_mask": None, "action_horizon": None}
    assert len(printed["norm_stats"]["state"]["q99"]) == 6 and len(printed["norm_stats"]["actions"]["mean"]) == 7
    assert [p.name for p in out.parent.iterdir()] == ["norm_stats.json"]  # no temp files left

    out.write_text("keep me")
    proc = recap("data", "stats", str(tiny_dataset_two_tasks), "--output", str(out))
    assert proc.returncode == 2 and "already exists" in proc.stderr and out.read_text() == "keep me"
    proc = recap("data", "stats", str(tiny_dataset_two_tasks), "--output", str(out), "--overwrite")
    assert proc.returncode == 0 and "wrote" in proc.stdout
    assert np.allclose(json.loads(out.read_text())["norm_stats"]["state"]["mean"], printed["norm_stats"]["state"]["mean"])


def test_cli_stats_missing_column_exits_2(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "norm_stats.json"
    proc = recap("data", "stats", str(tiny_dataset_two_tasks), "--state-column", "observation.qpos", "--output", str(out))
    assert proc.returncode == 2 and "observation.qpos" in proc.stderr and "Fix:" in proc.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def wide_four_cameras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40-dim actions and four cameras: wider than published pi0.5 weights (32), one camera too many."""
    from recap_core.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("wide") / "ds", episodes=2, frames=4, image_size=8,
                        cameras=("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"),
                        state_dim=40, action_dim=40)


def test_preset_fit_names_each_mismatch_and_its_fix(wide_four_cameras: Path) -> None:
    from recap_core.stages import preset_fit

    report = inspect_dataset(wide_four_cameras)
    real = preset_fit(report, "pi05")
    assert not real["fits"] and len(real["problems"]) == 2
    widths, cams = real["problems"]
    assert "40 dims" in widths["problem"] and "32" in widths["problem"]
    assert "4 cameras" in cams["problem"] and "--cameras cam_high --cameras cam_low --cameras cam_left_wrist" in cams["fix"]
    tiny = preset_fit(report, "pi05-tiny")  # a random-init tiny policy widens; the cameras still do not fit
    assert [p["problem"] for p in tiny["problems"]] == [cams["problem"].replace("pi05", "pi05-tiny")]
    assert tiny["notes"] and "widens model.action_dim to 40" in tiny["notes"][0]
    assert preset_fit(report, "value-tiny") == {"preset": "value-tiny", "kind": "value", "fits": True,
                                               "problems": [], "notes": []}


def test_inspect_and_doctor_flag_a_preset_mismatch_before_a_run(wide_four_cameras: Path) -> None:
    proc = recap("data", "inspect", str(wide_four_cameras), "--preset", "pi05", "--ready-for", "sft", "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ready"]["sft"]["ready"] and not report["preset_fit"]["fits"]  # the columns are there
    proc = recap("doctor", "--stage", "sft", "--preset", "pi05-tiny", "--dataset", str(wide_four_cameras), "--json")
    dataset = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "dataset")
    assert proc.returncode == 1 and dataset["status"] == "fail"
    assert "image slots" in dataset["message"] and dataset["fix"].startswith("train on 3 of them")


def test_a_bad_source_record_is_named(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_dataset_two_tasks, tmp_path / "ds"))
    (root / "meta" / "recap_source.json").write_text('{"converter": "aloha-hdf5"}')
    with pytest.raises(DatasetError, match=r"recap_source\.json has no 'success_rule'") as err:
        inspect_dataset(root)
    assert "delete it" in err.value.fix
