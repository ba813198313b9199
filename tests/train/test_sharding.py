"""The size rule for FSDP and a real multi-device run (4 fake CPU devices in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec

from recap_core.errors import ConfigError
from recap_core.train.sharding import FSDP_AXIS, make_mesh, param_spec


def test_size_rule() -> None:
    big = (1024, 4096)  # 16 MiB in f32
    assert param_spec(big, 4, 1) == PartitionSpec()
    assert param_spec(big, 4, 8) == PartitionSpec(None, FSDP_AXIS)  # largest axis first
    assert param_spec((4096, 1000), 4, 8) == PartitionSpec(FSDP_AXIS, None)
    assert param_spec((1001, 4097), 4, 8) == PartitionSpec()  # nothing divides: replicate
    assert param_spec((64, 64), 4, 8) == PartitionSpec()  # small: replicate
    assert param_spec((10_000_000,), 4, 8) == PartitionSpec()  # vectors: replicate


def test_fsdp_must_divide_devices() -> None:
    with pytest.raises(ConfigError, match="fsdp_devices=3"):
        make_mesh(3)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from recap_core.train.loop import train
    from recap_core.train.sharding import make_mesh
    from recap_core.train.state import init_parts
    from recap_core.train.metrics import read_metrics
    from tests.train.toy import ToyTask, toy_config, toy_job

    hidden = 131072  # the backbone kernel is 4 MiB: big enough to shard
    out = {"devices": jax.device_count()}
    for fsdp in (1, 2):
        cfg = toy_config(steps=2, fsdp_devices=fsdp, batch_size=8, **{"checkpoint.every": 2})
        parts = init_parts(ToyTask(hidden=hidden), cfg.seed, make_mesh(fsdp))
        out[f"spec{fsdp}"] = str(parts.frozen["backbone"]["kernel"].value.sharding.spec)
        train(toy_job(cfg, hidden=hidden), cfg, f"{sys.argv[1]}/run{fsdp}")
        out[f"loss{fsdp}"] = [r["loss"] for r in read_metrics(f"{sys.argv[1]}/run{fsdp}") if r["split"] == "train"]
    # Trained in full, the Adam moments and the EMA of a sharded param are sharded like it (and the
    # step compiled ahead of time takes its own output state on the next steps).
    from recap_core.train.step import init_train_state
    cfg = toy_config(steps=3, fsdp_devices=2, batch_size=8, **{"checkpoint.every": 3})
    parts = init_parts(ToyTask(False, hidden), cfg.seed, make_mesh(2))
    state = init_train_state(parts, cfg)
    mu = [x for x in jax.tree.leaves(state["opt_state"]) if x.shape == (8, hidden)]
    out["moment_specs"] = sorted({str(x.sharding.spec) for x in mu})
    out["ema_spec"] = str(state["ema"]["backbone"]["kernel"].value.sharding.spec)
    out["full_steps"] = train(toy_job(cfg, freeze_backbone=False, hidden=hidden), cfg, f"{sys.argv[1]}/full").final_step
    print(json.dumps(out))
    """
)


def test_fsdp_run_on_four_devices_matches_data_parallel(tmp_path: Path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert "fsdp" in out["spec2"] and "fsdp" not in out["spec1"]
    for a, b in zip(out["loss1"], out["loss2"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert len(out["moment_specs"]) == 1 and "fsdp" in out["moment_specs"][0] and "fsdp" in out["ema_spec"]
    assert out["full_steps"] == 3
