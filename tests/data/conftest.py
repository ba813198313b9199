"""Session-scoped tiny datasets shared by the data tests (and usable from other test folders).

Fixtures return paths of datasets that tests must treat as read-only; a test that edits a dataset
copies it first (`copy_dataset`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v3.0 with RECAP columns: 3 episodes x 20 frames, two 32x32 video cameras, 14-dim state/action."""
    from recap_core.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny") / "ds", episodes=3, frames=20)


@pytest.fixture(scope="session")
def tiny_dataset_two_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v3.0 with RECAP columns, 4 episodes of lengths 12/16/8/10 over two tasks, one camera."""
    from recap_core.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("tiny2") / "ds",
        episodes=4,
        frames=[12, 16, 8, 10],
        cameras=("cam_high",),
        tasks=("pick up the cube", "open the drawer"),
        state_dim=6,
        action_dim=7,
    )


@pytest.fixture(scope="session")
def tiny_plain_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v3.0 WITHOUT RECAP columns (the input of `recap convert lerobot`)."""
    from recap_core.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("plain") / "ds", episodes=2, frames=15, cameras=("cam_high",), with_recap=False)


@pytest.fixture(scope="session")
def tiny_aloha_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw ALOHA HDF5: 2 episodes x 12 frames, two cameras, the second episode failed."""
    from recap_core.data.synthetic import make_aloha_hdf5

    return make_aloha_hdf5(tmp_path_factory.mktemp("raw") / "raw", episodes=2, frames=12)


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def recap(*args: str) -> subprocess.CompletedProcess:
    # A wide terminal so rich does not fold the long temp paths inside the error panel.
    env = {**os.environ, "COLUMNS": "400", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "recap_cli.main", *args], capture_output=True, text=True, timeout=300, env=env)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()
