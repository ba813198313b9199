"""`recap serve` as a real subprocess: the openpi client drives it, SIGTERM stops it, mistakes exit 2."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from recap_core.serve.client import check_health
from tests.conftest import panel_text

RECAP = [sys.executable, "-m", "recap_cli.main"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200", "NO_COLOR": "1"}


def _read_ready_json(proc: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    """Read stdout until it holds one complete JSON document (bounded by the timeout)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    # A reader thread, because a buffered pipe hides lines from select() once Python has read them.
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    text, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            text += lines.get(timeout=0.5)
        except queue.Empty:
            continue
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            continue
    proc.kill()
    raise AssertionError(f"recap serve never became ready; stdout={text!r} stderr={proc.stderr.read()!r}")


@pytest.fixture
def zeros_server() -> Iterator[tuple[subprocess.Popen, dict]]:
    proc = subprocess.Popen(
        [*RECAP, "serve", "--policy", "zeros", "--action-shape", "10,14", "--port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        yield proc, _read_ready_json(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_openpi_client_drives_recap_serve_then_sigterm_stops_it(zeros_server) -> None:
    proc, ready = zeros_server
    assert ready["url"].startswith("ws://127.0.0.1:")
    assert ready["metadata"] == {"policy": "zeros", "action_horizon": 10, "action_dim": 14}
    assert check_health(ready["url"])
    client = WebsocketClientPolicy(ready["url"])
    assert client.get_server_metadata() == ready["metadata"]
    obs = {"state": np.zeros(14, np.float32), "images": {"cam_high": np.zeros((3, 224, 224), np.uint8)},
           "prompt": "hand over the vial", "adv_ind": "positive"}
    out = client.infer(obs)
    assert out["actions"].shape == (10, 14) and out["actions"].dtype == np.float32
    assert "infer_ms" in out["server_timing"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "server stopped" in proc.stderr.read()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RECAP, "serve", *args], capture_output=True, text=True, env=ENV, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}"], "is not a recap run directory (no config.json)"),
        (["{tmp}/missing"], "does not exist"),
        (["--policy", "zeros"], "needs --action-shape"),
        (["--policy", "zeros", "--action-shape", "ten,14"], "is not H,D"),
        (["--policy", "zeros", "--action-shape", "0,14"], "must be positive"),
        (["{tmp}", "--policy", "zeros", "--action-shape", "1,1"], "not both"),
        ([], "nothing to serve"),
        (["{tmp}", "--cfg-beta", "0.5"], "--cfg-beta must be >= 1.0"),
        (["--policy", "zeros", "--action-shape", "1,1", "--port", "70000"], "--port must be in"),
    ],
)
def test_user_mistakes_exit_2_with_one_panel(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "keep.txt").write_text("data")
    result = _run(*(a.format(tmp=tmp_path) for a in args), "--no-preflight")
    assert result.returncode == 2, result.stderr
    assert message in panel_text(result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # input untouched


def test_port_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run("--policy", "zeros", "--action-shape", "1,1", "--port", str(port))
    assert result.returncode == 2 and "cannot listen on" in result.stderr and "Traceback" not in result.stderr


def test_run_dir_goes_through_preflight_then_names_the_unservable_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "10").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": "pi06-tiny", "model": {"kind": "pi99"}}))
    result = _run(str(run), "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "kind 'pi99'" in panel_text(result.stderr)
    assert "Traceback" not in result.stderr
