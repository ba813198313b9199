"""SigLIP vision transformer (big_vision ViT, as openpi and the VLM bundle use it), in Flax NNX.

One image [H, W, 3] in [-1, 1] becomes (H/p)*(W/p) tokens: a patch convolution, a learned
position embedding, `depth` pre-LayerNorm encoder blocks, a final `encoder_norm` and, when
`out_dim` is set, a per-token linear `head` (openpi projects to the Gemma width with it; the
value model uses no head). No pooling: every patch token is returned.

SigLIP2's fixed-resolution checkpoints (`siglip2-so400m-patch14-224`) use exactly this
architecture (the HF configs are `model_type: siglip`); SigLIP2 changes the training recipe,
not the image tower, so one module serves both (see docs/models_value.md).

Submodule names copy big_vision's (`embedding`, `pos_embedding`, `Transformer/encoderblock/
LayerNorm_0`, `MlpBlock_0/Dense_0`, `MultiHeadDotProductAttention_0/query`, ...) because the
checkpoints our users hold use them: loading is a prefix strip, not a rename. Encoder blocks are
stacked on a leading axis of size `depth`, as openpi stores them (`scan=True`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recap_core.errors import ConfigError, ModelInputError
from recap_core.models.configs import named_config

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Size and precision of a SigLIP image tower. Plain data: presets are instances of it."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int
    image_size: int
    out_dim: int | None = None  # None: return encoder tokens; else a Dense head to out_dim
    dtype: str = "bfloat16"  # compute dtype of the encoder; params stay float32
    remat: bool = False  # recompute each block in the backward pass (saves activation memory)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def token_dim(self) -> int:
        return self.out_dim if self.out_dim is not None else self.width


# Sources: big_vision `vit.py` decode_variant ("So400m": width 1152, depth 27, mlp 4304, heads 16),
# openpi `models/siglip.py` (variant "So400m/14", pool "none"); HF google/siglip2-so400m-patch14-224.
SIGLIP_PRESETS: dict[str, SiglipConfig] = {
    "So400m/14": SiglipConfig(
        width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14, image_size=224
    ),
    "siglip2-so400m-patch14-224": SiglipConfig(
        width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14, image_size=224
    ),
    "tiny": SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8, image_size=32),
}


def siglip_config(name: str, **overrides: Any) -> SiglipConfig:
    """A preset by name, with field overrides (e.g. `out_dim=2048, dtype="float32"`)."""
    return named_config(SIGLIP_PRESETS, name, "SigLIP variant",
                        "pick a listed variant, or build a SiglipConfig(...) directly", **overrides)


# --------------------------------------------------------------------------------------------
# Stacked layers: one module whose params carry a leading `depth` axis, run with lax.scan.
# Shared by every transformer in recap_core.models (gemma3 imports these).


def make_stacked(layer_cls: Callable[..., nnx.Module], config: Any, depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """`depth` independent `layer_cls(config, rngs)` layers, params stacked on axis 0.

    The stacked init runs as one jitted vmap: creating layers op by op (or with an eager
    nnx.vmap) compiles every small init op separately, which costs seconds per model on CPU.
    The compiled init is cached per (layer class, config, depth), so rebuilding a model is cheap.
    """
    graphdef, init = _stacked_init(layer_cls, config, depth)
    return nnx.merge(graphdef, init(jax.random.split(rngs.params(), depth)))


@functools.lru_cache(maxsize=32)
def _stacked_init(layer_cls: Callable[..., nnx.Module], config: Any, depth: int) -> tuple[Any, Callable]:
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: layer_cls(config, nnx.Rngs(0))))

    def init_one(key: Array) -> nnx.State:
        return nnx.state(layer_cls(config, nnx.Rngs(params=key)))

    return graphdef, jax.jit(jax.vmap(init_one))


def run_stacked(
    layers: nnx.Module,
    x: Array,
    per_layer: Any = None,
    *,
    remat: bool,
    **shared: Any,
) -> Array:
    """x <- layers[i](x, per_layer[i], **shared) for i in range(depth), as one lax.scan.

    `per_layer` is a pytree with a leading depth axis (e.g. a local/global flag per layer);
    `shared` holds arrays every layer sees (masks, positions). With `remat`, activations inside a
    layer are recomputed in the backward pass instead of stored.
    """
    graphdef, state = nnx.split(layers)

    def body(carry: Array, xs: tuple[Any, Any]) -> tuple[Array, None]:
        layer_state, layer_extra = xs
        layer = nnx.merge(graphdef, layer_state)
        if layer_extra is None:
            return layer(carry, **shared), None
        return layer(carry, layer_extra, **shared), None

    if remat:
        body = jax.checkpoint(body, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
    x, _ = jax.lax.scan(body, x, (state, per_layer))
    return x


# --------------------------------------------------------------------------------------------


class MlpBlock(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, dtype: Any, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.xavier_uniform()
        bias_init = nnx.initializers.normal(1e-6)
        self.Dense_0 = nnx.Linear(
            width, mlp_dim, dtype=dtype, kernel_init=init, bias_init=bias_init, rngs=rngs
        )
        self.Dense_1 = nnx.Linear(
            mlp_dim, width, dtype=dtype, kernel_init=init, bias_init=bias_init, rngs=rngs
        )

    def __call__(self, x: Array) -> Array:
        # tanh-approximate gelu: big_vision's nn.gelu default, HF's "gelu_pytorch_tanh".
        return self.Dense_1(jax.nn.gelu(self.Dense_0(x), approximate=True))


class MultiHeadAttention(nnx.Module):
    """Multi-head dot-product attention with big_vision's / nnx's DenseGeneral layout.

    `query`/`key`/`value` kernels are [D, heads, head_dim], `out` is [heads, head_dim, D]: the
    layout of big_vision's SigLIP and of `nnx.MultiHeadAttention`, so SigLIP self-attention and
    the value model's cross-attention load from their checkpoints without reshaping.
    """

    def __init__(self, width: int, num_heads: int, dtype: Any, rngs: nnx.Rngs) -> None:
        head_dim = width // num_heads
        init = nnx.initializers.xavier_uniform()

        def proj() -> nnx.LinearGeneral:
            return nnx.LinearGeneral(width, (num_heads, head_dim), dtype=dtype, kernel_init=init, rngs=rngs)

        self.query, self.key, self.value = proj(), proj(), proj()
        self.out = nnx.LinearGeneral(
            (num_heads, head_dim), width, axis=(-2, -1), dtype=dtype, kernel_init=init, rngs=rngs
        )
        self.head_dim = head_dim

    def __call__(self, x: Array, context: Array | None = None, context_mask: Array | None = None) -> Array:
        """Self attention on x [B, T, D], or cross attention to context [B, S, D] (mask [B, S])."""
        context = x if context is None else context
        q, k, v = self.query(x), self.key(context), self.value(context)  # [B, T|S, N, H]
        q = q * jnp.asarray(self.head_dim**-0.5, q.dtype)
        logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
        if context_mask is not None:
            logits = jnp.where(context_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # softmax in f32
        return self.out(jnp.einsum("bnts,bsnh->btnh", probs, v))


class EncoderBlock(nnx.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x)). Norms run in f32."""

    def __init__(self, config: SiglipConfig, rngs: nnx.Rngs) -> None:
        dtype = jnp.dtype(config.dtype)
        self.LayerNorm_0 = nnx.LayerNorm(config.width, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
        self.MultiHeadDotProductAttention_0 = MultiHeadAttention(config.width, config.num_heads, dtype, rngs)
        self.LayerNorm_1 = nnx.LayerNorm(config.width, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
        self.MlpBlock_0 = MlpBlock(config.width, config.mlp_dim, dtype, rngs)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x = x + self.MultiHeadDotProductAttention_0(self.LayerNorm_0(x).astype(self.dtype))
        return x + self.MlpBlock_0(self.LayerNorm_1(x).astype(self.dtype))


class Encoder(nnx.Module):
    def __init__(self, config: SiglipConfig, rngs: nnx.Rngs) -> None:
        self.encoderblock = make_stacked(EncoderBlock, config, config.depth, rngs)
        self.encoder_norm = nnx.LayerNorm(config.width, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
        self.remat = config.remat

    def __call__(self, x: Array) -> Array:
        return self.encoder_norm(run_stacked(self.encoderblock, x, remat=self.remat))


class Siglip(nnx.Module):
    """images float32 [B, H, W, 3] in [-1, 1] -> tokens [B, N, out_dim or width] (compute dtype)."""

    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs) -> None:
        if config.width % config.num_heads:
            raise ConfigError(
                f"SigLIP width {config.width} is not divisible by num_heads {config.num_heads}",
                fix="choose num_heads dividing width",
            )
        if config.image_size % config.patch_size:
            raise ConfigError(
                f"SigLIP image_size {config.image_size} is not a multiple of patch_size {config.patch_size}",
                fix="choose an image_size divisible by patch_size",
            )
        self.config = config
        p = config.patch_size
        # The patch embedding runs in f32 (as openpi's): it sees raw pixels, before any norm.
        self.embedding = nnx.Conv(
            3, config.width, (p, p), strides=(p, p), padding="VALID", dtype=jnp.float32, rngs=rngs
        )
        self.pos_embedding = nnx.Param(
            nnx.initializers.normal(config.width**-0.5)(rngs.params(), (1, config.num_tokens, config.width))
        )
        self.Transformer = Encoder(config, rngs)
        self.head = (
            nnx.Linear(config.width, config.out_dim, dtype=jnp.dtype(config.dtype), rngs=rngs)
            if config.out_dim is not None
            else None
        )

    def __call__(self, images: Array) -> Array:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.image_size, c.image_size, 3):
            raise ModelInputError(
                f"SigLIP expects images [B, {c.image_size}, {c.image_size}, 3], got shape {tuple(images.shape)}",
                fix=f"resize images to {c.image_size}x{c.image_size} RGB (the model config's image_size)",
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ModelInputError(
                f"SigLIP expects float images in [-1, 1], got dtype {images.dtype}",
                fix="convert uint8 pixels with x / 127.5 - 1 before the model",
            )
        x = self.embedding(images.astype(jnp.float32))
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.pos_embedding[...]
        x = self.Transformer(x.astype(jnp.dtype(c.dtype))).astype(jnp.dtype(c.dtype))
        return self.head(x) if self.head is not None else x
