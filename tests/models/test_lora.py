"""LoRA: zero-B adapters leave the model unchanged, the update maths, openpi names, freeze filter."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_core.models import gemma, lora

BASE = gemma.GemmaConfig(width=16, depth=2, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=8)
EXPERT = dataclasses.replace(BASE, width=8, mlp_dim=16)
ADAPTER = lora.LoRAConfig(rank=2, alpha=4.0)


def _with_lora(config: gemma.GemmaConfig) -> gemma.GemmaConfig:
    return dataclasses.replace(config, attn_lora=ADAPTER, ffn_lora=ADAPTER)


def _paths(model: nnx.Module, filt=nnx.Param) -> set[str]:
    return {lora.path_string(p) for p, _ in nnx.state(model, filt).flat_state()}


@nnx.jit  # one compilation instead of one per eager op
def _forward(model: gemma.Gemma) -> list[jax.Array]:
    rng = np.random.default_rng(0)
    prefix = model.embed(jnp.asarray(rng.integers(0, 32, size=(1, 5))))
    suffix = jnp.asarray(rng.normal(size=(1, 3, EXPERT.width)), jnp.float32)
    valid = jnp.ones((1, 8), bool)
    mask = gemma.make_attn_mask(valid, jnp.asarray([False] * 5 + [True, False, False]))
    outs, _ = model([prefix, suffix], jnp.arange(8)[None], mask, [None, jnp.ones((1, EXPERT.width))])
    return outs


def _pair(configs, seed: int = 0) -> tuple[gemma.Gemma, gemma.Gemma]:
    make = lambda cs: gemma.Gemma(cs, adaptive=[False, True], vocab_size=32, dtype=jnp.float32,  # noqa: E731
                                  remat=False, rngs=nnx.Rngs(seed))
    return make([BASE, EXPERT]), make(configs)


def test_zero_b_lora_equals_the_base_model() -> None:
    base, adapted = _pair([_with_lora(BASE), _with_lora(EXPERT)])
    # open the adaRMS gates (zero at init) so the action expert's adapters matter too
    for norm in (base.layers.pre_attention_norm_1, base.layers.pre_ffw_norm_1):
        norm.Dense_0.bias[...] = jnp.full(norm.Dense_0.bias.shape, 0.5)
    # same base weights: the base model's state has every non-LoRA path of the adapted one
    nnx.update(adapted, nnx.state(base, nnx.Param))
    np.testing.assert_array_equal(np.asarray(adapted.layers.mlp.linear[...]), np.asarray(base.layers.mlp.linear[...]))
    for a, b in zip(_forward(base), _forward(adapted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and a non-zero B does change the output (the adapter is wired in)
    adapted.layers.mlp_1.linear_lora_b[...] = jnp.ones_like(adapted.layers.mlp_1.linear_lora_b[...])
    assert float(jnp.abs(_forward(adapted)[1] - _forward(base)[1]).max()) > 1e-3
    adapted.layers.attn.q_einsum.lora_b[...] = jnp.ones_like(adapted.layers.attn.q_einsum.lora_b[...])
    assert float(jnp.abs(_forward(adapted)[0] - _forward(base)[0]).max()) > 1e-3


def test_einsum_update_is_scaled_low_rank_product() -> None:
    layer = lora.Einsum((3, 4, 5), init=jax.nn.initializers.normal(1.0), lora=ADAPTER, rngs=nnx.Rngs(0))
    layer.lora_b[...] = jax.random.normal(jax.random.key(1), layer.lora_b.shape)
    x = jax.random.normal(jax.random.key(2), (2, 7, 4))
    w, a, b = layer.w[...], layer.lora_a[...], layer.lora_b[...]
    assert a.shape == (3, 4, 2) and b.shape == (3, 2, 5)  # openpi's lora_a / lora_b shapes
    expected = np.einsum("btd,ndh->btnh", x, w) + np.einsum("btd,ndr,nrh->btnh", x, a, b) * 2.0
    np.testing.assert_allclose(np.asarray(layer("BTD,NDH->BTNH", x)), expected, rtol=1e-5, atol=1e-5)
    assert lora.lora_equations("BTNH,NHD->BTD") == ("BTNH,NHL->BTL", "BTL,NLD->BTD")


def test_lora_param_names_follow_openpi() -> None:
    adapted = nnx.eval_shape(lambda: gemma.Gemma([_with_lora(BASE), EXPERT], adaptive=[False, True],
                                                 vocab_size=32, rngs=nnx.Rngs(0)))
    paths = _paths(adapted)
    for expected in ("layers/attn/q_einsum/lora_a", "layers/attn/kv_einsum/lora_b",
                     "layers/attn/attn_vec_einsum/lora_a", "layers/mlp/gating_einsum_lora_a",
                     "layers/mlp/gating_einsum_lora_b", "layers/mlp/linear_lora_a", "layers/mlp/linear_lora_b"):
        assert expected in paths, expected
    assert not any("lora" in p for p in paths if "_1" in p)  # expert without LoRA gets none
    assert adapted.layers.mlp.gating_einsum_lora_a.shape == (2, 2, BASE.width, 2)  # [depth, 2, D, r]


@pytest.mark.parametrize(("prefix_lora", "expert_lora"), [(True, True), (True, False), (False, True), (False, False)])
def test_freeze_filter_follows_openpi_semantics(prefix_lora: bool, expert_lora: bool) -> None:
    configs = [_with_lora(BASE) if prefix_lora else BASE, _with_lora(EXPERT) if expert_lora else EXPERT]
    model = nnx.eval_shape(lambda: nnx.Dict(  # names only: no need to allocate or compile
        llm=gemma.Gemma(configs, adaptive=[False, True], vocab_size=32, rngs=nnx.Rngs(0)),
        action_in_proj=nnx.Linear(2, 2, rngs=nnx.Rngs(0))))
    frozen = _paths(model, nnx.All(nnx.Param, lora.freeze_filter(prefix_lora, expert_lora)))
    trainable = _paths(model, lora.trainable_filter(lora.freeze_filter(prefix_lora, expert_lora)))
    everything = _paths(model)
    assert frozen | trainable == everything and not frozen & trainable
    assert "action_in_proj/kernel" in trainable  # heads are outside `llm`: never frozen
    assert not any("lora" in p for p in frozen)
    if not (prefix_lora or expert_lora):
        assert not frozen
        return
    assert ("llm/layers/attn/q_einsum/w" in frozen) == prefix_lora
    assert ("llm/embedder/input_embedding" in frozen) == prefix_lora
    assert ("llm/layers/attn/q_einsum_1/w" in frozen) == expert_lora
    assert ("llm/final_norm_1/Dense_0/kernel" in frozen) == expert_lora
    lora_paths = {p for p in everything if "lora" in p}
    assert lora_paths and lora_paths <= trainable
