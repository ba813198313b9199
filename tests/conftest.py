"""Shared test helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

RECAP = [sys.executable, "-m", "recap_cli.main"]

# Property tests draw the same examples on every run, so CI cannot fail by chance on a case nobody
# changed code for; explore new examples locally with `pytest --hypothesis-profile explore`.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a `slow` test run first: with one file per worker at a time (`--dist loadfile`),
    a long end-to-end file that starts last keeps one worker busy while the other idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order within a file is kept


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


def tiny_policy_config(stage: str, dataset: Path, tokenizer: Path, *, model: dict | None = None, **flags: object):
    """A one-step run config of the tiny pi0 (`sft`: pi0.5, `finetune`: pi0.6) on `dataset`."""
    from recap_core.config import resolve_run_config

    base = {"steps": 1, "batch_size": 2, "log_every": 1, "checkpoint.every": 1, "val.fraction": 0.0}
    preset = "pi06-tiny" if stage == "finetune" else "pi05-tiny"
    return resolve_run_config(stage, preset, dataset, flags={**base, **flags}, environ={},
                              model={**(model or TINY_PI0), "pi06": stage == "finetune"},
                              sets=[f"tokenizer={tokenizer}"])


def train_tiny_policy(config, run: Path) -> Path:
    """Train `config` into `run` in this process (the real loader, model and checkpoints)."""
    from recap_core.train.jobs import build_job
    from recap_core.train.loop import train

    train(build_job(config, run, resuming=False), config, run)
    return run


def panel_text(panel: str) -> str:
    """An error panel's text as one line: borders gone, wrapped lines joined (rich fixes a console's
    width when it is made, so a panel can be 80 columns whatever COLUMNS says later)."""
    return " ".join("".join(" " if "\u2500" <= ch <= "\u257f" else ch for ch in panel).split())


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
