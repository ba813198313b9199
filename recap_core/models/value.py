"""The RECAP value model: a C51 distributional critic on SigLIP2 + Gemma3 (pi0.6 paper, pistar forks).

    images (<= max_cameras) -> SigLIP2 -> img_projection (1152 -> 640) -> image tokens
    prompt tokens -> Gemma3 embedding; text += cross_attention(cross_attn_norm(text), image tokens)
    [image tokens, text] -> Gemma3 with bidirectional attention over valid tokens
    masked mean-pool -> value_head (LayerNorm -> 640->320 -> gelu -> 320->201) -> logits over 201
    bins (atoms) evenly spaced on [-1, 0]

The scalar target is projected onto its two neighbouring atoms (`two_hot`), trained with
cross-entropy, and the prediction is the distribution's expectation (`expected_value`).
Top-level names (`img`, `img_projection`, `llm`, `cross_attention`, `cross_attn_norm`,
`value_head`) follow the pistar value model so its checkpoints map onto ours
(docs/models_value.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.scipy.special import ndtr

from recap_core.errors import ConfigError, ModelInputError
from recap_core.models.configs import named_config
from recap_core.models.gemma3 import Gemma3, Gemma3Config, gemma3_config
from recap_core.models.siglip import MultiHeadAttention, Siglip, SiglipConfig, siglip_config

Array = jax.Array

FREEZE_MODES = ("all_backbones", "siglip_only", "none")
TARGETS = ("two_hot", "hl_gauss")


@dataclasses.dataclass(frozen=True)
class ValueConfig:
    siglip: SiglipConfig
    gemma3: Gemma3Config
    max_cameras: int = 3
    max_token_len: int = 48  # pistar's GemmaValueTokenizer max_len
    num_bins: int = 201
    v_min: float = -1.0
    v_max: float = 0.0
    cross_attn_heads: int = 8
    head_hidden: int = 320
    freeze: str = "all_backbones"  # one of FREEZE_MODES; see frozen_filter
    target: str = "two_hot"  # one of TARGETS: how a scalar value_label becomes a distribution over the bins
    hl_gauss_sigma: float = 0.75  # HL-Gauss: the Gaussian's sigma in bin widths (Farebrother et al. 2024: 0.75)

    @property
    def image_size(self) -> int:
        return self.siglip.image_size

    @property
    def bin_width(self) -> float:
        return (self.v_max - self.v_min) / (self.num_bins - 1)

    def atoms(self) -> Array:
        return jnp.linspace(self.v_min, self.v_max, self.num_bins, dtype=jnp.float32)


# Sources: pistar `value_model.py` / `value_model_config.py` (So400m/14 without head, Gemma3-270M,
# 640-wide projection, 8-head cross attention, 201 atoms on [-1, 0], max_token_len 48); SigLIP2
# So400m/14 at 224 px (the VLM bundle's `siglip2-so400m-patch14-224-jax`).
VALUE_PRESETS: dict[str, ValueConfig] = {
    "value": ValueConfig(
        siglip=siglip_config("siglip2-so400m-patch14-224"),
        gemma3=gemma3_config("270m"),
    ),
    # Trains in seconds on CPU and learns the toy task's progress in a few hundred steps. The
    # vocabulary stays Gemma3's (262144) so real tokenizer ids fit. Two layers with a window wider
    # than any input (so every layer attends globally) in float32: the 7-layer, window-4 Gemma3
    # `tiny` in bfloat16 stayed at the label's marginal (a constant prediction) for 1000 steps on
    # the toy task, while this shape reaches a Spearman of ~0.7 with the labels in 600.
    "value-tiny": ValueConfig(
        siglip=siglip_config("tiny", dtype="float32"),
        gemma3=gemma3_config("tiny", vocab_size=262_144, depth=2, sliding_window=512, dtype="float32"),
        cross_attn_heads=4,
        head_hidden=64,
    ),
}


def value_config(name: str, **overrides: Any) -> ValueConfig:
    config = named_config(VALUE_PRESETS, name, "value-model preset", "pick a listed preset (see `recap presets`)",
                          **overrides)
    _check_freeze_mode(config.freeze)
    if config.target not in TARGETS:
        raise ConfigError(f"unknown value target {config.target!r}; expected one of {', '.join(TARGETS)}",
                          fix="use --target two_hot (C51's projection) or --target hl_gauss")
    if not (0 < config.hl_gauss_sigma <= 10):
        raise ConfigError(f"hl_gauss_sigma {config.hl_gauss_sigma} must be in (0, 10] bin widths",
                          fix="leave the default 0.75 (Farebrother et al. 2024)")
    return config


# ---------------------------------------------------------------------------------------------
# C51 target projection and readout.


def two_hot(value: Array, config: ValueConfig) -> Array:
    """float [B] -> [B, num_bins]: weight on the two atoms around each value, expectation = value.

    Values outside [v_min, v_max] are clipped first (labels in [-1, 0] by construction).
    """
    v = jnp.clip(value.astype(jnp.float32), config.v_min, config.v_max)
    position = (v - config.v_min) / config.bin_width  # fractional atom index
    lower = jnp.clip(jnp.floor(position), 0, config.num_bins - 2)
    upper_weight = position - lower
    lower_i = lower.astype(jnp.int32)
    return (
        jax.nn.one_hot(lower_i, config.num_bins) * (1.0 - upper_weight)[..., None]
        + jax.nn.one_hot(lower_i + 1, config.num_bins) * upper_weight[..., None]
    )


def hl_gauss(value: Array, config: ValueConfig) -> Array:
    """float [B] -> [B, num_bins]: HL-Gauss ("Stop Regressing", Farebrother et al. 2024), the mass of
    N(value, (sigma * bin width)^2) that falls in each bin [atom - w/2, atom + w/2], renormalised over
    the support. Spreads the target over neighbouring bins, which regularises the classifier."""
    v = jnp.clip(value.astype(jnp.float32), config.v_min, config.v_max)
    w = config.bin_width
    edges = jnp.linspace(config.v_min - w / 2, config.v_max + w / 2, config.num_bins + 1, dtype=jnp.float32)
    cdf = ndtr((edges[None, :] - v[..., None]) / (config.hl_gauss_sigma * w))
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / (cdf[..., -1:] - cdf[..., :1])


def target_distribution(value: Array, config: ValueConfig) -> Array:
    """The training target of `config.target` for scalar labels."""
    return hl_gauss(value, config) if config.target == "hl_gauss" else two_hot(value, config)


def expected_value(logits: Array, config: ValueConfig) -> Array:
    """[B, num_bins] logits -> [B] expectation over the atoms, in f32."""
    return jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * config.atoms(), axis=-1)


def cross_entropy(logits: Array, target: Array) -> Array:
    """Mean over the batch of -sum(target * log_softmax(logits)), in f32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(target * log_probs, axis=-1))


