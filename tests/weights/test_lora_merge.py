"""Merging LoRA into the base weights gives the same linear maps as the adapters did."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_core.models.gemma import GemmaConfig
from recap_core.models.lora import Einsum, LoRAConfig, lora_matmul
from recap_core.weights.lora_merge import ATTENTION_EQUATIONS, merge_lora

LORA = LoRAConfig(rank=3, alpha=6.0)  # scaling 2: a wrong scaling cannot pass
CFG = GemmaConfig(width=8, depth=2, mlp_dim=12, num_heads=4, num_kv_heads=1, head_dim=5, attn_lora=LORA, ffn_lora=LORA)
SHAPES = {"q_einsum": (4, 8, 5), "kv_einsum": (2, 1, 8, 5), "attn_vec_einsum": (4, 5, 8)}
INPUTS = {"q_einsum": (2, 3, 8), "kv_einsum": (2, 3, 8), "attn_vec_einsum": (2, 3, 4, 5)}


@pytest.mark.parametrize("name", sorted(ATTENTION_EQUATIONS))
def test_attention_einsum_merge(name: str) -> None:
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(CFG.depth):  # stacked on a leading depth axis, as in the model
        layer = Einsum(SHAPES[name], init=nnx.initializers.normal(1.0), lora=LORA, rngs=nnx.Rngs(1))
        layer.lora_b.value = jnp.asarray(rng.normal(size=layer.lora_b.shape), jnp.float32)
        layers.append(layer)
    key = ("llm", "layers", "attn", name)
    flat = {(*key, leaf): jnp.stack([getattr(layer, leaf)[...] for layer in layers]) for leaf in ("w", "lora_a", "lora_b")}
    merged = merge_lora(flat, [CFG])
    assert set(merged) == {(*key, "w")}
    x = jnp.asarray(rng.normal(size=INPUTS[name]), jnp.float32)
    for i, layer in enumerate(layers):
        want = layer(ATTENTION_EQUATIONS[name], x)
        got = jnp.einsum(ATTENTION_EQUATIONS[name], x, merged[(*key, "w")][i])
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_mlp_merge_second_expert() -> None:
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(2, 8, 12)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(2, 8, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(2, 3, 12)), jnp.float32)
    key = ("llm", "layers", "mlp_1")
    flat = {(*key, "gating_einsum"): w[None], (*key, "gating_einsum_lora_a"): a[None],
            (*key, "gating_einsum_lora_b"): b[None]}
    merged = merge_lora(flat, [GemmaConfig(8, 2, 12, 4, 1, 5), CFG])[(*key, "gating_einsum")][0]
    x = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    for half in range(2):
        want = lora_matmul(x, w[half], (a[half], b[half]), LORA)
        np.testing.assert_allclose(np.asarray(x @ merged[half]), np.asarray(want), rtol=1e-4, atol=1e-4)
