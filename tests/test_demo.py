"""`recap demo --fast` runs the whole loop through the real CLI and leaves every stage's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recap_core.demo import STAGES, _unboxed
from tests.conftest import run_recap


def test_unboxed_strips_a_rich_panel():
    panel = "╭──── error ────╮\n│ bad thing     │\n│               │\n│ Fix: do x     │\n╰───────────────╯"
    assert _unboxed(panel) == "bad thing\nFix: do x"


@pytest.mark.slow
def test_demo_fast_produces_every_artifact(tmp_path: Path):
    work = tmp_path / "demo"
    proc = run_recap("demo", "--fast", "--workdir", work, "--json", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    # Data of every stage, in the formats the real tools read.
    for name in ("demos", "rollouts", "round1", "round1_labeled"):
        assert (work / "data" / name / "meta" / "info.json").is_file(), name
    labeled = json.loads((work / "data" / "round1_labeled" / "meta" / "info.json").read_text())
    assert {"value_pred", "advantage", "adv_ind"} <= set(labeled["features"])
    # A checkpoint, config and norm stats for every trained model.
    for run in ("sft", "stage3", "value", "stage6"):
        assert (work / "runs" / run / "config.json").is_file(), run
        assert any((work / "runs" / run / "checkpoints").iterdir()), run
    assert (work / "reports" / "label" / "advantage_hist.png").is_file()
    assert (work / "success_rates.png").stat().st_size > 0
    assert set(summary["success"]) == set(STAGES)
    for stats in summary["success"].values():
        assert 0.0 <= stats["ci_low"] <= stats["success_rate"] <= stats["ci_high"] <= 1.0
        assert stats["episodes"] == summary["plan"]["eval_episodes"]
    assert summary["stage6_negative"]["episodes"] == summary["plan"]["eval_episodes"]
    audit = summary["label_audit"]
    assert audit["frames"] > 0 and set(audit["joint_deviation"]) == {"positive", "negative"}
    # The pi0.6 stages report how far their actions move with the indicator; SFT is not conditioned.
    assert "indicator_effect" not in summary["success"]["sft"]
    for stage in ("stage3", "stage6"):
        effect = summary["success"][stage]["indicator_effect"]
        assert effect["states"] == 32 and effect["sampling_spread"] > 0 and effect["positive_vs_negative"] >= 0
    # Rerunning continues: every stage is already done, nothing is recomputed.
    again = run_recap("demo", "--fast", "--workdir", work, "--json", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "done earlier" in again.stderr
    assert json.loads(again.stdout)["success"] == summary["success"]


def test_demo_refuses_foreign_workdir(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_recap("demo", "--fast", "--workdir", tmp_path)
    assert proc.returncode == 2 and "not a recap demo workdir" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
