"""`recap eval` end to end: the real CLI in a subprocess, policies served over websockets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recap_core.serve.policy import ZerosPolicy
from recap_core.serve.server import ServerConfig, ServerThread
from recap_core.sim.task import ACTION_DIM

RECAP = [sys.executable, "-m", "recap_cli.main"]


def _recap(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*RECAP, *args], capture_output=True, text=True, timeout=timeout)


def test_expert_evaluation_prints_one_json_document():
    proc = _recap("eval", "--expert", "--task", "handover", "--episodes", "4", "--seed", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["policy"] == "expert" and result["episodes"] == 4 and result["seed"] == 1
    assert result["success_rate"] >= 0.75 and result["ci_low"] <= result["success_rate"] <= result["ci_high"]
    assert len(result["outcomes"]) == 4


def test_help_lists_the_task_names():
    proc = _recap("eval", "--help")
    assert proc.returncode == 0
    for name in ("handover", "handover-left-to-right", "handover-right-to-left", "Example:"):
        assert name in proc.stdout


@pytest.fixture(scope="module")
def zeros_server():
    with ServerThread(ZerosPolicy(8, ACTION_DIM), ServerConfig(port=0)) as server:
        yield server.url


def test_server_mode_evaluates_a_served_policy_over_websockets(zeros_server, tmp_path):
    videos = tmp_path / "videos"
    proc = _recap(
        "eval", "--server", zeros_server, "--episodes", "2", "--adv-ind", "positive",
        "--video", str(videos), "--video-episodes", "1", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["policy"] == zeros_server and result["successes"] == 0 and result["mean_length"] == 150
    assert [p.name for p in videos.iterdir()] == ["episode_0.gif"]


def test_a_server_for_another_robot_is_refused():
    with ServerThread(ZerosPolicy(8, 14), ServerConfig(port=0)) as server:
        proc = _recap("eval", "--server", server.url, "--episodes", "1")
    assert proc.returncode == 2
    assert "action_dim=14" in proc.stderr and "Fix" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "--episodes", "1"], "exactly one policy"),
        (["eval", "--expert", "--server", "ws://127.0.0.1:1"], "exactly one policy"),
        (["eval", "--expert", "--task", "stack-cups"], "unknown sim task 'stack-cups'"),
        (["eval", "/nonexistent/run", "--episodes", "1"], "/nonexistent/run does not exist"),
        (
            ["eval", "--server", "ws://127.0.0.1:9", "--connect-timeout", "0.5", "--episodes", "1"],
            "no policy server",
        ),
    ],
)
def test_user_mistakes_are_one_red_panel_and_exit_2(args, needle):
    proc = _recap(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_run_directory_that_cannot_be_served_is_a_clear_error(tmp_path):
    proc = _recap("eval", str(tmp_path), "--episodes", "1")
    assert proc.returncode == 2, proc.stderr
    assert "Fix" in proc.stderr and "Traceback" not in proc.stderr


def test_existing_video_directory_is_refused_and_untouched(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "mine.gif").write_bytes(b"keep")
    proc = _recap("eval", "--expert", "--episodes", "1", "--video", str(videos))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert [p.name for p in videos.iterdir()] == ["mine.gif"]
