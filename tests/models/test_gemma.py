"""Gemma mixture: parity with transformers' GemmaModel, joint attention, KV cache, block mask, sizes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import GemmaConfig as HFGemmaConfig
from transformers import GemmaModel

from recap_core.errors import ConfigError
from recap_core.models import gemma

TINY = gemma.GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=8)
VOCAB = 64


def _hf_model(config: gemma.GemmaConfig) -> GemmaModel:
    torch.manual_seed(0)
    hf = GemmaModel(HFGemmaConfig(
        vocab_size=VOCAB, hidden_size=config.width, intermediate_size=config.mlp_dim,
        num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10_000.0,
        attn_implementation="eager",
    )).eval()
    with torch.no_grad():  # random non-zero norm weights so the (1 + scale) convention is tested
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return hf


def _load_expert(model: gemma.Gemma, hf: GemmaModel, expert: int) -> None:
    """Copy HF weights into expert `expert` of our model (mapping documented in docs/models.md)."""
    c = model.configs[expert]
    n, k, d, h = c.num_heads, c.num_kv_heads, c.width, c.head_dim
    sd = {name: p.detach().numpy() for name, p in hf.state_dict().items()}
    stack = lambda fmt, fn: jnp.asarray(np.stack([fn(sd[fmt.format(i)]) for i in range(c.depth)]))  # noqa: E731
    attn = model.layers.attn
    name = gemma.expert_name
    getattr(attn, name("q_einsum", expert)).w[...] = stack(
        "layers.{}.self_attn.q_proj.weight", lambda w: w.reshape(n, h, d).transpose(0, 2, 1))
    kv = lambda w: w.reshape(k, h, d).transpose(0, 2, 1)  # noqa: E731
    getattr(attn, name("kv_einsum", expert)).w[...] = jnp.stack([
        stack("layers.{}.self_attn.k_proj.weight", kv), stack("layers.{}.self_attn.v_proj.weight", kv)], axis=1)
    getattr(attn, name("attn_vec_einsum", expert)).w[...] = stack(
        "layers.{}.self_attn.o_proj.weight", lambda w: w.T.reshape(n, h, d))
    mlp = getattr(model.layers, name("mlp", expert))
    mlp.gating_einsum[...] = jnp.stack([stack("layers.{}.mlp.gate_proj.weight", np.transpose),
                                        stack("layers.{}.mlp.up_proj.weight", np.transpose)], axis=1)
    mlp.linear[...] = stack("layers.{}.mlp.down_proj.weight", np.transpose)
    getattr(model.layers, name("pre_attention_norm", expert)).scale[...] = stack(
        "layers.{}.input_layernorm.weight", lambda w: w)
    getattr(model.layers, name("pre_ffw_norm", expert)).scale[...] = stack(
        "layers.{}.post_attention_layernorm.weight", lambda w: w)
    getattr(model, name("final_norm", expert)).scale[...] = jnp.asarray(sd["norm.weight"])
    if expert == 0:
        model.embedder.input_embedding[...] = jnp.asarray(sd["embed_tokens.weight"])


def _causal(batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    mask = gemma.make_attn_mask(jnp.ones((batch, length), bool), jnp.ones(length, bool))
    return mask, jnp.broadcast_to(jnp.arange(length), (batch, length))


def test_single_expert_matches_transformers_gemma() -> None:
    hf = _hf_model(TINY)
    ours = gemma.Gemma([TINY], vocab_size=VOCAB, dtype=jnp.float32, remat=False, rngs=nnx.Rngs(0))
    _load_expert(ours, hf, 0)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 7))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(tokens)).last_hidden_state.numpy()
    mask, positions = _causal(2, 7)
    (out,), _ = ours([ours.embed(jnp.asarray(tokens))], positions, mask)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.1  # the comparison is not between two near-zero tensors


def test_mixture_equals_joint_attention_of_one_model() -> None:
    """Two experts with the same weights attending jointly == one model over the concatenation."""
    hf = _hf_model(TINY)
    mixture = gemma.Gemma([TINY, TINY], vocab_size=VOCAB, dtype=jnp.float32, remat=False, rngs=nnx.Rngs(1))
    _load_expert(mixture, hf, 0)
    _load_expert(mixture, hf, 1)
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, 9))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(tokens)).last_hidden_state.numpy()
    mask, positions = _causal(2, 9)
    emb = mixture.embed(jnp.asarray(tokens))
    (prefix, suffix), _ = mixture([emb[:, :5], emb[:, 5:]], positions, mask)
    np.testing.assert_allclose(np.asarray(jnp.concatenate([prefix, suffix], 1)), ref, atol=1e-4, rtol=0)


def _fresh_pi05_mixture() -> gemma.Gemma:
    expert = dataclasses.replace(TINY, width=16, mlp_dim=24)
    return gemma.Gemma([TINY, expert], adaptive=[False, True], vocab_size=VOCAB, dtype=jnp.float32,
                       remat=False, rngs=nnx.Rngs(2))


def _pi05_mixture() -> gemma.Gemma:
    model = _fresh_pi05_mixture()
    # non-zero adaRMS weights so the conditioning path matters
    for norm in (model.layers.pre_attention_norm_1, model.layers.pre_ffw_norm_1, model.final_norm_1):
        norm.Dense_0.kernel[...] = jax.random.normal(jax.random.key(3), norm.Dense_0.kernel.shape) * 0.3
        norm.Dense_0.bias[...] = jnp.ones(norm.Dense_0.bias.shape)
    return model


def _prefix_suffix_inputs(model: gemma.Gemma, seed: int, prefix_len: int = 6, suffix_len: int = 4):
    rng = np.random.default_rng(seed)
    prefix = model.embed(jnp.asarray(rng.integers(0, VOCAB, size=(2, prefix_len))))
    suffix = jnp.asarray(rng.normal(size=(2, suffix_len, model.configs[1].width)), jnp.float32)
    prefix_valid = jnp.asarray([[True] * prefix_len, [True] * (prefix_len - 2) + [False] * 2])
    cond = jnp.asarray(rng.normal(size=(2, model.configs[1].width)), jnp.float32)
    return prefix, suffix, prefix_valid, cond


@nnx.jit  # one compilation instead of one per eager op
def _full_forward(model: gemma.Gemma, prefix, suffix, prefix_valid, cond):
    valid = jnp.concatenate([prefix_valid, jnp.ones(suffix.shape[:2], bool)], axis=1)
    ar = jnp.asarray([False] * prefix.shape[1] + [True] + [False] * (suffix.shape[1] - 1))
    mask = gemma.make_attn_mask(valid, ar)
    positions = jnp.cumsum(valid, axis=1) - 1
    (p_out, s_out), _ = model([prefix, suffix], positions, mask, [None, cond])
    return p_out, s_out


def test_perturbing_suffix_never_changes_prefix_outputs() -> None:
    model = _pi05_mixture()
    prefix, suffix, valid, cond = _prefix_suffix_inputs(model, 0)
    p1, s1 = _full_forward(model, prefix, suffix, valid, cond)
    p2, s2 = _full_forward(model, prefix, suffix + 5.0, valid, cond * 2.0)
    # padded prefix slots have an all-False mask row (softmax over nothing): their output is unused
    np.testing.assert_array_equal(np.asarray(p1)[np.asarray(valid)], np.asarray(p2)[np.asarray(valid)])
    assert float(jnp.abs(s1 - s2).max()) > 1e-2  # the suffix does respond to its own inputs


def test_kv_cache_decoding_equals_full_forward() -> None:
    model = _pi05_mixture()
    prefix, suffix, valid, cond = _prefix_suffix_inputs(model, 1)
    p_full, s_full = _full_forward(model, prefix, suffix, valid, cond)

    prefix_mask = gemma.make_attn_mask(valid, jnp.zeros(prefix.shape[1], bool))
    (p_cached, _), kv = model([prefix, None], jnp.cumsum(valid, axis=1) - 1, prefix_mask)
    assert kv[0].shape == (TINY.depth, 2, prefix.shape[1], TINY.num_kv_heads, TINY.head_dim)
    suffix_len = suffix.shape[1]
    suffix_self = gemma.make_attn_mask(jnp.ones((2, suffix_len), bool), jnp.asarray([True] + [False] * 3))
    mask = jnp.concatenate([jnp.repeat(valid[:, None, :], suffix_len, axis=1), suffix_self], axis=-1)
    positions = jnp.sum(valid, axis=-1)[:, None] + jnp.arange(suffix_len)
    (none, s_cached), _ = model([None, suffix], positions, mask, [None, cond], kv_cache=kv)
    assert none is None
    keep = np.asarray(valid)
    np.testing.assert_allclose(np.asarray(p_cached)[keep], np.asarray(p_full)[keep], atol=1e-5)
    np.testing.assert_allclose(np.asarray(s_cached), np.asarray(s_full), atol=1e-5)


def test_adarms_starts_as_identity_residual_and_names_match_openpi() -> None:
    model = _fresh_pi05_mixture()
    paths = {"/".join(map(str, p)) for p, _ in nnx.state(model, nnx.Param).flat_state()}
    for expected in ("embedder/input_embedding", "layers/attn/q_einsum/w", "layers/attn/kv_einsum_1/w",
                     "layers/attn/attn_vec_einsum_1/w", "layers/mlp/gating_einsum", "layers/mlp_1/linear",
                     "layers/pre_attention_norm/scale", "layers/pre_ffw_norm_1/Dense_0/kernel",
                     "final_norm/scale", "final_norm_1/Dense_0/bias"):
        assert expected in paths, expected
    assert model.layers.attn.kv_einsum.w.shape == (TINY.depth, 2, 1, TINY.width, TINY.head_dim)
    # zero-initialised modulation: gate 0, so the action expert's blocks add nothing at init
    x = jnp.ones((1, 3, 16))
    cond = jnp.ones((1, 16))
    _, gate = model.final_norm_1(x, cond)
    assert float(jnp.abs(gate).max()) == 0.0


def _hf_count(config: gemma.GemmaConfig, vocab: int) -> int:
    """Parameter count of transformers' GemmaModel for the same sizes, built on the meta device."""
    with torch.device("meta"):
        hf = GemmaModel(HFGemmaConfig(
            vocab_size=vocab, hidden_size=config.width, intermediate_size=config.mlp_dim,
            num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim))
    return sum(p.numel() for p in hf.parameters())


