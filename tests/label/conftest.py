"""Tiny datasets and a deterministic predict_fn for the label tests (datasets are read-only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def src_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 episodes (12/16/8/10/14 frames), two tasks, one 16x16 video camera.

    Episode 0 is an all-intervention demo, episodes 1 and 3 have a human correction in the
    middle, the last episode fails.
    """
    from recap_core.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("label") / "ds",
        episodes=5,
        frames=[12, 16, 8, 10, 14],
        cameras=("cam_high",),
        tasks=("pick up the cube", "open the drawer"),
        image_size=16,
        state_dim=4,
        action_dim=4,
    )


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def value_from_batch(batch: dict) -> np.ndarray:
    """A stand-in critic: value_label plus a deterministic per-frame wobble."""
    return (batch["value_label"] - 0.03 * (batch["index"] % 5)).astype(np.float32)


class TabularFrames:
    """load_batch without images: the tabular columns of the requested rows."""

    def __init__(self, root: Path) -> None:
        from recap_core.data.dataset import column_array, open_dataset, read_table

        table = read_table(open_dataset(root), ["value_label", "frame_index"])
        self.columns = {c: column_array(table, c) for c in ("value_label", "index", "episode_index", "frame_index")}

    def __call__(self, rows: np.ndarray) -> dict:
        return {k: v[rows] for k, v in self.columns.items()}


def tabular_predictor(info, cameras):
    return TabularFrames(info.root), value_from_batch


def _train_toy_run(root: Path, stage: str) -> Path:
    from recap_core.train.loop import train
    from tests.train.toy import toy_config, toy_job

    config = toy_config(stage, steps=2, **{"checkpoint.every": 2})
    train(toy_job(config), config, root)
    return root


@pytest.fixture(scope="session")
def toy_value_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `value`-stage run of the training loop's toy model (2 steps)."""
    return _train_toy_run(tmp_path_factory.mktemp("runs") / "value", "value")


@pytest.fixture(scope="session")
def toy_policy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `sft`-stage run: a checkpoint that is not a value model."""
    return _train_toy_run(tmp_path_factory.mktemp("runs") / "sft", "sft")
