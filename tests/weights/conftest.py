"""Shared by the weights tests: tiny abstract models, the installed CLI, a trained tiny run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from recap_core.models.pi0 import Pi0, Pi0Config

TINY = Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy_expert", siglip_variant="tiny",
                 image_size=32, image_keys=("base_0_rgb",), action_dim=4, action_horizon=3, vocab_size=64,
                 dtype="float32", remat=False)
TINY_LORA = dataclasses.replace(TINY, paligemma_variant="dummy_lora", action_expert_variant="dummy_expert_lora")


def abstract_policy(config: Pi0Config) -> Pi0:
    return nnx.eval_shape(lambda: Pi0(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="session")
def tiny_full() -> Pi0:
    return abstract_policy(TINY)


@pytest.fixture(scope="session")
def tiny_lora() -> Pi0:
    return abstract_policy(TINY_LORA)


# ---------------------------------------------------------------- runs and the installed CLI

@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """One XLA compilation cache for this session and the `recap` processes it starts.

    Every load of a run jits the model's init afresh (a new closure, so jax's in-memory cache
    misses); on 2 CPU cores each such compile takes tens of seconds. The persistent cache is keyed
    by the program, so each tiny model compiles once per session.
    """
    from jax._src import compilation_cache  # reset: an earlier test may have compiled without a cache

    # scripts/test.sh shares one cache dir across sessions; a bare `pytest` gets a private one
    path = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp_path_factory.mktemp("jax_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(path))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        compilation_cache.reset_cache()
        yield path
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()

def recap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real `recap` command (same interpreter), from `cwd`, with a private cache dir."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "RECAP_CACHE_DIR": str(cwd / "cache"),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "recap_cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def norm_stats_doc(dims: int = 6) -> dict:
    """An openpi norm_stats.json document for `dims`-dimensional state and actions."""
    entry = {"mean": [0.1] * dims, "std": [1.0] * dims, "q01": [-1.0] * dims, "q99": [1.0] * dims}
    return {"norm_stats": {"state": entry, "actions": entry}}


def run_params(run: Path, step: int | None = None) -> dict:
    """{key: numpy array} of a recap run's model (EMA weights when it has them), via the loop's loader."""
    from recap_core.train.init import load_parts
    from recap_core.train.jobs import task_for_config
    from recap_core.train.sharding import make_mesh
    from recap_core.weights.parts import parts_pure_dict

    parts = load_parts(run, step, make_mesh(1), task_factory=task_for_config, use_ema=True)
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(parts_pure_dict(parts)).items()}


def assert_same_params(got: dict, want: dict) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg="/".join(key))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dir holding `ds` (tiny policy dataset: one camera, 6-dim state/action) for CLI runs."""
    from recap_core.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("weights_cli")
    make_dataset(root / "ds", episodes=2, frames=8, cameras=("cam_high",), state_dim=6, action_dim=6)
    return root


@pytest.fixture(scope="session")
def sft_run(workdir: Path) -> Path:
    """`recap sft` pi05-tiny, 2 steps from random init: a real run written by the training loop."""
    result = recap("sft", "ds", "--preset", "pi05-tiny", "--init", "random", "--run-dir", "runs/sft",
                   "--steps", "2", "--batch-size", "2", "--no-preflight", "--set", "val.fraction=0",
                   "--set", "checkpoint.every=2", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "runs" / "sft"
