"""Named model presets (policy and value), with abstract parameter counts and memory estimates.

A preset is plain data: a name, a kind and a model config. Runs store the resolved config, so a
preset only picks defaults. Sizes are computed with `nnx.eval_shape` (no parameter memory).

Training memory estimate (bytes), for the weights and optimiser only:
    16 * trainable  (f32 param 4 + f32 grad 4 + Adam first and second moments 8)
  +  2 * frozen     (frozen params are cast to bf16, as openpi's train.py does)
Activations, the data pipeline and an EMA copy (4 bytes per param when enabled; LoRA runs turn
EMA off) are not included.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

from recap_core.errors import ConfigError
from recap_core.models.tokenizer import TOY_VOCAB_SIZE

Kind = Literal["policy", "value"]

BYTES_PER_TRAINABLE = 16
BYTES_PER_FROZEN = 2


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    kind: Kind
    description: str
    model: Any  # Pi0Config (policy) or ValueConfig (value)


@dataclasses.dataclass(frozen=True)
class PresetSize:
    total_params: int
    trainable_params: int

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def train_memory_bytes(self) -> int:
        return BYTES_PER_TRAINABLE * self.trainable_params + BYTES_PER_FROZEN * self.frozen_params


def _policy_presets() -> dict[str, Preset]:
    from recap_core.models.pi0 import Pi0Config

    # LoRA presets also freeze SigLIP (openpi trains it): a LoRA checkpoint then holds the adapters
    # and the small heads only, and the run fits one 24 GB GPU. `--set model.train_vision=true`
    # trains the vision tower as openpi does.
    lora = dict(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora", train_vision=False)
    # CPU size for tests and the toy demo: openpi's "dummy" Gemma, a 2-layer SigLIP at 32 px,
    # the toy tokenizer's vocabulary, action_dim 8 (the toy arm has 6), f32 without remat.
    tiny = dict(paligemma_variant="dummy", action_expert_variant="dummy_expert", siglip_variant="tiny",
                image_size=32, action_dim=8, action_horizon=10, vocab_size=TOY_VOCAB_SIZE,
                dtype="float32", remat=False)
    return {p.name: p for p in (
        Preset("pi05", "policy", "pi0.5: SigLIP So400m/14 + Gemma 2B + Gemma 300M action expert, full fine-tune",
               Pi0Config()),
        Preset("pi05-lora", "policy", "pi0.5 with LoRA (2B rank 16, 300M rank 32); base LLM and SigLIP frozen",
               Pi0Config(**lora)),
        Preset("pi06", "policy", "pi0.6: pi0.5 conditioned on the advantage indicator, full fine-tune",
               Pi0Config(pi06=True)),
        Preset("pi06-lora", "policy", "pi0.6 with LoRA (2B rank 16, 300M rank 32); base LLM and SigLIP frozen",
               Pi0Config(pi06=True, **lora)),
        Preset("pi05-tiny", "policy", "tiny pi0.5 for CPU tests and the toy demo",
               # Long enough for the toy tasks' prompts with a 6-D state and the indicator:
               # truncation would cut the advantage clause off and silently disable pi0.6.
               Pi0Config(max_token_len=64, **tiny)),
        Preset("pi06-tiny", "policy", "tiny pi0.6 for CPU tests and the toy demo",
               Pi0Config(pi06=True, max_token_len=72, **tiny)),
    )}


def _value_presets() -> dict[str, Preset]:
    from recap_core.models.value import VALUE_PRESETS

    descriptions = {
        "value": "C51 value model: SigLIP2 So400m/14 + Gemma3 270M, 201 bins on [-1, 0]",
        "value-tiny": "tiny value model for CPU tests and the toy demo",
    }
    return {name: Preset(name, "value", descriptions.get(name, "value model"), config)
            for name, config in VALUE_PRESETS.items()}


@functools.cache
def _all_presets() -> dict[str, Preset]:
    return {**_policy_presets(), **_value_presets()}


def preset_names() -> list[str]:
    return list(_all_presets())


def get_preset(name: str) -> Preset:
    presets = _all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; expected one of: {', '.join(presets)}",
                          fix="pick a listed preset (`recap presets` shows them with their sizes)")
    return presets[name]


def policy_action_horizon(name: str) -> int:
    """The action chunk length of a policy preset (delta-action norm stats depend on it)."""
    preset = get_preset(name)
    if preset.kind != "policy":
        policies = ", ".join(p.name for p in _all_presets().values() if p.kind == "policy")
        raise ConfigError(f"preset {name!r} is a value model; it predicts no actions", fix=f"name a policy preset: {policies}")
    return int(preset.model.action_horizon)


def list_presets() -> list[Preset]:
    return list(_all_presets().values())


def build_model(preset: Preset, rngs: Any) -> Any:
    """The nnx model of a preset (call under `nnx.eval_shape` for an abstract one)."""
    if preset.kind == "policy":
        return preset.model.create(rngs)
    from recap_core.models.value import ValueModel

    return ValueModel(preset.model, rngs=rngs)


def frozen_filter(preset: Preset) -> Any:
    if preset.kind == "policy":
        return preset.model.freeze_filter()
    from recap_core.models.value import frozen_filter as value_frozen_filter

    return value_frozen_filter(preset.model.freeze)


@functools.cache
def preset_size(name: str) -> PresetSize:
    """Total and trainable parameter counts of a preset, from abstract shapes only."""
    import jax
    import numpy as np
    from flax import nnx

    preset = get_preset(name)
    model = nnx.eval_shape(lambda: build_model(preset, nnx.Rngs(0)))

    def count(filt: Any) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, filt)))

    trainable = nnx.All(nnx.Param, nnx.Not(frozen_filter(preset)))
    return PresetSize(total_params=count(nnx.Param), trainable_params=count(trainable))


def describe(preset: Preset) -> dict[str, Any]:
    """A JSON-ready summary: sizes, memory estimate and the model config."""
    size = preset_size(preset.name)
    model = preset.model.to_dict() if hasattr(preset.model, "to_dict") else dataclasses.asdict(preset.model)
    return {
        "name": preset.name,
        "kind": preset.kind,
        "description": preset.description,
        "total_params": size.total_params,
        "trainable_params": size.trainable_params,
        "frozen_params": size.frozen_params,
        "train_memory_gib": round(size.train_memory_bytes / 2**30, 2),
        "memory_formula": "16 B x trainable + 2 B x frozen (params, grads, Adam; no activations or EMA)",
        "model": model,
    }
