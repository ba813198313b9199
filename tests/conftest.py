"""Shared test helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECAP = [sys.executable, "-m", "recap_cli.main"]

# The tiny pi0 architecture policy tests train and serve (smaller prompt and horizon than pi05-tiny).
TINY_PI0 = {
    "kind": "pi0",
    "paligemma_variant": "dummy",
    "action_expert_variant": "dummy_expert",
    "siglip_variant": "tiny",
    "image_size": 32,
    "action_dim": 8,
    "action_horizon": 4,
    "max_token_len": 48,
    "vocab_size": 512,
    "dtype": "float32",
    "remat": False,
}


def run_recap(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600,
              check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `recap` CLI in a subprocess (as a user would)."""
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([*RECAP, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"recap {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_recap_json(*args: str, **kwargs) -> tuple[int, dict]:
    proc = run_recap(*args, **kwargs)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON on stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}") from exc


@pytest.fixture
def recap_cli():
    return run_recap
