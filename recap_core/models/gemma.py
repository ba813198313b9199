"""Gemma as pi0 / pi0.5 use it: a mixture of experts that attend jointly, layer by layer.

Expert 0 (the PaliGemma LLM, Gemma 2B) reads the prefix (image + prompt tokens); expert 1 (the
action expert, Gemma 300M) reads the suffix (noisy actions). Each expert has its own weights,
but in every layer the queries, keys and values of all experts are concatenated along the
sequence and one attention is computed, with a block mask so the prefix never sees the suffix.

Parameter names and layout equal openpi's `PaliGemma/llm` tree (`src/openpi/models/gemma.py`):
expert i > 0 uses the suffix `_i`; layer weights are stacked on a leading `depth` axis under
`layers`. The mapping table is in docs/models.md.

Numerics: weights in f32, compute in `dtype` (bf16 by default); RMSNorm statistics, RoPE,
attention logits and softmax in f32. Einsum axis letters: B batch, T query length, S key
length, N query heads, K kv heads, G heads per kv head, H head dim, D width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recap_core.errors import ConfigError
from recap_core.models import lora as lora_lib
from recap_core.models.configs import named_config
from recap_core.models.tokenizer import PALIGEMMA_VOCAB_SIZE

# Mask fill value used by big_vision / openpi (not -inf, so fully masked rows stay finite).
_BIG_NEG = -2.3819763e38
_RMS_EPS = 1e-6
_ROPE_MAX_WAVELENGTH = 10_000

KVCache = tuple[jax.Array, jax.Array]  # (k, v), each [depth, B, S, K, H]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attn_lora: lora_lib.LoRAConfig | None = None
    ffn_lora: lora_lib.LoRAConfig | None = None

    @property
    def has_lora(self) -> bool:
        return self.attn_lora is not None or self.ffn_lora is not None


# Source: openpi src/openpi/models/gemma.py `get_config` (see docs/models.md).
_GEMMA_2B = dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
_GEMMA_300M = dict(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)
VARIANTS: dict[str, GemmaConfig] = {
    "gemma_2b": GemmaConfig(**_GEMMA_2B),
    "gemma_2b_lora": GemmaConfig(
        **_GEMMA_2B, attn_lora=lora_lib.LoRAConfig(16, 16.0), ffn_lora=lora_lib.LoRAConfig(16, 16.0)
    ),
    "gemma_300m": GemmaConfig(**_GEMMA_300M),
    "gemma_300m_lora": GemmaConfig(
        **_GEMMA_300M, attn_lora=lora_lib.LoRAConfig(32, 32.0), ffn_lora=lora_lib.LoRAConfig(32, 32.0)
    ),
    # openpi's "dummy" size, and its LoRA twins: for CPU tests and the toy demo
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "dummy_lora": GemmaConfig(
        width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16,
        attn_lora=lora_lib.LoRAConfig(4, 4.0), ffn_lora=lora_lib.LoRAConfig(4, 4.0),
    ),
    "dummy_expert": GemmaConfig(width=32, depth=4, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
    "dummy_expert_lora": GemmaConfig(
        width=32, depth=4, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16,
        attn_lora=lora_lib.LoRAConfig(4, 4.0), ffn_lora=lora_lib.LoRAConfig(4, 4.0),
    ),
}


def get_config(variant: str) -> GemmaConfig:
    return named_config(VARIANTS, variant, "Gemma variant", "pick one of the listed variants")


def expert_name(base: str, expert: int) -> str:
    """openpi's naming: expert 0 keeps the PaliGemma name (so PaliGemma weights load), others get `_i`."""
    return base if expert == 0 else f"{base}_{expert}"


def count_params(config: GemmaConfig, vocab_size: int | None, adaptive: bool = False) -> int:
    """Closed-form parameter count of one expert (embedding table included when `vocab_size`)."""
    d, n, k, h, f, layers = (config.width, config.num_heads, config.num_kv_heads, config.head_dim,
                             config.mlp_dim, config.depth)
    norm = d * (3 * d) + 3 * d if adaptive else d
    per_layer = n * d * h + 2 * k * d * h + n * h * d + 2 * d * f + f * d + 2 * norm
    for lora, shapes in ((config.attn_lora, [(n, d, h), (2, k, d, h), (n, h, d)]),
                         (config.ffn_lora, [(2, d, f), (f, d)])):
        if lora is not None:
            for shape in shapes:
                a, b = lora_lib.lora_shapes(shape, lora.rank)
                per_layer += math.prod(a) + math.prod(b)
    return layers * per_layer + norm + (vocab_size * d if vocab_size else 0)


