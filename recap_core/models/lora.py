"""LoRA: low-rank updates on the Gemma attention and MLP weights, and the freeze filter.

Parameter names follow openpi (`src/openpi/models/lora.py`) so its LoRA checkpoints load by name:
an einsum weight `w` gets `lora_a` / `lora_b`; the MLP weights `gating_einsum` / `linear` get
`gating_einsum_lora_a`, `gating_einsum_lora_b`, `linear_lora_a`, `linear_lora_b`. The update acts
on the weight's last two axes (in, out): `a` replaces `out` by the rank, `b` replaces `in` by it.

Differences from openpi, on purpose:
- `lora_b` starts at zero, so a freshly added adapter leaves the model exactly as it was
  (openpi draws both from N(0, 0.01)); loaded checkpoints overwrite both anyway.
- the `alpha / rank` scaling is applied to the MLP update too (openpi applies it to attention
  only); for openpi's variants alpha == rank, so the scaling is 1 and the maths is identical.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# The einsum label standing for the LoRA rank; must not appear in any model equation.
_RANK_LABEL = "L"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank and scale of one family of adapters (attention or MLP)."""

    rank: int
    alpha: float = 1.0
    init_std: float = 0.01  # N(0, init_std) for `lora_a`; `lora_b` is zero
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(rank)

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


def lora_shapes(shape: Sequence[int], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of (a, b) for a weight whose last two axes are (in, out)."""
    shape = tuple(shape)
    return (*shape[:-1], rank), (*shape[:-2], rank, shape[-1])


def init_lora_pair(
    shape: Sequence[int], config: LoRAConfig, rngs: nnx.Rngs, dtype: Any = jnp.float32
) -> tuple[nnx.Param, nnx.Param]:
    shape_a, shape_b = lora_shapes(shape, config.rank)
    a = jax.random.normal(rngs.params(), shape_a, dtype) * config.init_std
    return nnx.Param(a), nnx.Param(jnp.zeros(shape_b, dtype))


def lora_equations(eqn: str) -> tuple[str, str]:
    """Split `x,w->y` into `x,a->h` and `h,b->y`, where a/b replace w's (in, out) axes by the rank.

    Mirrors openpi's derivation so that the maths (including how leading weight axes such as
    the heads axis of `attn_vec_einsum` are contracted) is the same for loaded adapters.
    """
    match = re.fullmatch(r"(.*),(.*)->(.*)", eqn)
    if match is None or _RANK_LABEL in eqn:
        raise ValueError(f"unsupported einsum equation for LoRA: {eqn!r}")
    lhs, rhs, out = match.groups()
    in_label, out_label = rhs[-2], rhs[-1]
    a_rhs = rhs.replace(out_label, _RANK_LABEL)
    hidden = out.replace(out_label, _RANK_LABEL)
    b_rhs = rhs.replace(in_label, _RANK_LABEL)
    return f"{lhs},{a_rhs}->{hidden}", f"{hidden},{b_rhs}->{out}"


class Einsum(nnx.Module):
    """A weight `w` applied with an einsum equation, plus an optional LoRA update."""

    def __init__(
        self,
        shape: Sequence[int],
        *,
        init: Callable[..., jax.Array],
        lora: LoRAConfig | None,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ) -> None:
        self.w = nnx.Param(init(rngs.params(), tuple(shape), param_dtype))
        self.lora_config = lora
        if lora is not None:
            self.lora_a, self.lora_b = init_lora_pair(shape, lora, rngs, param_dtype)

    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        # compute in the activation dtype (bf16 in training); weights are stored in f32
        y = jnp.einsum(eqn, x, self.w[...].astype(x.dtype))
        if self.lora_config is not None:
            eqn_a, eqn_b = lora_equations(eqn)
            h = jnp.einsum(eqn_a, x, self.lora_a[...].astype(x.dtype))
            y = y + jnp.einsum(eqn_b, h, self.lora_b[...].astype(x.dtype)) * self.lora_config.scaling
        return y


def lora_matmul(
    x: jax.Array, w: jax.Array, pair: tuple[jax.Array, jax.Array] | None, config: LoRAConfig | None
) -> jax.Array:
    """`x @ w` (+ the low-rank update `(x @ a) @ b * scaling` when an adapter is given)."""
    y = jnp.dot(x, w.astype(x.dtype))
    if pair is None or config is None:
        return y
    a, b = pair
    return y + jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * config.scaling


# ------------------------------------------------------------------------------------ freezing


def path_string(path: Sequence[Any]) -> str:
    return "/".join(str(p) for p in path)


class PathRegex:
    """An nnx filter matching parameters whose '/'-joined path fully matches a regex."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._regex = re.compile(pattern)

    def __call__(self, path: Sequence[Any], value: Any) -> bool:
        return self._regex.fullmatch(path_string(path)) is not None

    def __repr__(self) -> str:
        return f"PathRegex({self.pattern!r})"


def freeze_filter(prefix_lora: bool, expert_lora: bool) -> Any:
    """Which parameters stay frozen, with openpi's `Pi0Config.get_freeze_filter` semantics.

    - LoRA on the prefix expert: freeze every `llm` weight (but not the action expert's, the
      `*_1` names, when that expert has no LoRA);
    - LoRA only on the action expert: freeze the action expert's `llm` weights;
    - in both cases the LoRA weights themselves train. Without LoRA nothing is frozen.
    The vision tower (`img`) and the projection heads are never frozen by this filter.
    """
    llm = PathRegex(".*llm.*")
    expert = PathRegex(".*llm.*_1.*")
    filters: list[Any] = []
    if prefix_lora:
        filters.append(llm)
        if not expert_lora:
            filters.append(nnx.Not(expert))
    elif expert_lora:
        filters.append(expert)
    if not filters:
        return nnx.Nothing
    filters.append(nnx.Not(PathRegex(".*lora.*")))
    return nnx.All(*filters)


def trainable_filter(frozen: Any) -> Any:
    """The trainable set: every `nnx.Param` the freeze filter does not select."""
    return nnx.All(nnx.Param, nnx.Not(frozen))