# ---------------------------------------------------------------------------------------------
# Freezing.


def _check_freeze_mode(mode: str) -> None:
    if mode not in FREEZE_MODES:
        raise ConfigError(
            f"value-model freeze mode {mode!r} is not one of {FREEZE_MODES}",
            fix="set freeze to all_backbones (only projection, cross-attention and head train), "
            "siglip_only (Gemma3 trains too) or none",
        )


def frozen_filter(mode: str) -> nnx.filterlib.Filter:
    """nnx filter selecting the params that do NOT train under `mode`.

    The Gemma3 token-embedding table (262144 x 640) is frozen in every mode: as in pistar, text
    embeddings pass through stop_gradient, and leaving the table trainable would only let weight
    decay shrink it.
    """
    _check_freeze_mode(mode)
    embedding = nnx.All(nnx.PathContains("llm"), nnx.PathContains("embedder"))
    if mode == "all_backbones":
        return nnx.Any(nnx.PathContains("img"), nnx.PathContains("llm"))
    if mode == "siglip_only":
        return nnx.Any(nnx.PathContains("img"), embedding)
    return embedding


def trainable_filter(mode: str) -> nnx.filterlib.Filter:
    return nnx.All(nnx.Param, nnx.Not(frozen_filter(mode)))


# ---------------------------------------------------------------------------------------------


