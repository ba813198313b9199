"""Two training processes on one machine, as a cluster launcher starts them (issue 22, first part):
`jax.distributed` over loopback, 2 processes x 2 CPU devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recap_core.data.synthetic import make_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_run_and_write_it_once(tmp_path: Path) -> None:
    make_dataset(tmp_path / "ds", episodes=4, frames=12, cameras=("cam_high",))
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
           "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "recap_cli.main", "value", "train", "ds", "--preset", "value-tiny", "--init",
             "random", "--steps", "2", "--batch-size", "4", "--run-dir", "run", "--no-preflight", "--json",
             "--set", "log_every=1", "--set", f"distributed.coordinator_address=127.0.0.1:{port}",
             "--set", "distributed.num_processes=2", "--set", f"distributed.process_id={i}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)  # bounded: a hung peer fails the test
            outs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for code, out, err in outs:
        assert code == 0, err[-3000:]
        assert json.loads(out)["final_step"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]  # one writer, not two
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["distributed"]["num_processes"] == 2
