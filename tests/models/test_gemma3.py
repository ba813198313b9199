"""Gemma3: numerical parity with transformers' Gemma3 text model, real sizes by eval_shape."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from recap_core.errors import ConfigError
from recap_core.models.gemma3 import Gemma3, Gemma3Config, gemma3_config
from recap_core.models.siglip import ModelInputError
from tests.models._parity import count_params, gemma3_from_hf, load_pure_dict, torch_params


def _hf_config(c: Gemma3Config, bidirectional: bool) -> Gemma3TextConfig:
    # HF halves the window in bidirectional mode ((w // 2) + 1, |q - k| < that); pick the value
    # that lands on our (and the gemma library's) symmetric |q - k| < sliding_window.
    window = 2 * (c.sliding_window - 1) if bidirectional else c.sliding_window
    return Gemma3TextConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.width,
        intermediate_size=c.mlp_dim,
        num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        sliding_window=window,
        query_pre_attn_scalar=c.query_pre_attn_scalar or c.head_dim,
        rope_theta=c.global_rope_base,
        rope_local_base_freq=c.local_rope_base,
        use_bidirectional_attention=bidirectional,
        hidden_activation="gelu_pytorch_tanh",
        attn_implementation="eager",
    )


@pytest.mark.parametrize(("num_kv_heads", "bidirectional"), [(1, False), (1, True), (2, True), (4, False)])
def test_matches_transformers(num_kv_heads: int, bidirectional: bool) -> None:
    cfg = gemma3_config("tiny", dtype="float32", num_kv_heads=num_kv_heads)
    hf_cfg = _hf_config(cfg, bidirectional)
    assert hf_cfg.layer_types.count("full_attention") == 1  # layer 5 global, 0-4 and 6 local
    torch.manual_seed(num_kv_heads)
    ref = Gemma3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # norms start at 0 in HF; randomise so every weight matters
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = Gemma3(cfg, rngs=nnx.Rngs(0))
    load_pure_dict(ours, gemma3_from_hf(torch_params(ref), cfg.depth, cfg.num_heads, num_kv_heads))

    seq = 13  # > 3x the window of 4, so local and global layers see different keys
    tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, (2, seq))
    mask = np.ones((2, seq), bool)
    mask[1, 10:] = False  # right padding in the second row
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            output_hidden_states=True,
        )
    want_hidden = out.hidden_states[-1].numpy()
    want_logits = out.logits.numpy()

    hidden = ours(ours.embed(jnp.asarray(tokens)), jnp.asarray(mask), causal=not bidirectional)
    got_hidden, got_logits = np.asarray(hidden), np.asarray(ours.logits(hidden))
    np.testing.assert_allclose(got_hidden[mask], want_hidden[mask], atol=1e-4, rtol=0)
    scale = np.abs(want_logits).max()
    np.testing.assert_allclose(got_logits[mask] / scale, want_logits[mask] / scale, atol=1e-5, rtol=0)


def test_window_matters_so_the_parity_test_can_fail() -> None:
    cfg = gemma3_config("tiny", dtype="float32")
    model = Gemma3(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 13)))
    mask = jnp.ones((1, 13), bool)
    wide = nnx.merge(nnx.graphdef(model), nnx.state(model))
    wide.config = dataclasses.replace(cfg, sliding_window=64)
    a = np.asarray(model(model.embed(tokens), mask, causal=False))
    b = np.asarray(wide(wide.embed(tokens), mask, causal=False))
    assert np.abs(a - b).max() > 1e-3


def test_real_270m_param_count_matches_transformers() -> None:
    cfg = gemma3_config("270m")
    abstract = nnx.eval_shape(lambda: Gemma3(cfg, rngs=nnx.Rngs(0)))
    hf_cfg = _hf_config(cfg, bidirectional=False)
    with torch.device("meta"):
        ref = Gemma3ForCausalLM(hf_cfg)
    # lm_head is tied to the embedding in both, so named_parameters counts it once.
    ref_total = sum(p.numel() for p in ref.parameters())
    assert count_params(abstract) == ref_total == 268_098_176
    assert cfg.is_local().count(False) == 3  # layers 5, 11, 17 are global

    graphdef, state = nnx.split(abstract)

    def forward(st: nnx.State, emb: jax.Array, m: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, st)(emb, m, causal=False)

    out = jax.eval_shape(
        forward,
        state,
        jax.ShapeDtypeStruct((2, 816, 640), jnp.bfloat16),
        jax.ShapeDtypeStruct((2, 816), jnp.bool_),
    )
    assert out.shape == (2, 816, 640) and out.dtype == jnp.bfloat16


def test_bf16_remat_grads_flow() -> None:
    cfg = gemma3_config("tiny", remat=True, depth=2)
    model = Gemma3(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.ones((1, 6), jnp.int32)
    mask = jnp.ones((1, 6), bool)

    def loss(m: Gemma3) -> jax.Array:
        return jnp.mean(m(m.embed(tokens), mask, causal=True).astype(jnp.float32) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    g = np.asarray(grads["layers"]["mlp"]["linear"])
    assert g.shape == (2, 64, 32) and np.abs(g).max() > 0


def test_bad_inputs_are_clear_errors() -> None:
    model = Gemma3(gemma3_config("tiny", dtype="float32", depth=1), rngs=nnx.Rngs(0))
    with pytest.raises(ModelInputError, match=r"\[B, T, 32\].*\(1, 5, 16\)"):
        model(jnp.zeros((1, 5, 16)), jnp.ones((1, 5), bool), causal=True)
    with pytest.raises(ConfigError, match="unknown Gemma3 variant"):
        gemma3_config("9b")
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        Gemma3(gemma3_config("tiny", num_kv_heads=3), rngs=nnx.Rngs(0))
