"""Synthetic checkpoints in the exact published layouts, at any (tiny) size, for tests and demos.

Every tensor gets a distinct sentinel: tensor number i holds `(i + 1) * 4096 + position`, all
integers below 2**24, so float32 keeps them exact and a value read back says which tensor it
came from and where in it (a swapped or transposed tensor, or layers stacked in the wrong order,
cannot go unnoticed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.weights.bundle import SIGLIP_NPZ
from recap_core.weights.layout import BUNDLE_GEMMA, BUNDLE_SIGLIP, BUNDLE_TOKENIZER
from recap_core.weights.match import abstract_flat
from recap_core.weights.orbax_tree import Key, key_str, save_tree
from recap_core.weights.stacking import unstack_key

_STRIDE = 4096


def sentinel_params(model_or_state: Any, *, offset: int = 0) -> dict[Key, np.ndarray]:
    """{key: float32 array} with a distinct sentinel per tensor, keys in sorted order."""
    flat = abstract_flat(model_or_state)
    out = {}
    for i, key in enumerate(sorted(flat)):
        shape = flat[key].shape
        size = int(np.prod(shape))
        out[key] = ((offset + i + 1) * _STRIDE + np.arange(size) % _STRIDE).astype(np.float32).reshape(shape)
    return out


def _per_layer(flat: Mapping[Key, np.ndarray], stacked_name: str) -> dict[Key, np.ndarray]:
    out: dict[Key, np.ndarray] = {}
    for key, value in flat.items():
        if stacked_name in key:
            for layer in range(value.shape[0]):
                out[unstack_key(key, layer)] = value[layer]
        else:
            out[key] = value
    return out


def write_bundle(
    root: Path,
    value_params: Mapping[Key, np.ndarray],
    *,
    ema_params: Mapping[Key, np.ndarray] | None = None,
    gemma_layout: str = "gemma-library",
    step: int = 20_000,
    tokenizer: Path | None = None,
    with_text_tower: bool = True,
) -> Path:
    """Write a VLM bundle from value-model params (our names).

    gemma_layout "gemma-library": the orbax item holds only the LLM as the gemma library stores
    it (`transformer/layer_<i>/...`, MLP weights under `/w`); "value-snapshot": a whole pistar
    value-model snapshot (`llm/layers/...`, `img/...`, heads), as pistar's training writes it.
    SigLIP goes to a big_vision npz with per-block keys `params/img/Transformer/encoderblock_<i>`.
    """
    root = Path(root)
    img = {k: v for k, v in value_params.items() if k[0] == "img"}

    def item(params: Mapping[Key, np.ndarray]) -> dict[str, Any]:
        from flax import traverse_util

        if gemma_layout == "value-snapshot":
            return traverse_util.unflatten_dict(dict(params))
        if gemma_layout != "gemma-library":
            raise ValueError(f"unknown gemma_layout {gemma_layout!r}")
        out = {}
        for key, value in _per_layer({k: v for k, v in params.items() if k[0] == "llm"}, "layers").items():
            key = ("transformer", *key[1:])
            if key[-1] in ("gating_einsum", "linear"):
                key = (*key, "w")
            out[key] = value
        return traverse_util.unflatten_dict(out)

    tree = {"params": item(value_params), "step": np.int64(step)}
    if ema_params is not None:
        tree["ema_params"] = item(ema_params)
    save_tree(root / BUNDLE_GEMMA, tree)
    arrays = {"params/" + key_str(k): v for k, v in _per_layer(img, "encoderblock").items()}
    if with_text_tower:  # what the real SigLIP2 file also holds; the loader must skip it
        arrays["params/txt/Encoder_0/encoder_norm/scale"] = np.ones(4, np.float32)
        arrays["params/t"] = np.zeros(1, np.float32)
        arrays["params/b"] = np.zeros(1, np.float32)
        arrays["params/img/MAPHead_0/probe"] = np.zeros((1, 1, 4), np.float32)
    (root / BUNDLE_SIGLIP).mkdir(parents=True, exist_ok=True)
    np.savez(root / BUNDLE_SIGLIP / SIGLIP_NPZ, **arrays)
    if tokenizer is not None:
        (root / BUNDLE_TOKENIZER).write_bytes(Path(tokenizer).read_bytes())
    return root
