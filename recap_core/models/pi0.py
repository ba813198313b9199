"""The pi0.5 / pi0.6 policy: PaliGemma (SigLIP + Gemma 2B) prefix, Gemma-300M action expert, flow matching.

Follows openpi's `Pi0` with `pi05=True` (src/openpi/models/pi0.py):
- prefix = SigLIP tokens of every camera (projected to the Gemma width) + the prompt embedding,
  all attending to each other; the state is in the prompt as text (see tokenizer.py);
- suffix = `action_in_proj(x_t)`, one block after the prefix (it sees the prefix, never the
  reverse); the flow time enters through adaRMS: posemb_sincos -> time_mlp_in -> swish ->
  time_mlp_out -> swish is the conditioning of the action expert's norms;
- loss: t ~ Beta(1.5, 1) * 0.999 + 0.001, x_t = t * noise + (1 - t) * actions, target
  u = noise - actions, squared error averaged over the action dims and the unpadded steps;
- sampling: Euler from t = 1 (noise) to t = 0 in `num_steps`, the prefix run once into a KV cache.
pi0.6 is the same network; the advantage indicator is prompt text. Classifier-free guidance
(v = v_uncond + beta * (v_cond - v_uncond)) runs a second prefix without the indicator.

Inputs (dict): images {cam: float32 [B, S, S, 3] in [-1, 1]}, image_masks {cam: bool [B]},
tokens int32 [B, L], token_mask bool [B, L], actions float32 [B, H, A], action_is_pad bool [B, H];
for guidance also uncond_tokens / uncond_token_mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recap_core.errors import ConfigError, ModelInputError
from recap_core.models import gemma as gemma_lib
from recap_core.models import lora as lora_lib
from recap_core.models.siglip import Siglip, SiglipConfig, siglip_config
from recap_core.models.tokenizer import INDICATOR_EXTRA_LEN, PALIGEMMA_VOCAB_SIZE, POLICY_MAX_LEN

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")  # openpi model.IMAGE_KEYS
VISION_PATHS = r"PaliGemma/img/.*"  # SigLIP and its head, as named in openpi checkpoints
Inputs = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """A pi0.5 policy; `pi06=True` adds the advantage indicator to the prompt (pi0.6 / RECAP)."""

    pi06: bool = False
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    siglip_variant: str = "So400m/14"
    image_size: int = 224
    image_keys: tuple[str, ...] = IMAGE_KEYS
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 0  # 0: openpi's 200 for pi0.5, + 3 for the indicator (pistar) = 203
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    indicator_dropout: float = 0.3  # pi0.6 paper; used by the training input pipeline
    dtype: str = "bfloat16"
    remat: bool = True
    train_vision: bool = True
    """False freezes the vision tower (`PaliGemma/img`: SigLIP and its projection to the Gemma width).
    The -lora presets set False so their checkpoints hold little more than the adapters; openpi's
    LoRA configs train it (True, `--set model.train_vision=true`)."""

    def __post_init__(self) -> None:
        if self.max_token_len == 0:
            object.__setattr__(self, "max_token_len", POLICY_MAX_LEN + (INDICATOR_EXTRA_LEN if self.pi06 else 0))
        object.__setattr__(self, "image_keys", tuple(self.image_keys))
        if not self.image_keys:
            raise ConfigError("Pi0Config.image_keys is empty", fix="name at least one camera, e.g. base_0_rgb")
        if not 0.0 <= self.indicator_dropout <= 1.0:
            raise ConfigError(f"Pi0Config.indicator_dropout={self.indicator_dropout} is not a probability",
                              fix="use a value in [0, 1] (paper: 0.3)")
        if not isinstance(self.train_vision, bool):  # `--set model.train_vision=True` is TOML text, not a bool
            raise ConfigError(f"Pi0Config.train_vision={self.train_vision!r} is not true or false",
                              fix="use --set model.train_vision=true (or false), lower case")
        for name in ("action_dim", "action_horizon", "max_token_len", "image_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Pi0Config.{name}={getattr(self, name)} must be positive",
                                  fix=f"set {name} to a positive integer")
        # fail at config time (e.g. a typo in --set model.paligemma_variant), not at model build
        _ = self.prefix_config, self.expert_config, self.siglip

    @property
    def pi05(self) -> bool:
        return True  # recap only builds pi0.5-style models (state as text, adaRMS time conditioning)

    @property
    def prefix_config(self) -> gemma_lib.GemmaConfig:
        return gemma_lib.get_config(self.paligemma_variant)

    @property
    def expert_config(self) -> gemma_lib.GemmaConfig:
        return gemma_lib.get_config(self.action_expert_variant)

    @property
    def siglip(self) -> SiglipConfig:
        return siglip_config(self.siglip_variant, out_dim=self.prefix_config.width, image_size=self.image_size,
                             dtype=self.dtype, remat=self.remat)

    @property
    def uses_lora(self) -> bool:
        return self.prefix_config.has_lora or self.expert_config.has_lora

    def freeze_filter(self) -> Any:
        """Frozen parameters: openpi's `get_freeze_filter` (with LoRA, the base LLM weights), plus the
        vision tower when `train_vision` is False."""
        llm = lora_lib.freeze_filter(self.prefix_config.has_lora, self.expert_config.has_lora)
        if self.train_vision:
            return llm
        vision = lora_lib.PathRegex(VISION_PATHS)
        return vision if llm is nnx.Nothing else nnx.Any(llm, vision)

    def create(self, rngs: nnx.Rngs) -> Pi0:
        return Pi0(self, rngs=rngs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pi0Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown policy config keys {unknown}; expected some of {sorted(known)}",
                              fix="remove or rename the keys (see `recap presets --json`)")
        return cls(**data)


def posemb_sincos(t: jax.Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> jax.Array:
    """Sine/cosine embedding of scalar times [B] -> [B, dim], periods log-spaced in [min, max]."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    angle = jnp.einsum("i,j->ij", t.astype(jnp.float32), 2 * jnp.pi / period, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class Pi0(nnx.Module):
    """pi0.5 / pi0.6 policy. Parameter tree as openpi's: PaliGemma/{llm,img}, action_*_proj, time_mlp_*."""

    def __init__(self, config: Pi0Config, *, rngs: nnx.Rngs) -> None:
        self.config = config
        prefix, expert = config.prefix_config, config.expert_config
        llm = gemma_lib.Gemma([prefix, expert], adaptive=[False, True], vocab_size=config.vocab_size,
                              dtype=jnp.dtype(config.dtype), remat=config.remat, rngs=rngs)
        self.PaliGemma = nnx.Dict(llm=llm, img=Siglip(config.siglip, rngs=rngs))
        self.action_in_proj = nnx.Linear(config.action_dim, expert.width, rngs=rngs)
        self.time_mlp_in = nnx.Linear(expert.width, expert.width, rngs=rngs)
        self.time_mlp_out = nnx.Linear(expert.width, expert.width, rngs=rngs)
        self.action_out_proj = nnx.Linear(expert.width, config.action_dim, rngs=rngs)

    # ------------------------------------------------------------------ embedding

    def embed_images(self, inputs: Inputs) -> tuple[jax.Array, jax.Array]:
        """SigLIP tokens of every configured camera: [B, cams * N, D] and their validity mask."""
        images, masks = inputs.get("images", {}), inputs.get("image_masks", {})
        tokens, valid = [], []
        for key in self.config.image_keys:
            if key not in images:
                raise ModelInputError(
                    f"policy input images lacks camera {key!r}; the model expects {list(self.config.image_keys)}",
                    fix="map the dataset cameras onto the model's image keys (missing cameras: zeros + mask False)",
                )
            x = self.PaliGemma["img"](images[key])
            tokens.append(x)
            mask = masks.get(key, jnp.ones(x.shape[0], bool))
            valid.append(jnp.repeat(jnp.asarray(mask, bool)[:, None], x.shape[1], axis=1))
        return jnp.concatenate(tokens, axis=1), jnp.concatenate(valid, axis=1)

    def embed_prefix(self, image_tokens: jax.Array, image_valid: jax.Array, tokens: jax.Array,
                     token_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        text = self.PaliGemma["llm"].embed(tokens)
        return (jnp.concatenate([image_tokens.astype(text.dtype), text], axis=1),
                jnp.concatenate([image_valid, jnp.asarray(token_mask, bool)], axis=1))

    def time_conditioning(self, t: jax.Array) -> jax.Array:
        emb = posemb_sincos(t, self.action_in_proj.out_features)
        return nnx.swish(self.time_mlp_out(nnx.swish(self.time_mlp_in(emb))))

    def _suffix_ar_mask(self) -> jax.Array:
        # the action chunk starts a new block: it sees the prefix, the prefix cannot see it
        return jnp.asarray([True] + [False] * (self.config.action_horizon - 1))

    # ------------------------------------------------------------------ training

    def velocity_full(self, inputs: Inputs, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """v(x_t, t) from one joint forward pass of prefix and suffix (the training path)."""
        prefix, prefix_valid = self.embed_prefix(*self.embed_images(inputs), inputs["tokens"], inputs["token_mask"])
        suffix = self.action_in_proj(x_t)
        valid = jnp.concatenate([prefix_valid, jnp.ones(suffix.shape[:2], bool)], axis=1)
        ar = jnp.concatenate([jnp.zeros(prefix.shape[1], bool), self._suffix_ar_mask()])
        mask = gemma_lib.make_attn_mask(valid, ar)
        positions = jnp.cumsum(valid, axis=1) - 1
        (_, out), _ = self.PaliGemma["llm"]([prefix, suffix], positions, mask, [None, self.time_conditioning(t)])
        return self.action_out_proj(out[:, -self.config.action_horizon:]).astype(jnp.float32)

    def loss(self, inputs: Inputs, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Flow-matching loss (openpi), averaged over action dims and unpadded steps."""
        actions = jnp.asarray(inputs["actions"], jnp.float32)
        if actions.shape[1:] != (self.config.action_horizon, self.config.action_dim):
            raise ModelInputError(
                f"policy input actions has shape {tuple(actions.shape)}, expected "
                f"[B, {self.config.action_horizon}, {self.config.action_dim}]",
                fix="pad actions to the model's action_dim and cut chunks to its action_horizon",
            )
        noise_rng, time_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, actions.shape)
        t = jax.random.beta(time_rng, 1.5, 1.0, actions.shape[:1]) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        v_t = self.velocity_full(inputs, x_t, t)
        per_step = jnp.mean(jnp.square(v_t - (noise - actions)), axis=-1)  # [B, H]
        pad = inputs.get("action_is_pad")
        valid = jnp.ones_like(per_step) if pad is None else 1.0 - jnp.asarray(pad, jnp.float32)
        loss = jnp.sum(per_step * valid) / jnp.maximum(jnp.sum(valid), 1.0)
        return loss, {"flow_loss": loss, "mean_time": jnp.mean(t)}

    # ------------------------------------------------------------------ inference

    def _prefix_cache(self, image_tokens: jax.Array, image_valid: jax.Array, tokens: jax.Array,
                      token_mask: jax.Array) -> tuple[gemma_lib.KVCache, jax.Array]:
        prefix, valid = self.embed_prefix(image_tokens, image_valid, tokens, token_mask)
        mask = gemma_lib.make_attn_mask(valid, jnp.zeros(prefix.shape[1], bool))
        _, kv = self.PaliGemma["llm"]([prefix, None], jnp.cumsum(valid, axis=1) - 1, mask)
        return kv, valid

    def _velocity_cached(self, kv: gemma_lib.KVCache, prefix_valid: jax.Array, x_t: jax.Array,
                         t: jax.Array) -> jax.Array:
        suffix = self.action_in_proj(x_t)
        batch, length = suffix.shape[:2]
        own = gemma_lib.make_attn_mask(jnp.ones((batch, length), bool), self._suffix_ar_mask())
        mask = jnp.concatenate([jnp.repeat(prefix_valid[:, None, :], length, axis=1), own], axis=-1)
        positions = jnp.sum(prefix_valid, axis=-1)[:, None] + jnp.arange(length)[None, :]
        (_, out), _ = self.PaliGemma["llm"]([None, suffix], positions, mask, [None, self.time_conditioning(t)],
                                            kv_cache=kv)
        return self.action_out_proj(out[:, -self.config.action_horizon:]).astype(jnp.float32)

    def sample_actions(self, rng: jax.Array, inputs: Inputs, *, num_steps: int = 10, cfg_beta: float = 1.0,
                       noise: jax.Array | None = None) -> jax.Array:
        """Actions [B, H, A] by Euler integration from noise (t=1) to data (t=0).

        cfg_beta: classifier-free guidance weight (static); 1.0 is plain conditional sampling and
        skips the unconditional pass; other values need `uncond_tokens` / `uncond_token_mask`.
        """
        image_tokens, image_valid = self.embed_images(inputs)
        batch = image_tokens.shape[0]
        kv, valid = self._prefix_cache(image_tokens, image_valid, inputs["tokens"], inputs["token_mask"])
        guided = cfg_beta != 1.0
        if guided:
            if "uncond_tokens" not in inputs or "uncond_token_mask" not in inputs:
                raise ModelInputError(
                    f"cfg_beta={cfg_beta} needs inputs uncond_tokens and uncond_token_mask (prompts without "
                    "the advantage indicator)",
                    fix="tokenize with with_unconditional=True, or use cfg_beta=1.0",
                )
            kv_u, valid_u = self._prefix_cache(image_tokens, image_valid, inputs["uncond_tokens"],
                                               inputs["uncond_token_mask"])
        shape = (batch, self.config.action_horizon, self.config.action_dim)
        x = jax.random.normal(rng, shape) if noise is None else jnp.asarray(noise, jnp.float32).reshape(shape)
        dt = -1.0 / num_steps

        def step(i: jax.Array, x_t: jax.Array) -> jax.Array:
            t = jnp.full((batch,), 1.0 + i * dt, jnp.float32)
            v = self._velocity_cached(kv, valid, x_t, t)
            if guided:
                v_u = self._velocity_cached(kv_u, valid_u, x_t, t)
                v = v_u + cfg_beta * (v - v_u)
            return x_t + dt * v

        return jax.lax.fori_loop(0, num_steps, step, x)


def fake_inputs(config: Pi0Config, batch_size: int = 1, *, with_unconditional: bool = False) -> dict[str, Any]:
    """All-zero inputs of the right shapes (for abstract evaluation, compilation and warm-up)."""
    s, b, length = config.image_size, batch_size, config.max_token_len
    out: dict[str, Any] = {
        "images": {k: jnp.zeros((b, s, s, 3), jnp.float32) for k in config.image_keys},
        "image_masks": {k: jnp.ones((b,), bool) for k in config.image_keys},
        "tokens": jnp.zeros((b, length), jnp.int32),
        "token_mask": jnp.ones((b, length), bool),
        "actions": jnp.zeros((b, config.action_horizon, config.action_dim), jnp.float32),
        "action_is_pad": jnp.zeros((b, config.action_horizon), bool),
    }
    if with_unconditional:
        out["uncond_tokens"] = out["tokens"]
        out["uncond_token_mask"] = out["token_mask"]
    return out
