"""Shared test helpers."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

RECAP = [sys.executable, "-m", "recap_cli.main"]
REPO = Path(__file__).resolve().parents[1]

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
              check: bool = False, command: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `recap` CLI in a subprocess (as a user would); `command`: another `recap` than this
    checkout's (e.g. the wheel's, from `wheel_env`)."""
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([*(command or RECAP), *map(str, args)], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"recap {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_recap_json(*args: str, **kwargs) -> tuple[int, dict]:
    proc = run_recap(*args, **kwargs)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON on stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}") from exc


_WHEEL: list[tuple[Path, dict[str, str]]] = []


def wheel_env() -> tuple[Path, dict[str, str]]:
    """recap as a user who pip-installs it gets it: a wheel built from the files git tracks, installed
    into a new virtual environment that borrows the locked environment's packages (a path entry, so
    this checkout's editable install is not seen). Returns that environment's `recap` script and the
    environment variables to run it with (no PYTHONPATH). Built once per test process."""
    if _WHEEL:
        return _WHEEL[0]
    root = Path(tempfile.mkdtemp(prefix="recap-wheel-"))
    atexit.register(shutil.rmtree, root, True)
    tracked = subprocess.run(["git", "ls-files", "-z", "pyproject.toml", "README.md", "recap_core", "recap_cli"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, tracked):
        (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / "src" / name)
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "build", "-q", "--wheel", "--no-build-isolation", "--python", sys.executable,
                    "-o", str(root / "wheel"), str(root / "src")], check=True, capture_output=True)
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "recap_locked_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next((root / "wheel").glob("recap-*.whl"))
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), "--no-deps", "--offline", str(wheel)],
                   check=True, capture_output=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", COLUMNS="200")
    _WHEEL.append((venv / "bin" / "recap", env))
    return _WHEEL[0]


@pytest.fixture
def recap_cli():
    return run_recap
