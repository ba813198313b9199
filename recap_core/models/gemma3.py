"""Gemma3 text transformer (the value model's language backbone), in Flax NNX.

Gemma3 differs from the Gemma 1/2 used by the policy in: QK-norm (RMSNorm on each query/key
head), RMSNorms after attention and after the MLP as well as before, a repeating pattern of
`global_every - 1` sliding-window (local) layers then one global layer, and a separate RoPE base
for local (10k) and global (1M) layers. Any size comes from `Gemma3Config`; `270m` is the
value model's (google-deepmind `gemma` library `Gemma3_270M`, HF `google/gemma-3-270m`).

Attention can be causal (a language model) or bidirectional (the value model attends over all
valid tokens, as the pistar value model does). Local layers mask keys with |q_pos - k_pos| >=
sliding_window, the gemma library's symmetric window; with a causal mask this is the usual
"last `sliding_window` tokens".

Param names follow the gemma library checkpoint (`embedder/input_embedding`, `attn/q_einsum/w`,
`mlp/gating_einsum`, ...). Its `layer_<i>` subtrees are stacked here on a leading axis under
`layers` (local and global layers have identical params; only the mask and RoPE base differ),
so loading is "stack layer_0..layer_{depth-1}" (docs/models_value.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recap_core.errors import ConfigError, ModelInputError
from recap_core.models.configs import named_config
from recap_core.models.siglip import make_stacked, run_stacked

Array = jax.Array

# The gemma library's mask fill value (finite, so fully masked rows stay NaN-free).
_MASKED = -2.3819763e38


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    global_every: int = 6  # layers i with (i + 1) % global_every == 0 are global, the rest local
    local_rope_base: float = 10_000.0
    global_rope_base: float = 1_000_000.0
    global_rope_scale: float = 1.0  # positions are divided by this in global layers (1.0 for 270M)
    query_pre_attn_scalar: float | None = None  # queries scale by this ** -0.5; None = head_dim
    dtype: str = "bfloat16"
    remat: bool = False

    def is_local(self) -> list[bool]:
        return [bool((i + 1) % self.global_every) for i in range(self.depth)]


# Source: google-deepmind/gemma `gemma/gm/nn/_gemma.py` Gemma3_270M (num_embed 262144, embed_dim 640,
# hidden_dim 2048, heads 4, head_dim 256, kv heads 1, window 512, 5 local : 1 global, 18 layers,
# local base 10k, global base 1M, query_pre_attn_norm BY_ONE_OVER_SQRT_HEAD_DIM); same as HF
# google/gemma-3-270m config.json.
GEMMA3_PRESETS: dict[str, Gemma3Config] = {
    "270m": Gemma3Config(
        vocab_size=262_144,
        width=640,
        depth=18,
        mlp_dim=2048,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        sliding_window=512,
    ),
    # 7 layers so that both local and global layers occur; window 4 so short sequences exceed it.
    "tiny": Gemma3Config(
        vocab_size=512,
        width=32,
        depth=7,
        mlp_dim=64,
        num_heads=4,
        num_kv_heads=1,
        head_dim=16,
        sliding_window=4,
    ),
}


def gemma3_config(name: str, **overrides: Any) -> Gemma3Config:
    return named_config(GEMMA3_PRESETS, name, "Gemma3 variant",
                        "pick a listed variant, or build a Gemma3Config(...) directly", **overrides)


class RMSNorm(nnx.Module):
    """x / rms(x) * (1 + scale), computed in f32 (scale starts at 0: identity)."""

    def __init__(self, dim: int) -> None:
        self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + 1e-6)
        return (normed * (1.0 + self.scale[...])).astype(x.dtype)


class Einsum(nnx.Module):
    """A bare weight `w` applied with an explicit einsum (the gemma library's layout)."""

    def __init__(self, shape: tuple[int, ...], rngs: nnx.Rngs, fan_in_axes: tuple[int, ...]) -> None:
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=fan_in_axes)
        self.w = nnx.Param(init(rngs.params(), shape, jnp.float32))

    def __call__(self, eqn: str, x: Array) -> Array:
        return jnp.einsum(eqn, x, self.w[...].astype(x.dtype))


def rope(x: Array, positions: Array, base: Array, scale: Array) -> Array:
    """Rotary embedding on [B, T, N, H] (split-half pairing), computed in f32."""
    half = x.shape[-1] // 2
    timescale = base ** (2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
    angle = (positions.astype(jnp.float32)[..., None] / scale) / timescale  # [B, T, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, c: Gemma3Config, rngs: nnx.Rngs) -> None:
        self.fused_qkv = c.num_heads == c.num_kv_heads  # the gemma library's layout switch
        if self.fused_qkv:
            self.qkv_einsum = Einsum((3, c.num_heads, c.width, c.head_dim), rngs, fan_in_axes=(2,))
        else:
            self.q_einsum = Einsum((c.num_heads, c.width, c.head_dim), rngs, fan_in_axes=(1,))
            self.kv_einsum = Einsum((2, c.num_kv_heads, c.width, c.head_dim), rngs, fan_in_axes=(2,))
        self.attn_vec_einsum = Einsum((c.num_heads, c.head_dim, c.width), rngs, fan_in_axes=(0, 1))
        self._query_norm = RMSNorm(c.head_dim)
        self._key_norm = RMSNorm(c.head_dim)
        self.num_kv_heads = c.num_kv_heads
        self.query_scale = (c.query_pre_attn_scalar or c.head_dim) ** -0.5

    def __call__(self, x: Array, positions: Array, mask: Array, rope_base: Array, rope_scale: Array) -> Array:
        if self.fused_qkv:
            q, k, v = self.qkv_einsum("BTD,SNDH->SBTNH", x)
        else:
            q = self.q_einsum("BTD,NDH->BTNH", x)
            k, v = self.kv_einsum("BSD,CKDH->CBSKH", x)
        q = rope(self._query_norm(q), positions, rope_base, rope_scale)
        k = rope(self._key_norm(k), positions, rope_base, rope_scale)
        q = q * jnp.asarray(self.query_scale, q.dtype)

        b, t, n, h = q.shape
        q = q.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h)  # group heads per kv head
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
        return self.attn_vec_einsum("BTNH,NHD->BTD", encoded)


