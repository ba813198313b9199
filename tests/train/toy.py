"""A tiny regression task for testing the generic loop without the real models.

The model has a `backbone` (frozen when `freeze_backbone`) and a `head`; the data is a fixed
linear map with noise, served by a resumable source like the real loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_core.config import RunConfig, resolve_run_config
from recap_core.train.loop import TrainingJob

IN_DIM, HIDDEN, OUT_DIM = 8, 16, 2


class ToyModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = HIDDEN):
        self.backbone = nnx.Linear(IN_DIM, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, OUT_DIM, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.head(jnp.tanh(self.backbone(x)))


class ToyTask:
    name = "toy"

    def __init__(self, freeze_backbone: bool = True, hidden: int = HIDDEN):
        self.freeze_backbone = freeze_backbone
        self.hidden = hidden

    def build_model(self, rngs: nnx.Rngs) -> ToyModel:
        return ToyModel(rngs, self.hidden)

    def frozen_filter(self) -> Any:
        return nnx.PathContains("backbone") if self.freeze_backbone else nnx.Nothing

    def make_inputs(self, batch: dict[str, Any], rng: np.random.Generator, *, train: bool) -> dict[str, Any]:
        # Host-side randomness, like the finetune prompt dropout: must replay on resume.
        noise = rng.normal(0, 0.01, batch["y"].shape).astype(np.float32) if train else 0.0
        return {"x": batch["x"], "y": batch["y"] + noise}

    def loss(self, model: ToyModel, inputs: dict[str, Any], rng: Any) -> tuple[Any, dict[str, Any]]:
        err = model(inputs["x"]) - inputs["y"]
        return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}


class ToySource:
    """Deterministic batches; the position is the number of batches served."""

    def __init__(self, batch_size: int, seed: int = 0):
        self.batch_size = batch_size
        self.seed = seed
        self.position = 0
        self.w = np.random.default_rng(1234).normal(size=(IN_DIM, OUT_DIM)).astype(np.float32)

    def batch_at(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i])
        x = rng.normal(size=(self.batch_size, IN_DIM)).astype(np.float32)
        return {"x": x, "y": np.tanh(x @ self.w)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.position < 10_000:
            batch = self.batch_at(self.position)
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.position = int(state["position"])


def toy_config(stage: str = "sft", **flags: Any) -> RunConfig:
    base = {
        "steps": 6,
        "batch_size": 8,
        "log_every": 1,
        "optim.peak_lr": 1e-2,
        "optim.warmup_steps": 0,
        "optim.decay_steps": 1000,
        "checkpoint.every": 3,
        "checkpoint.keep_last": 5,
        "checkpoint.keep_every": None,
        "checkpoint.async_save": False,
    }
    base.update(flags)
    return resolve_run_config(stage, "toy", "unused", flags=base, environ={})


def toy_job(config: RunConfig, freeze_backbone: bool = True, hidden: int = HIDDEN) -> TrainingJob:
    task = ToyTask(freeze_backbone, hidden)
    return TrainingJob(
        task=task,
        task_factory=lambda cfg: ToyTask(freeze_backbone, hidden),
        train_data=ToySource(config.batch_size // 1, seed=config.seed),
        val_batches=lambda: (ToySource(config.batch_size, seed=999).batch_at(i) for i in range(2)),
        assets={"norm_stats.json": "{}\n"},
    )
