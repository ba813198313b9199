"""kill -9 in the middle of a checkpoint save leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from recap_core.config import CheckpointConfig
from recap_core.train.checkpoint import RunCheckpoints, abstract_like

WRITER = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp
    from recap_core.config import CheckpointConfig
    from recap_core.train.checkpoint import RunCheckpoints

    ckpts = RunCheckpoints(sys.argv[1], CheckpointConfig(keep_last=3, keep_every=None, async_save=True))
    ckpts.save(1, {"w": jnp.full((4, 1024, 1024), 1.0)}, {"data": {"position": 1}})
    ckpts.wait()
    print("saved 1", flush=True)
    for step in range(2, 100):  # keep saving so the kill lands inside a save
        ckpts.save(step, {"w": jnp.full((4, 1024, 1024), float(step))}, {"data": {"position": step}})
        print("saving", step, flush=True)
        ckpts.wait()
    """
)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("saving 2"):
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert any(line.startswith("saved 1") for line in lines)
    ckpts = RunCheckpoints(directory, CheckpointConfig(), read_only=True)
    latest = ckpts.latest_step()
    assert latest is not None and latest >= 1
    if any(p.name.startswith(f"{latest + 1}.orbax-checkpoint-tmp") for p in directory.iterdir()):
        pass  # the kill landed inside the save of latest + 1: that half-written step is ignored
    target = abstract_like({"w": jnp.zeros((4, 1024, 1024))})
    state, meta = ckpts.restore(latest, target)
    assert meta["data"]["position"] == latest
    assert np.all(np.asarray(jax.device_get(state["w"])) == float(latest))