class FeedForward(nnx.Module):
    """GeGLU with the gemma library's transposed gating layout: gating_einsum [2, mlp, width]."""

    def __init__(self, c: Gemma3Config, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=2, out_axis=1)
        self.gating_einsum = nnx.Param(init(rngs.params(), (2, c.mlp_dim, c.width), jnp.float32))
        init_out = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=1)
        self.linear = nnx.Param(init_out(rngs.params(), (c.mlp_dim, c.width), jnp.float32))

    def __call__(self, x: Array) -> Array:
        gate = jnp.einsum("...F,NHF->...NH", x, self.gating_einsum[...].astype(x.dtype))
        hidden = jax.nn.gelu(gate[..., 0, :], approximate=True) * gate[..., 1, :]
        return jnp.einsum("...H,HF->...F", hidden, self.linear[...].astype(x.dtype))


class Block(nnx.Module):
    def __init__(self, c: Gemma3Config, rngs: nnx.Rngs) -> None:
        self.pre_attention_norm = RMSNorm(c.width)
        self.attn = Attention(c, rngs)
        self.post_attention_norm = RMSNorm(c.width)
        self.pre_ffw_norm = RMSNorm(c.width)
        self.mlp = FeedForward(c, rngs)
        self.post_ffw_norm = RMSNorm(c.width)
        self.local_rope_base = c.local_rope_base
        self.global_rope_base = c.global_rope_base
        self.global_rope_scale = c.global_rope_scale

    def __call__(
        self, x: Array, is_local: Array, *, positions: Array, full_mask: Array, window_mask: Array
    ) -> Array:
        mask = jnp.where(is_local, full_mask & window_mask, full_mask)
        base = jnp.where(is_local, self.local_rope_base, self.global_rope_base)
        scale = jnp.where(is_local, 1.0, self.global_rope_scale)
        attn = self.attn(self.pre_attention_norm(x), positions, mask, base, scale)
        x = x + self.post_attention_norm(attn)
        return x + self.post_ffw_norm(self.mlp(self.pre_ffw_norm(x)))


class Embedder(nnx.Module):
    def __init__(self, c: Gemma3Config, rngs: nnx.Rngs) -> None:
        self.input_embedding = nnx.Param(
            nnx.initializers.normal(1.0)(rngs.params(), (c.vocab_size, c.width), jnp.float32)
        )


class Gemma3(nnx.Module):
    """Token embeddings in, final-normed hidden states out; `logits` ties the output to the embedding."""

    def __init__(self, config: Gemma3Config, *, rngs: nnx.Rngs) -> None:
        if config.num_heads % config.num_kv_heads or config.head_dim % 2:
            raise ConfigError(
                f"Gemma3 num_heads {config.num_heads} must be a multiple of num_kv_heads "
                f"{config.num_kv_heads} and head_dim {config.head_dim} even",
                fix="fix the Gemma3 config (see GEMMA3_PRESETS for valid sizes)",
            )
        self.config = config
        self.embedder = Embedder(config, rngs)
        self.layers = make_stacked(Block, config, config.depth, rngs)
        self.final_norm = RMSNorm(config.width)

    def embed(self, tokens: Array) -> Array:
        """int [B, T] -> [B, T, width] in the compute dtype, scaled by sqrt(width) like Gemma."""
        dtype = jnp.dtype(self.config.dtype)
        table = self.embedder.input_embedding[...]
        return table[tokens].astype(dtype) * jnp.sqrt(float(self.config.width)).astype(dtype)

    def logits(self, hidden: Array) -> Array:
        return jnp.einsum("BTD,VD->BTV", hidden, self.embedder.input_embedding[...].astype(hidden.dtype))

    def __call__(
        self,
        embedded: Array,
        input_mask: Array,
        *,
        causal: bool,
        positions: Array | None = None,
    ) -> Array:
        """embedded [B, T, width], input_mask bool [B, T] (False = padding) -> hidden [B, T, width].

        Padding tokens are never attended to; their own outputs are meaningless. `positions`
        defaults to 0..T-1.
        """
        c = self.config
        if embedded.ndim != 3 or embedded.shape[-1] != c.width or input_mask.shape != embedded.shape[:2]:
            raise ModelInputError(
                f"Gemma3 expects embedded [B, T, {c.width}] with input_mask [B, T]; got "
                f"{tuple(embedded.shape)} and {tuple(input_mask.shape)}",
                fix="embed tokens with Gemma3.embed (or project features to the Gemma3 width) first",
            )
        b, t = input_mask.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        full_mask = input_mask[:, None, :] & input_mask[:, :, None]
        if causal:
            full_mask &= positions[:, None, :] <= positions[:, :, None]
        distance = jnp.abs(positions[:, :, None] - positions[:, None, :])
        window_mask = distance < c.sliding_window
        x = run_stacked(
            self.layers,
            embedded.astype(jnp.dtype(c.dtype)),
            jnp.asarray(c.is_local()),
            remat=c.remat,
            positions=positions,
            full_mask=full_mask,
            window_mask=window_mask,
        )
        return self.final_norm(x)
