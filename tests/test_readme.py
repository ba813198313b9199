"""The README's command blocks run verbatim (issue 20): the stage-by-stage walkthrough on generated
14-dim ALOHA-style episodes with the tiny presets, its second half (serve, openpi both ways, doctor)
from the directory after it has moved. A block the suite cannot run is listed in NOT_RUN with the
reason, and a block that is neither run nor listed fails the first test."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

NOT_RUN = {  # a block's first line -> why the suite does not run it as written
    "bash scripts/demo.sh": "the main job (about 37 minutes); tests/test_demo.py runs its --fast smoke run",
    "bash scripts/test.sh": "the test suite itself",
    "RECAP_CUDA=12 bash scripts/setup.sh": "installs the CUDA 12 lock, for a GPU machine",
    "uv build --wheel -o dist/ .": "installs into the user's environment; tests/test_install.py builds the wheel "
                                   "from git's files into a new venv and runs recap from an empty directory",
    "for s in 0 1 2; do recap demo --plan full": "the measured seeds: hours of training",
    "for s in 0 1 2; do bash scripts/demo.sh": "the commands of an earlier version (git history)",
    "# on every host i = 0 .. N-1": "placeholders for a cluster; tests/train/test_multiprocess.py runs 2 processes",
    "# on each host i = 0 .. N-1": "placeholders for a cluster; tests/label/test_pipeline.py merges 3 shards "
                                   "into the one-process result",
    "pip install 'recap[aloha]'": "the optional gym-aloha extra (MuJoCo); tests/sim/test_gym_eval.py runs --env on a small env",
    "recap doctor --stage finetune --preset pi06-lora --batch-size 32":
        "compiles the 3.35B train step twice (about 40 s each); tests/train/test_memory.py runs the same on tiny presets",
}
SERVE_READY = re.compile(r"serving (ws://\S+)")


def readme_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _skipped(block: str) -> str | None:
    return next((why for first, why in NOT_RUN.items() if block.startswith(first)), None)


def test_every_block_is_run_or_says_why() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 10
    for first in NOT_RUN:  # a stale entry would hide nothing and say something false
        assert sum(b.startswith(first) for b in blocks) == 1, f"NOT_RUN entry {first!r} matches no single block"
    run = [b for b in blocks if _skipped(b) is None]
    assert len(run) == len(blocks) - len(NOT_RUN)
    for block in run:  # everything else is exercised by the walkthrough below: tiny presets only
        for line in block.splitlines():
            assert not re.search(r"--preset (pi05|pi06)(-lora)?\b(?!-)|--init base", line), line


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1"}


def _serve_once(line: str, cwd: Path) -> dict:
    """Start one `recap serve` line as written, wait (bounded) for its ready line, ask it for one action
    chunk with an unchanged openpi client, then stop it with SIGTERM as the README says."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    proc = subprocess.Popen(["bash", "-c", line], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    seen, url, deadline = [], None, time.monotonic() + 180
    try:
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            found = SERVE_READY.search(seen[-1])
            url = found.group(1) if found else None
        assert url is not None, f"{line!r} never became ready:\n{''.join(seen)[-3000:]}"
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        client = WebsocketClientPolicy(host, int(port))
        meta = client.get_server_metadata()
        dim = meta.get("state_dim", meta["action_dim"])
        size = meta.get("image_size", [32, 32])
        obs = {"state": np.zeros(dim, np.float32), "prompt": "fold the towel",
               "images": {cam: np.zeros((3, *size), np.uint8) for cam in meta.get("cameras", ["cam_high"])}}
        actions = client.infer(obs)["actions"]
        assert actions.shape == (meta["action_horizon"], meta["action_dim"]) and np.isfinite(actions).all()
        return meta
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, f"{line!r} did not stop cleanly on SIGTERM:\n{''.join(seen)[-3000:]}"


def _run_block(block: str, cwd: Path) -> None:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"README block failed in {cwd}:\n{block}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _episodes(root: Path) -> int:
    return json.loads((root / "meta" / "info.json").read_text())["total_episodes"]


@pytest.mark.slow
def test_the_walkthrough_runs_verbatim_and_its_runs_survive_a_move(tmp_path: Path) -> None:
    from recap_core.data.synthetic import make_aloha_hdf5, make_dataset

    site = tmp_path / "robot-lab"
    make_aloha_hdf5(site / "raw" / "demos", episodes=4, frames=30, success=[True] * 4, intervention=[1] * 4, seed=1)
    make_aloha_hdf5(site / "raw" / "rollouts", episodes=4, frames=30, success=[True, False, True, False], seed=2)
    make_dataset(site / "data" / "hub_demos", episodes=2, frames=20, with_recap=False, fps=50)
    moved, served = tmp_path / "elsewhere" / "robot-lab", []
    for block in (b for b in readme_blocks() if _skipped(b) is None):
        if block.startswith("recap serve") and site.exists():
            # Everything after training runs from the directory moved away from where it was made.
            moved.parent.mkdir()
            shutil.move(site, moved)
        cwd = moved if moved.exists() else site
        if block.startswith("recap serve"):
            served += [_serve_once(line, cwd) for line in block.splitlines() if line.strip()]
        else:
            _run_block(block, cwd)

    assert moved.exists() and len(served) == 3
    assert _episodes(moved / "data" / "all") == 8
    labeled = json.loads((moved / "data" / "all_labeled" / "meta" / "info.json").read_text())
    assert {"value_pred", "advantage"} <= set(labeled["features"])
    assert "recap-data" in (moved / "reports" / "episodes.html").read_text()
    for run in ("sft", "stage3", "value", "stage6", "imported"):
        assert (moved / "runs" / run / "config.json").is_file(), run
    assert served[0]["preset"] == "pi06-tiny" and served[0]["action_dim"] == 14 and served[0]["state_dim"] == 14
    assert served[0]["run_dir"] == str(moved / "runs" / "stage6")  # served from where it lies now
    assert served[1]["cfg_beta"] == 1.5 and served[1]["seed"] == 3
    assert served[2] == {"policy": "zeros", "action_horizon": 50, "action_dim": 14}
    imported = json.loads((moved / "runs" / "imported" / "config.json").read_text())
    assert imported["model"]["action_dim"] == 14  # the checkpoint's width, no --set needed
