"""The real `predict_fn`: a trained value model, jitted once, data-parallel over local devices.

The run's own task (the same one `recap value train` trained with) turns loader batches into
model inputs on the host (`make_inputs(train=False)`: resize, normalise, tokenise), so labelling
sees exactly what training saw. The batch is split over every local device along one `data`
mesh axis; parameters are replicated (`fsdp_devices=1`, inference holds no optimiser state).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.data.dataset import DatasetInfo
from recap_core.label.checkpoint import ValueCheckpoint
from recap_core.label.predict import Batch, InferenceFrames, PredictFn, PredictorFactory
from recap_core.runtime import compiler_options

ForwardFn = Callable[[Any, dict[str, Any]], Any]
DEFAULT_IMAGE_SIZE = (224, 224)


def _call_predict(model: Any, inputs: dict[str, Any]) -> Any:
    return model.predict(inputs)


def make_predict_fn(task: Any, model: Any, mesh: Any, forward: ForwardFn = _call_predict) -> PredictFn:
    """Host batch -> values [B]: `task.make_inputs`, shard over `mesh`, one jitted forward."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    graphdef, state = nnx.split(model)
    n_dev = mesh.devices.size
    data_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))

    def run(state: Any, inputs: dict[str, Any]) -> Any:
        return forward(nnx.merge(graphdef, state), inputs)

    run = jax.jit(run, compiler_options=compiler_options(state))

    rng = np.random.default_rng(0)  # make_inputs(train=False) draws nothing; the API wants one

    def predict(batch: Batch) -> np.ndarray:
        inputs = task.make_inputs(batch, rng, train=False)
        size = len(next(iter(jax.tree.leaves(inputs))))
        pad = (-size) % n_dev
        if pad:  # every device gets the same number of rows
            inputs = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]), inputs)
        inputs = jax.device_put(inputs, data_sharding)
        return np.asarray(run(state, inputs), dtype=np.float32).reshape(-1)[:size]

    return predict


def load_value_model(ckpt: ValueCheckpoint, *, use_ema: bool, task_factory: Callable[[Any], Any]) -> tuple[Any, Any, Any]:
    """(task, model, mesh) of a finished value run, params on every local device."""
    from flax import nnx

    from recap_core.config import load_run_config
    from recap_core.train.init import load_parts
    from recap_core.train.sharding import make_mesh

    config = load_run_config(ckpt.run_dir / "config.json")
    mesh = make_mesh(1)
    task = task_factory(config)
    parts = load_parts(ckpt.run_dir, ckpt.step, mesh, task_factory=task_factory, use_ema=use_ema)
    return task, nnx.merge(parts.graphdef, parts.trainable, parts.frozen), mesh


def value_task_factory(cameras: tuple[str, ...], run_dir: Path | None = None) -> Callable[[Any], Any]:
    """The task `recap value train` builds for a run config (`recap_core.train.jobs.task_for_config`),
    with the tokenizer stored in `run_dir` when the run has one."""
    from recap_core.data.loader import camera_name
    from recap_core.train.jobs import task_for_config

    names = tuple(camera_name(k) for k in cameras)
    return lambda config: task_for_config(config, cameras=names, run_dir=run_dir)


def _image_size(task: Any) -> tuple[int, int]:
    size = getattr(task, "image_size", None)
    if size is None:
        size = getattr(getattr(task, "config", None), "image_size", DEFAULT_IMAGE_SIZE)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def value_predictor(
    ckpt: ValueCheckpoint,
    *,
    use_ema: bool,
    task_factory: Callable[[Any], Any] | None = None,
    forward: ForwardFn = _call_predict,
) -> PredictorFactory:
    """A PredictorFactory for `label_dataset`; the model is loaded only when it is called."""

    def build(info: DatasetInfo, cameras: tuple[str, ...]) -> tuple[Callable[[np.ndarray], Batch], PredictFn]:
        factory = task_factory or value_task_factory(cameras, ckpt.run_dir)
        task, model, mesh = load_value_model(ckpt, use_ema=use_ema, task_factory=factory)
        frames = InferenceFrames(info.root, cameras=cameras, image_size=_image_size(task))
        return frames, make_predict_fn(task, model, mesh, forward)

    return build
