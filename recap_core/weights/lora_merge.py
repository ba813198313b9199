"""Fold LoRA adapters into their base weights: W' = W + delta(A, B) * alpha / rank.

For the MLP weights delta is A @ B (per gate half, per layer). For the attention einsums the
update is two einsums derived from the layer's equation (`models.lora.lora_equations`), which
for `attn_vec_einsum` also sums over the heads axis between the two steps; the merged delta is
the single einsum of A and B that gives the same linear map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from recap_core.models.gemma import GemmaConfig
from recap_core.models.lora import lora_equations
from recap_core.weights.orbax_tree import Key

# The equations the Gemma mixture applies each attention weight with (models/gemma.py Attention).
ATTENTION_EQUATIONS = {
    "q_einsum": "BTD,NDH->BTNH",
    "kv_einsum": "BSD,CKDH->CBSKH",
    "attn_vec_einsum": "BTNH,NHD->BTD",
}
_LAYER = "Z"  # label of the stacked depth axis; unused by the equations above


def einsum_delta(eqn: str, a: Any, b: Any) -> Any:
    """The weight update (same labels as the weight, plus the stacked depth axis) of a LoRA pair."""
    eqn_a, eqn_b = lora_equations(eqn)
    rhs = eqn.split("->")[0].split(",")[1]
    a_rhs, hidden = eqn_a.split(",")[1].split("->")
    b_rhs, out = eqn_b.split(",")[1].split("->")
    # labels of b summed away in the first step are independent of a's: give them fresh names
    free = iter(c for c in "MOPQRUVWXY" if c not in eqn)
    b_rhs = "".join(c if c in hidden or c in out or c == "L" else next(free) for c in b_rhs)
    return jnp.einsum(f"{_LAYER}{a_rhs},{_LAYER}{b_rhs}->{_LAYER}{rhs}", a, b)


def _expert(module: str) -> int:
    match = re.fullmatch(r".*_(\d+)", module)
    return int(match.group(1)) if match else 0


def merge_lora(flat: Mapping[Key, Any], experts: list[GemmaConfig]) -> dict[Key, Any]:
    """Params with every LoRA pair folded into its weight and the adapters removed."""
    out = {k: v for k, v in flat.items() if not any("lora" in p for p in k)}
    for key in flat:
        leaf = key[-1]
        if leaf == "lora_a":  # attention einsum: <module>/{w, lora_a, lora_b}
            module = key[-2]
            name = re.sub(r"_\d+$", "", module)
            config = experts[_expert(module)].attn_lora
            delta = einsum_delta(ATTENTION_EQUATIONS[name], flat[key], flat[(*key[:-1], "lora_b")])
            base = (*key[:-1], "w")
        elif leaf.endswith("_lora_a"):  # MLP: mlp_<i>/{gating_einsum, gating_einsum_lora_a, ...}
            name = leaf.removesuffix("_lora_a")
            config = experts[_expert(key[-2])].ffn_lora
            delta = jnp.matmul(flat[key], flat[(*key[:-1], f"{name}_lora_b")])
            base = (*key[:-1], name)
        else:
            continue
        if config is None:
            raise ValueError(f"{'/'.join(key)}: the model config has no LoRA for this weight")
        w = out[base]
        out[base] = (w.astype(jnp.float32) + delta.astype(jnp.float32) * config.scaling).astype(w.dtype)
    return out
