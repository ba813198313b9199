"""The scripts in examples/ run verbatim (tiny presets, the built-in simulator)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_recap_loop_runs_two_rounds_and_keeps_every_round(tmp_path: Path) -> None:
    """examples/recap_loop.sh (issue 20, item 7): two rounds of serve -> collect -> convert + merge
    -> value train -> label -> fine-tune, each round's data and runs kept; the last policy evaluates
    after the whole workdir moved, from another directory."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "ROUNDS": "2", "DEMOS": "4",
           "ROLLOUTS": "2", "EVAL": "0", "SFT_STEPS": "2", "FT_STEPS": "2", "VALUE_STEPS": "2", "BATCH": "4"}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "recap_loop.sh"), "work"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    work = tmp_path / "work"
    for r in (1, 2):
        for name in (f"rollouts_{r}", f"all_{r}", f"all_{r}_labeled"):
            assert (work / "data" / name / "meta" / "info.json").is_file(), name
        assert json.loads((work / "runs" / f"policy_{r}" / "config.json").read_text())["stage"] == "finetune"
        assert (work / "runs" / f"value_{r}" / "checkpoints").is_dir()
    episodes = [json.loads((work / "data" / n / "meta" / "info.json").read_text())["total_episodes"]
                for n in ("demos", "all_1", "all_2")]
    assert episodes == [4, 6, 8]  # each round adds its rollouts to everything before
    assert json.loads((work / "runs" / "value_2" / "config.json").read_text())["init"] == str(work / "runs" / "value_1")
    assert json.loads((work / "runs" / "policy_2" / "config.json").read_text())["init"] == str(work / "runs" / "policy_1")
    # EVAL=0 skips the per-round evaluations (the policy is evaluated once, below, after the move).
    assert not list(work.glob("eval_*.json")) and f"policy of the last round: {work / 'runs' / 'policy_2'}" in proc.stdout

    shutil.move(work, tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    moved = subprocess.run([sys.executable, "-m", "recap_cli.main", "eval", str(tmp_path / "moved/runs/policy_2"),
                            "--task", "handover-easy", "--episodes", "1", "--json"], cwd=tmp_path / "elsewhere",
                           env=env, capture_output=True, text=True, timeout=600)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert json.loads(moved.stdout)["episodes"] == 1