def test_real_variant_sizes_match_reference_counts() -> None:
    def abstract_count(configs, adaptive):
        model = nnx.eval_shape(lambda: gemma.Gemma(configs, adaptive=adaptive, rngs=nnx.Rngs(0)))
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    g2b, g300 = gemma.get_config("gemma_2b"), gemma.get_config("gemma_300m")
    # published: Gemma 2B has 2,506,172,416 parameters with its 256,000 vocabulary
    assert gemma.count_params(g2b, 256_000) == _hf_count(g2b, 256_000) == 2_506_172_416
    assert gemma.count_params(g2b, 257_152) == _hf_count(g2b, 257_152)
    # openpi's "311M" action expert: no embedding table of its own
    assert gemma.count_params(g300, None) == _hf_count(g300, 8) - 8 * g300.width == 311_464_960
    assert abstract_count([g2b], [False]) == gemma.count_params(g2b, 257_152)
    # pi0.5 mixture: adaRMS replaces the expert's norm scales by Dense(width -> 3 width)
    mixture = abstract_count([g2b, g300], [False, True])
    assert mixture == gemma.count_params(g2b, 257_152) + gemma.count_params(g300, None, adaptive=True)
    adarms = 2 * 18 + 1  # norms per expert: two per layer + the final one
    assert mixture - abstract_count([g2b, g300], [False, False]) == adarms * (1024 * 3072 + 3072 - 1024)


def test_unknown_variant_and_mismatched_experts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="gemma_2b"):
        gemma.get_config("gemma_7b")
    other = dataclasses.replace(TINY, num_heads=2)
    with pytest.raises(ConfigError, match="num_heads"):
        gemma.Gemma([TINY, other], vocab_size=VOCAB, rngs=nnx.Rngs(0))