class ValueHead(nnx.Module):
    """LayerNorm -> Linear(width, hidden) -> gelu -> Linear(hidden, num_bins), in f32."""

    def __init__(self, width: int, hidden: int, num_bins: int, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
        self.hidden = nnx.Linear(width, hidden, dtype=jnp.float32, rngs=rngs)
        self.out = nnx.Linear(hidden, num_bins, dtype=jnp.float32, rngs=rngs)

    def __call__(self, pooled: Array) -> Array:
        return self.out(jax.nn.gelu(self.hidden(self.norm(pooled.astype(jnp.float32)))))


class ValueModel(nnx.Module):
    def __init__(self, config: ValueConfig, *, rngs: nnx.Rngs) -> None:
        _check_freeze_mode(config.freeze)
        if config.siglip.out_dim is not None:
            raise ConfigError(
                "the value model projects raw SigLIP tokens itself; siglip.out_dim must be None, "
                f"got {config.siglip.out_dim}",
                fix="use a SigLIP config without a head (siglip_config(..., out_dim=None))",
            )
        width = config.gemma3.width
        if width % config.cross_attn_heads:
            raise ConfigError(
                f"cross_attn_heads {config.cross_attn_heads} does not divide the Gemma3 width {width}",
                fix="choose cross_attn_heads dividing gemma3.width",
            )
        dtype = jnp.dtype(config.gemma3.dtype)
        self.config = config
        self.img = Siglip(config.siglip, rngs=rngs)
        self.img_projection = nnx.Linear(config.siglip.width, width, dtype=dtype, rngs=rngs)
        self.llm = Gemma3(config.gemma3, rngs=rngs)
        self.cross_attn_norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
        self.cross_attention = MultiHeadAttention(width, config.cross_attn_heads, dtype, rngs)
        self.value_head = ValueHead(width, config.head_hidden, config.num_bins, rngs)

    def _check_inputs(self, inputs: dict[str, Any]) -> None:
        c = self.config
        for key in ("images", "image_masks", "tokens", "token_mask"):
            if key not in inputs:
                raise ModelInputError(
                    f"value-model batch has no {key!r}; got keys {sorted(inputs)}",
                    fix="build batches with images, image_masks, tokens, token_mask (and value_label to train)",
                )
        cameras = list(inputs["images"])
        if not 1 <= len(cameras) <= c.max_cameras:
            raise ModelInputError(
                f"the value model takes 1 to {c.max_cameras} cameras, got {len(cameras)}: {cameras}",
                fix="choose at most max_cameras camera keys for the value model",
            )
        missing = [cam for cam in cameras if cam not in inputs["image_masks"]]
        if missing:
            raise ModelInputError(
                f"image_masks lacks cameras {missing} present in images",
                fix="give one bool [B] mask per camera (True where the image is real)",
            )
        if inputs["tokens"].ndim != 2 or inputs["token_mask"].shape != inputs["tokens"].shape:
            raise ModelInputError(
                f"tokens must be int [B, L] with token_mask bool [B, L]; got {inputs['tokens'].shape} "
                f"and {inputs['token_mask'].shape}",
                fix="tokenize prompts with the value-model tokenizer (pads to max_token_len with a mask)",
            )

    def logits(self, inputs: dict[str, Any]) -> Array:
        """Batch inputs (see module docstring / docs/internals.md) -> logits f32 [B, num_bins]."""
        self._check_inputs(inputs)
        cameras = list(inputs["images"])
        batch = inputs["tokens"].shape[0]
        # All cameras through SigLIP in one call: [C*B, H, W, 3] -> [C*B, N, width].
        stacked = jnp.concatenate([jnp.asarray(inputs["images"][cam]) for cam in cameras], axis=0)
        feats = self.img_projection(self.img(stacked))
        n = feats.shape[1]
        img_tokens = feats.reshape(len(cameras), batch, n, -1).transpose(1, 0, 2, 3)
        img_tokens = img_tokens.reshape(batch, len(cameras) * n, feats.shape[-1])
        img_mask = jnp.stack([jnp.asarray(inputs["image_masks"][cam], bool) for cam in cameras], axis=1)
        img_mask = jnp.repeat(img_mask, n, axis=1)  # [B, C*N], camera-major like img_tokens

        token_mask = jnp.asarray(inputs["token_mask"], bool)
        text = jax.lax.stop_gradient(self.llm.embed(jnp.asarray(inputs["tokens"])))
        text = text + self.cross_attention(
            self.cross_attn_norm(text).astype(text.dtype), img_tokens.astype(text.dtype), img_mask
        )
        tokens = jnp.concatenate([img_tokens.astype(text.dtype), text], axis=1)
        mask = jnp.concatenate([img_mask, token_mask], axis=1)
        hidden = self.llm(tokens, mask, causal=False).astype(jnp.float32)
        weights = mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return self.value_head(pooled)

    def predict(self, inputs: dict[str, Any]) -> Array:
        """Expected value f32 [B] in [v_min, v_max]."""
        return expected_value(self.logits(inputs), self.config)

    def loss(self, inputs: dict[str, Any]) -> tuple[Array, dict[str, Array]]:
        """(cross-entropy against the target distribution of value_label, metrics) for one batch."""
        if "value_label" not in inputs:
            raise ModelInputError(
                "value-model training batch has no 'value_label'",
                fix="train on a dataset with the RECAP value_label column (recap data label / convert)",
            )
        c = self.config
        label = jnp.asarray(inputs["value_label"], jnp.float32)
        logits = self.logits(inputs)
        loss = cross_entropy(logits, target_distribution(label, c))
        predicted = expected_value(logits, c)
        outside = (label < c.v_min) | (label > c.v_max)
        return loss, {
            "loss": loss,
            "value_mae": jnp.mean(jnp.abs(predicted - jnp.clip(label, c.v_min, c.v_max))),
            "label_clipped_frac": jnp.mean(outside.astype(jnp.float32)),
        }
