"""What the training loop needs from a stage (sft, finetune, value): the `Task` protocol.

The loop is generic; a task says how to build the model, what stays frozen, how a numpy batch
from the loader becomes model inputs (on the host: normalisation, tokenisation) and what the
loss is. Validation metrics beyond the loss are optional.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

Batch = dict[str, Any]


@runtime_checkable
class BatchSource(Protocol):
    """A resumable stream of numpy batches (this process's share of the global batch)."""

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Task(Protocol):
    name: str

    def build_model(self, rngs: Any) -> Any:
        """A fresh nnx model (called under `nnx.eval_shape` and inside a jitted init)."""

    def frozen_filter(self) -> Any:
        """An nnx filter selecting the params that must not train (nnx.Nothing: train all)."""

    def make_inputs(self, batch: Batch, rng: np.random.Generator, *, train: bool) -> dict[str, Any]:
        """Host side: the loader's numpy batch -> the model's input arrays (numpy)."""

    def loss(self, model: Any, inputs: dict[str, Any], rng: Any) -> tuple[Any, dict[str, Any]]:
        """Device side: scalar loss and a dict of scalar metrics."""


class EvalTask(Protocol):
    """Optional: per-sample outputs gathered over validation and summarised once."""

    def eval_outputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]: ...

    def summarize_eval(self, outputs: dict[str, np.ndarray], batches: list[Batch]) -> dict[str, float]: ...
