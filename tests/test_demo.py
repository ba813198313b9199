"""`recap demo --fast` runs the whole loop through the real CLI and leaves every stage's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recap_core.demo import CORE_ROWS, FULL_ROWS, PLANS, STAGES, DemoRunner
from tests.conftest import run_recap, wheel_env


@pytest.mark.slow
def test_demo_fast_produces_every_artifact(tmp_path: Path):
    """Run by recap installed from its wheel, from an empty directory (issue 27): nothing it needs may
    live only in the source tree."""
    recap, env = wheel_env()
    (tmp_path / "cwd").mkdir()
    work = tmp_path / "demo"
    proc = run_recap("demo", "--fast", "--workdir", work, "--json", timeout=1800, command=[str(recap)], env=env,
                     cwd=tmp_path / "cwd")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    # Data of every stage, in the formats the real tools read.
    for name in ("demos", "rollouts", "round1", "round1_labeled"):
        assert (work / "data" / name / "meta" / "info.json").is_file(), name
    labeled = json.loads((work / "data" / "round1_labeled" / "meta" / "info.json").read_text())
    assert {"value_pred", "advantage", "adv_ind"} <= set(labeled["features"])
    # A checkpoint, config and norm stats for every trained model.
    for run in ("sft", "filtered_bc", "stage3", "value", "stage6"):
        assert (work / "runs" / run / "config.json").is_file(), run
        assert any((work / "runs" / run / "checkpoints").iterdir()), run
    assert json.loads((work / "runs" / "filtered_bc" / "config.json").read_text())["data"]["success_only"] is True
    assert (work / "reports" / "label" / "advantage_hist.png").is_file()
    assert (work / "success_rates.png").stat().st_size > 0
    # Every row of the table, each on the same number of episodes, with throughput.
    assert tuple(summary["rows"]) == CORE_ROWS  # as the default plan (the full plan's: below)
    for stats in summary["rows"].values():
        assert 0.0 <= stats["ci_low"] <= stats["success_rate"] <= stats["ci_high"] <= 1.0
        assert stats["episodes"] == summary["plan"]["eval_episodes"]
        assert stats["successes_per_1000_steps"] >= 0 and set(stats["mistake_rates"]) == {"drop", "idle"}
    assert set(summary["success"]) == set(STAGES)
    quality = summary["label_quality"]
    assert quality["frames"] > 0 and set(quality["recall_by_kind"]) == {"drop", "idle"}
    # The pi0.6 stages report how far their actions move with the indicator; SFT is not conditioned.
    assert "indicator_effect" not in summary["rows"]["sft"]
    for stage in ("stage3", "stage6"):
        effect = summary["rows"][stage]["indicator_effect"]
        assert effect["states"] == 32 and effect["sampling_spread"] > 0 and effect["positive_vs_negative"] >= 0
    # Rerunning continues: every stage is already done, nothing is recomputed.
    again = run_recap("demo", "--fast", "--workdir", work, "--json", timeout=600, command=[str(recap)], env=env,
                      cwd=tmp_path / "cwd")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "done earlier" in again.stderr
    assert json.loads(again.stdout)["rows"] == summary["rows"]


def test_demo_refuses_foreign_workdir(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_recap("demo", "--fast", "--workdir", tmp_path)
    assert proc.returncode == 2 and "not a recap demo workdir" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _row(successes: int, episodes: int, mean_length: float, steps_to_success: float | None) -> dict:
    return {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
            "mean_length": mean_length, "mean_steps_to_success": steps_to_success,
            "mistake_rates": {"drop": 0.5, "idle": 0.0}, "milestone_rates": {"success": successes / episodes}}


def test_pool_summaries_adds_successes_steps_and_wilson_intervals():
    from recap_core.demo import pool_summaries
    from recap_core.sim.evaluate import wilson_interval

    a = {"seed": 0, "task": "t", "rows": {"sft": _row(2, 10, 100.0, 60.0)}, "total_seconds": 60}
    b = {"seed": 1, "task": "t", "rows": {"sft": _row(6, 10, 80.0, 70.0)}, "total_seconds": 120}
    pooled = pool_summaries([a, b])
    row = pooled["rows"]["sft"]
    assert (row["successes"], row["episodes"]) == (8, 20)
    assert (row["ci_low"], row["ci_high"]) == wilson_interval(8, 20)
    assert row["successes_per_1000_steps"] == 1000 * 8 / 1800
    assert row["mean_steps_to_success"] == (2 * 60 + 6 * 70) / 8
    assert row["mistake_rates"] == {"drop": 0.5, "idle": 0.0}
    assert pooled["seeds"] == [0, 1] and pooled["minutes"] == {"0": 1.0, "1": 2.0}


def test_full_plan_rows_are_wired_to_their_runs_and_flags(tmp_path: Path):
    """Each row is evaluated from the right run with the right flags, all on the same scenes, and
    the `recap eval` command the demo logs for it says the same."""
    runner = DemoRunner(tmp_path, PLANS["full"], seed=3, log=lambda _: None)
    seen = {row: runner.eval_request(row) for row in FULL_ROWS}
    assert PLANS["full"].rows == FULL_ROWS and PLANS["default"].rows == CORE_ROWS
    source, states, args = seen["expert"]
    assert source.expert and source.run is None and args[:2] == ("eval", "--expert")
    source, states, args = seen["stage6_cfg"]
    assert (source.run, source.cfg_beta, source.adv_ind) == (tmp_path / "runs/stage6", 2.0, None)
    assert args[1:4] == ("runs/stage6", "--cfg-beta", 2.0)
    source, states, args = seen["stage6_negative"]
    assert (source.run, source.cfg_beta, source.adv_ind) == (tmp_path / "runs/stage6", 1.0, "negative")
    assert args[1:4] == ("runs/stage6", "--adv-ind", "negative")
    for row in ("stage6_truth", "sft", "filtered_bc"):
        source, states, args = seen[row]
        assert source.run == tmp_path / "runs" / row and states == 0
        assert args[1] == f"runs/{row}" and "--indicator-effect" not in args
    for row in ("stage3", "stage6"):
        assert seen[row][1] == 32 and seen[row][0].adv_ind is None
    for row in FULL_ROWS:
        args = seen[row][2]
        assert args[args.index("--seed") + 1] == 20_003 and args[args.index("--task") + 1] == "handover-easy"