# ------------------------------------------------------------------------------------ layers


class RMSNorm(nnx.Module):
    """Gemma RMSNorm `x / rms(x) * (1 + scale)`; or pi0.5's adaptive form conditioned on `cond`.

    Adaptive: a zero-initialised `Dense_0` maps `cond` [B, C] to (scale, shift, gate); the output
    is `normed * (1 + scale) + shift` and `gate` multiplies the block's residual branch.
    """

    def __init__(self, width: int, *, adaptive: bool, dtype: Any, rngs: nnx.Rngs) -> None:
        self.adaptive = adaptive
        if adaptive:
            self.Dense_0 = nnx.Linear(width, 3 * width, kernel_init=nnx.initializers.zeros_init(),
                                      dtype=dtype, rngs=rngs)
        else:
            self.scale = nnx.Param(jnp.zeros((width,), jnp.float32))

    def __call__(self, x: jax.Array, cond: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x.astype(jnp.float32) * jax.lax.rsqrt(var + _RMS_EPS)
        if not self.adaptive:
            return (normed * (1 + self.scale[...])).astype(x.dtype), None
        if cond is None:
            raise ValueError("adaptive RMSNorm needs the conditioning vector (adarms_cond)")
        scale, shift, gate = jnp.split(self.Dense_0(cond)[:, None, :], 3, axis=-1)
        return (normed * (1 + scale) + shift).astype(x.dtype), gate


class Embedder(nnx.Module):
    def __init__(self, vocab_size: int, width: int, *, rngs: nnx.Rngs) -> None:
        self.input_embedding = nnx.Param(jax.random.normal(rngs.params(), (vocab_size, width)) * 0.01)

    def encode(self, tokens: jax.Array) -> jax.Array:
        table = self.input_embedding[...]
        return table[tokens] * jnp.sqrt(table.shape[-1]).astype(table.dtype)

    def decode(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x, self.input_embedding[...].T.astype(x.dtype))


def apply_rope(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary embedding (split-half rotation) of x [B, T, N, H] at integer positions [B, T], in f32."""
    half = x.shape[-1] // 2
    timescale = _ROPE_MAX_WAVELENGTH ** ((2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32))
    radians = (positions[..., None].astype(jnp.float32) / timescale)[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _lecun(in_axis: Any, out_axis: Any, batch_axis: Any = ()) -> Any:
    return jax.nn.initializers.lecun_normal(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis)


class Attention(nnx.Module):
    """Joint attention over the concatenated sequences of all experts present in the call."""

    def __init__(self, configs: Sequence[GemmaConfig], *, rngs: nnx.Rngs) -> None:
        first = configs[0]
        for c in configs:
            if (c.num_heads, c.num_kv_heads, c.head_dim) != (first.num_heads, first.num_kv_heads, first.head_dim):
                raise ConfigError(
                    "all Gemma experts must share num_heads, num_kv_heads and head_dim to attend jointly",
                    fix="pair experts with equal attention shapes (e.g. gemma_2b + gemma_300m)",
                )
        self.num_experts = len(configs)
        self.num_kv_heads = first.num_kv_heads
        self.head_dim = first.head_dim
        for i, c in enumerate(configs):
            n, k, d, h = c.num_heads, c.num_kv_heads, c.width, c.head_dim
            setattr(self, expert_name("q_einsum", i), lora_lib.Einsum(
                (n, d, h), init=_lecun(-2, -1, (0,)), lora=c.attn_lora, rngs=rngs))
            setattr(self, expert_name("kv_einsum", i), lora_lib.Einsum(
                (2, k, d, h), init=_lecun(-2, -1, (0, 1)), lora=c.attn_lora, rngs=rngs))
            setattr(self, expert_name("attn_vec_einsum", i), lora_lib.Einsum(
                (n, h, d), init=_lecun((-3, -2), -1), lora=c.attn_lora, rngs=rngs))

    def __call__(
        self, xs: Sequence[jax.Array | None], positions: jax.Array, mask: jax.Array, kv_cache: KVCache | None
    ) -> tuple[list[jax.Array | None], KVCache]:
        qs, ks, vs = [], [], []
        for i, x in enumerate(xs):
            if x is None:
                continue
            qs.append(getattr(self, expert_name("q_einsum", i))("BTD,NDH->BTNH", x))
            k, v = getattr(self, expert_name("kv_einsum", i))("BSD,CKDH->CBSKH", x)
            ks.append(k)
            vs.append(v)
        dtype = qs[0].dtype
        q = apply_rope(jnp.concatenate(qs, axis=1), positions) * jnp.asarray(self.head_dim**-0.5, dtype)
        k = apply_rope(jnp.concatenate(ks, axis=1), positions)
        v = jnp.concatenate(vs, axis=1)
        if kv_cache is not None:
            k = jnp.concatenate([kv_cache[0].astype(dtype), k], axis=1)
            v = jnp.concatenate([kv_cache[1].astype(dtype), v], axis=1)

        batch, length, heads, _ = q.shape
        if mask.shape != (batch, length, k.shape[1]):
            raise ValueError(f"attention mask shape {mask.shape} != (batch, queries, keys) "
                             f"{(batch, length, k.shape[1])}")
        q = q.reshape(batch, length, self.num_kv_heads, heads // self.num_kv_heads, self.head_dim)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :, :], logits, _BIG_NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(batch, length, heads, self.head_dim)

        outs: list[jax.Array | None] = []
        start = 0
        for i, x in enumerate(xs):
            if x is None:
                outs.append(None)
                continue
            end = start + x.shape[1]
            outs.append(getattr(self, expert_name("attn_vec_einsum", i))("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return outs, (k, v)


class FeedForward(nnx.Module):
    """GeGLU MLP: gelu_tanh(x @ W0) * (x @ W1) @ W_out, weights named as openpi's."""

    def __init__(self, width: int, mlp_dim: int, lora: lora_lib.LoRAConfig | None, *, rngs: nnx.Rngs) -> None:
        self.lora_config = lora
        self.gating_einsum = nnx.Param(_lecun(-2, -1, (0,))(rngs.params(), (2, width, mlp_dim)))
        self.linear = nnx.Param(_lecun(-2, -1)(rngs.params(), (mlp_dim, width)))
        if lora is not None:
            self.gating_einsum_lora_a, self.gating_einsum_lora_b = lora_lib.init_lora_pair(
                (2, width, mlp_dim), lora, rngs)
            self.linear_lora_a, self.linear_lora_b = lora_lib.init_lora_pair((mlp_dim, width), lora, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gating = self.gating_einsum[...]
        pairs: list[Any] = [None, None, None]
        if self.lora_config is not None:
            ga, gb = self.gating_einsum_lora_a[...], self.gating_einsum_lora_b[...]
            pairs = [(ga[0], gb[0]), (ga[1], gb[1]), (self.linear_lora_a[...], self.linear_lora_b[...])]
        gate = jax.nn.gelu(lora_lib.lora_matmul(x, gating[0], pairs[0], self.lora_config), approximate=True)
        up = lora_lib.lora_matmul(x, gating[1], pairs[1], self.lora_config)
        return lora_lib.lora_matmul(gate * up, self.linear[...], pairs[2], self.lora_config)


def _gated_residual(x: jax.Array, y: jax.Array, gate: jax.Array | None) -> jax.Array:
    return x + y if gate is None else x + y * gate.astype(y.dtype)


class Block(nnx.Module):
    """One layer of the mixture: per-expert norms and MLPs around the joint attention."""

    def __init__(self, configs: Sequence[GemmaConfig], adaptive: Sequence[bool], dtype: Any,
                 *, rngs: nnx.Rngs) -> None:
        self.attn = Attention(configs, rngs=rngs)
        for i, (c, ada) in enumerate(zip(configs, adaptive, strict=True)):
            setattr(self, expert_name("pre_attention_norm", i), RMSNorm(c.width, adaptive=ada, dtype=dtype, rngs=rngs))
            setattr(self, expert_name("pre_ffw_norm", i), RMSNorm(c.width, adaptive=ada, dtype=dtype, rngs=rngs))
            setattr(self, expert_name("mlp", i), FeedForward(c.width, c.mlp_dim, c.ffn_lora, rngs=rngs))

    def __call__(self, xs: Sequence[jax.Array | None], kv_cache: KVCache | None, positions: jax.Array,
                 mask: jax.Array, cond: Sequence[jax.Array | None]) -> tuple[list[jax.Array | None], KVCache]:
        normed, gates = [], []
        for i, x in enumerate(xs):
            y, gate = (None, None) if x is None else getattr(self, expert_name("pre_attention_norm", i))(x, cond[i])
            normed.append(y)
            gates.append(gate)
        attn_out, kv = self.attn(normed, positions, mask, kv_cache)
        xs = [None if x is None else _gated_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates, strict=True)]
        out = []
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            y, gate = getattr(self, expert_name("pre_ffw_norm", i))(x, cond[i])
            out.append(_gated_residual(x, getattr(self, expert_name("mlp", i))(y), gate))
        return out, kv


# ------------------------------------------------------------------------------------ model


@functools.cache
def _stacked_block_init(configs: tuple[GemmaConfig, ...], adaptive: tuple[bool, ...], dtype: str) -> tuple[Any, Any]:
    """(graphdef, jitted keys[depth] -> stacked Block state), compiled once per configuration.

    Like siglip.make_stacked (one jitted vmap instead of op-by-op init), but cached: the init
    compiles for tens of seconds on a busy CPU, and training, serving and tests build the same
    mixture more than once in a process.
    """
    def make(rngs: nnx.Rngs) -> Block:
        return Block(configs, adaptive, jnp.dtype(dtype), rngs=rngs)

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    return graphdef, jax.jit(jax.vmap(lambda key: nnx.state(make(nnx.Rngs(params=key)))))


class Gemma(nnx.Module):
    """The multi-expert Gemma. `adaptive[i]` makes expert i's norms adaRMS (pi0.5: [False, True])."""

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        *,
        adaptive: Sequence[bool] | None = None,
        vocab_size: int = PALIGEMMA_VOCAB_SIZE,
        dtype: Any = jnp.bfloat16,
        remat: bool = True,
        rngs: nnx.Rngs,
    ) -> None:
        configs = tuple(configs)
        adaptive = tuple(adaptive) if adaptive is not None else (False,) * len(configs)
        if len({c.depth for c in configs}) != 1:
            raise ConfigError("all Gemma experts must have the same depth",
                              fix="pair experts of equal depth (both real variants have 18 layers)")
        self.configs = configs
        self.adaptive = adaptive
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.embedder = Embedder(vocab_size, configs[0].width, rngs=rngs)  # expert 0 only, as in openpi

        # every layer weight is stacked on a leading depth axis, as in openpi's checkpoints
        graphdef, init = _stacked_block_init(configs, adaptive, self.dtype.name)
        self.layers = nnx.merge(graphdef, init(jax.random.split(rngs.params(), configs[0].depth)))
        for i, (c, ada) in enumerate(zip(configs, adaptive, strict=True)):
            setattr(self, expert_name("final_norm", i), RMSNorm(c.width, adaptive=ada, dtype=self.dtype, rngs=rngs))

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embedder.encode(tokens).astype(self.dtype)

    def __call__(
        self,
        embedded: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        adarms_cond: Sequence[jax.Array | None] | None = None,
        *,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """Run the experts given (None = skip that expert) on their token sequences.

        positions: int [B, T] over the concatenated present sequences; mask: bool [B, T, S] where
        S = T (+ cached length). Returns each expert's final-normed output and the (k, v) cache of
        this call's keys/values (prepended by `kv_cache`), stacked over layers.
        """
        xs = [None if e is None else e.astype(self.dtype) for e in embedded]
        cond = list(adarms_cond) if adarms_cond is not None else [None] * len(self.configs)
        # siglip.run_stacked drops per-layer outputs; this scan also returns each layer's (k, v)
        graphdef, state = nnx.split(self.layers)

        def layer(carry: list[Any], per_layer: tuple[Any, Any]) -> tuple[list[Any], KVCache]:
            layer_state, layer_cache = per_layer
            block = nnx.merge(graphdef, layer_state)
            return block(carry, layer_cache, positions, mask, cond)

        if self.remat:
            # recompute activations in the backward pass: memory for one layer instead of all
            layer = jax.checkpoint(layer, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        xs, kv = jax.lax.scan(layer, xs, (state, kv_cache))
        outs = [
            None if x is None else getattr(self, expert_name("final_norm", i))(x, cond[i])[0]
            for i, x in enumerate(xs)
        ]
        return outs, kv


def make_attn_mask(input_mask: jax.Array, ar_mask: jax.Array) -> jax.Array:
    """Block attention mask from big_vision / openpi.

    A token attends to every valid token whose cumulative `ar_mask` count is <= its own: all-False
    gives full attention, all-True causal, and a True at the start of a block starts a new block
    that sees everything before it while earlier blocks cannot see it.
    input_mask: bool [B, N]; ar_mask: bool [N] or [B, N]. Returns bool [B, N, N].
    """
    ar_mask = jnp.broadcast_to(ar_mask, input_mask.shape)
    cumsum = jnp.cumsum(ar_mask.astype(jnp.int32), axis=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return causal & valid
