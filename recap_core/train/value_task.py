"""The value task (`recap value train`): loader batch -> value-model inputs -> C51 loss.

Host side: images become float32 in [-1, 1] (one entry per dataset camera), the task text becomes
the value prompt (`"{task}\\nValue:"`, Gemma3 tokenizer, 48 tokens), and `value_label` is the
target. Validation adds what matters for labelling: MAE of the predicted value and its rank
correlation with `value_label` within each held-out episode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.config import RunConfig
from recap_core.errors import DatasetError
from recap_core.stages import is_tiny
from recap_core.train.validation import per_episode_value_metrics


class ValueTask:
    name = "value"

    def __init__(self, model_config: Any, tokenizer: Any, cameras: Sequence[str]) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.cameras = tuple(cameras)
        self.image_size = (model_config.image_size, model_config.image_size)
        if not 1 <= len(self.cameras) <= model_config.max_cameras:
            raise DatasetError(
                f"the value model takes 1 to {model_config.max_cameras} cameras; the dataset gives "
                f"{len(self.cameras)} ({', '.join(self.cameras) or 'none'})",
                fix="choose the cameras with --cameras",
            )

    def build_model(self, rngs: Any) -> Any:
        from recap_core.models.value import ValueModel

        return ValueModel(self.model_config, rngs=rngs)

    def frozen_filter(self) -> Any:
        from recap_core.models.value import frozen_filter

        return frozen_filter(self.model_config.freeze)

    def make_inputs(self, batch: Mapping[str, Any], rng: np.random.Generator, *, train: bool) -> dict[str, Any]:
        size = self.model_config.image_size
        images, masks = {}, {}
        b = len(batch["prompt"])
        for cam in self.cameras:
            img = np.asarray(batch["images"][cam])
            if img.shape[1:3] != (size, size):
                raise DatasetError(
                    f"camera {cam!r} images are {img.shape[1]}x{img.shape[2]}, the value model expects {size}x{size}",
                    fix="load the dataset with the model's image size (the loader resizes with padding)",
                )
            images[cam] = img.astype(np.float32) / 127.5 - 1.0
            masks[cam] = np.asarray(batch.get("image_masks", {}).get(cam, np.ones((b,), bool)), bool)
        out: dict[str, Any] = {"images": images, "image_masks": masks,
                               **self.tokenizer.tokenize_batch([str(p) for p in batch["prompt"]])}
        if "value_label" in batch:
            out["value_label"] = np.asarray(batch["value_label"], np.float32)
        return out

    def loss(self, model: Any, inputs: dict[str, Any], rng: Any) -> tuple[Any, dict[str, Any]]:
        return model.loss(inputs)

    def eval_outputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        import jax.numpy as jnp

        from recap_core.models.value import expected_value

        logits = model.logits(inputs)
        return {"value": expected_value(logits, self.model_config), "bin": jnp.argmax(logits, axis=-1)}

    def summarize_eval(self, outputs: dict[str, np.ndarray], batches: list[Mapping[str, Any]]) -> dict[str, float]:
        target = np.concatenate([np.asarray(b["value_label"]) for b in batches])
        episode = np.concatenate([np.asarray(b["episode_index"]) for b in batches])
        out = per_episode_value_metrics(outputs["value"], target, episode)
        out["bin_accuracy"] = bin_accuracy(outputs["bin"], target, self.model_config)
        return out


def bin_accuracy(predicted_bin: np.ndarray, target: np.ndarray, config: Any) -> float:
    """Share of frames whose most likely bin is the bin nearest their `value_label` (clipped to the
    support): the figure peers report to show a value model memorising its episodes (e.g. 93% on
    training episodes against 18% held out)."""
    clipped = np.clip(np.asarray(target, np.float64).reshape(-1), config.v_min, config.v_max)
    nearest = np.rint((clipped - config.v_min) / config.bin_width).astype(np.int64)
    predicted = np.asarray(predicted_bin).reshape(-1)
    return float(np.mean(predicted == nearest)) if len(predicted) else float("nan")


def value_task(config: RunConfig, cameras: Sequence[str], *, run_dir: Path | None = None) -> ValueTask:
    """The value task of a run config (`model.name` is the value preset, `freeze_mode` its freezing)."""
    from recap_core.models.tokenizer import GEMMA3_VOCAB_SIZE, ValueTokenizer
    from recap_core.models.value import value_config
    from recap_core.train.run_tokenizer import tokenizer_path

    name = str(config.model.get("name", config.preset))
    targets = {k: config.model[k] for k in ("target", "hl_gauss_sigma") if k in config.model}
    model_config = value_config(name, freeze=config.freeze_mode or "all_backbones", **targets)
    tiny = is_tiny(config.preset)
    tokenizer = ValueTokenizer(
        tokenizer_path(config, run_dir), model_config.max_token_len, expected_vocab_size=None if tiny or config.tokenizer else GEMMA3_VOCAB_SIZE
    )
    cameras = tuple(cameras or config.cameras or ())
    if not cameras:
        raise DatasetError(
            f"value run config for {config.dataset} names no cameras",
            fix="train with `recap value train` (it records the cameras) or pass --cameras",
        )
    return ValueTask(model_config, tokenizer, cameras)
