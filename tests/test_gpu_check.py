"""benchmarks/gpu_check.sh, the script to run when an accelerator is lent (issue 22), in its dry mode:
the same sections with the tiny presets on CPU, so it is known to work before device time is spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PY": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == json.loads(proc.stdout) and summary["mode"] == "dry"
    assert summary["doctor"]["checks"][0]["name"] == "versions"
    train = {row["preset"]: row for row in summary["train"]}
    assert set(train) == {"value-tiny"}
    for row in train.values():
        assert row["predicted_step_gib"] > 0 and row["peak_rss_gib"] > 0 and row["platform"] == "cpu"
    assert [r["batch_size"] for r in summary["label"]["end_to_end"]] == [8, 32]
    assert all(r["predict_frames_per_second"] > 0 for r in summary["label"]["end_to_end"])
    assert summary["serve"]["metadata"]["preset"] == "pi06-tiny"
    assert len(summary["serve"]["metadata"]["cameras"]) == 3
    assert summary["serve"]["results"]["recap"]["1"]["p99_ms"] >= summary["serve"]["results"]["recap"]["1"]["p50_ms"] > 0
