"""`recap value train` / `recap sft` / `recap finetune` through the installed CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recap_core.data.synthetic import make_dataset


def recap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RECAP_CACHE_DIR": str(cwd / "cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "recap_cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    make_dataset(root / "ds", episodes=3, frames=8)
    make_dataset(root / "plain", episodes=2, frames=6, with_recap=False)
    return root


def test_value_train_resume_and_refusals(datasets: Path) -> None:
    common = ["--preset", "value-tiny", "--init", "random", "--run-dir", "runs/v", "--batch-size", "4",
              "--no-preflight", "--set", "checkpoint.every=2", "--set", "log_every=1"]
    first = recap("value", "train", "ds", *common, "--steps", "2", "--json", cwd=datasets)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["final_step"] == 2 and summary["checkpoint_step"] == 2
    assert summary["checkpoint_bytes"] < 1_000_000  # trainable params + EMA + Adam only
    config = json.loads((datasets / "runs/v/config.json").read_text())
    assert config["freeze_mode"] == "all_backbones" and config["model"]["kind"] == "value"

    again = recap("value", "train", "ds", *common, "--steps", "2", cwd=datasets)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr

    # The run records its stack; resuming it under another jax says so, naming both versions.
    from recap_core.stack import stack_versions

    assert config["versions"] == stack_versions()
    config["versions"]["jax"] = "0.0.1"
    (datasets / "runs/v/config.json").write_text(json.dumps(config))
    # The run and its dataset move to another directory (another machine's mount): it resumes from there.
    assert config["dataset"] == str(datasets / "ds")  # recorded absolute, whatever the cwd was
    moved = datasets / "moved"
    (moved / "runs").mkdir(parents=True)
    shutil.move(datasets / "runs" / "v", moved / "runs" / "v")
    shutil.move(datasets / "ds", moved / "ds")
    try:
        resumed = recap("value", "train", "ds", *common, "--steps", "4", "--resume", "--json", cwd=moved)
    finally:
        shutil.move(moved / "ds", datasets / "ds")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["start_step"] == 2
    warning = " ".join(resumed.stderr.split())
    assert f"jax 0.0.1 -> {stack_versions()['jax']}" in warning and warning.count("other versions") == 1
    assert f"trained on {datasets / 'ds'}, which is gone; resuming on {moved / 'ds'}" in warning
    steps = [json.loads(line)["step"] for line in (moved / "runs/v/metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2] and steps[-1] == 4

    # The moved run labels data, and the result names the value model's step it used (issue 26).
    labelled = recap("value", "label", "ds", "--checkpoint", str(moved / "runs/v"), "--no-preflight", "--json",
                     "--output", "ds_labeled", cwd=datasets)
    assert labelled.returncode == 0, labelled.stderr[-3000:]
    assert json.loads(labelled.stdout)["checkpoint"] == {"run_dir": str(moved / "runs/v"), "step": 4, "chosen": "latest",
                                                       "use_ema": True}


def test_stage_data_and_init_errors(datasets: Path) -> None:
    missing = recap("value", "train", "plain", "--preset", "value-tiny", "--init", "random",
                    "--run-dir", "runs/x", "--no-preflight", cwd=datasets)
    assert missing.returncode == 2
    assert "value_label" in missing.stderr and "recap value train" in missing.stderr
    assert not (datasets / "runs/x").exists()

    bad_init = recap("value", "train", "ds", "--preset", "value-tiny", "--init", str(datasets / "plain"),
                     "--run-dir", "runs/y", "--no-preflight", "--steps", "1", cwd=datasets)
    assert bad_init.returncode == 2 and "not a recap run" in bad_init.stderr
    assert not (datasets / "runs/y").exists()

    bad_set = recap("value", "train", "ds", "--preset", "value-tiny", "--set", "optim.peak_rate=1",
                    "--no-preflight", cwd=datasets)
    assert bad_set.returncode == 2 and "optim.peak_rate" in bad_set.stderr
