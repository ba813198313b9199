"""Match a stored param tree against a model's abstract tree and report every difference at once.

A checkpoint that does not fit the model is reported in one `CheckpointError` listing all
missing keys, unexpected keys, wrong shapes and wrong dtypes (not the first one only), so a user
sees in one run whether they picked the wrong preset or a damaged file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

from recap_core.errors import CheckpointError
from recap_core.weights.orbax_tree import Key, LeafInfo, key_str

_LIST_LIMIT = 12


def abstract_flat(model_or_state: Any, sharding: Any = None) -> dict[Key, jax.ShapeDtypeStruct]:
    """{key path: ShapeDtypeStruct with sharding} of an nnx Module, nnx.State or nested dict.

    The sharding of each leaf is, in order: `sharding` (one Sharding for all, or a nested dict
    mirroring the tree), the leaf's own sharding, else the first local device.
    """
    if isinstance(model_or_state, nnx.Module):
        model_or_state = nnx.state(model_or_state, nnx.Param)
    if isinstance(model_or_state, nnx.State):
        model_or_state = nnx.to_pure_dict(model_or_state)
    flat = traverse_util.flatten_dict(model_or_state)
    per_leaf = None if sharding is None or isinstance(sharding, jax.sharding.Sharding) else (
        traverse_util.flatten_dict(nnx.to_pure_dict(sharding) if isinstance(sharding, nnx.State) else sharding))
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    out: dict[Key, jax.ShapeDtypeStruct] = {}
    for key, leaf in flat.items():
        if per_leaf is not None:
            leaf_sharding = per_leaf.get(key, default)
        elif sharding is not None:
            leaf_sharding = sharding
        else:
            leaf_sharding = getattr(leaf, "sharding", None) or default
        out[tuple(str(k) for k in key)] = jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=leaf_sharding)
    return out


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"{len(items)} {title}: " + ", ".join(items[:_LIST_LIMIT]) + more


def plan_restore(
    source: Mapping[Key, LeafInfo],
    target: Mapping[Key, jax.ShapeDtypeStruct],
    *,
    to_target: Callable[[Key], Key | None],
    origin: str,
    allow_missing: str | None = None,
    ignore_unexpected: str | None = None,
    fix: str,
) -> dict[Key, Key]:
    """{target key: source key} for every target leaf, or one CheckpointError with all problems.

    `to_target` maps a stored key onto our name (None: not a model weight, reported unexpected);
    target keys fully matching `allow_missing` may be absent (they keep their fresh init);
    source keys fully matching `ignore_unexpected` are skipped silently (e.g. a text tower).
    """
    allow = re.compile(allow_missing) if allow_missing else None
    ignore = re.compile(ignore_unexpected) if ignore_unexpected else None
    plan: dict[Key, Key] = {}
    unexpected: list[str] = []
    wrong: list[str] = []
    for src_key, info in source.items():
        dst_key = to_target(src_key)
        if dst_key is None or dst_key not in target:
            if not (ignore and ignore.fullmatch(key_str(src_key))):
                unexpected.append(key_str(src_key))
            continue
        want = target[dst_key]
        if tuple(info.shape) != tuple(want.shape):
            wrong.append(f"{key_str(src_key)} has shape {tuple(info.shape)}, the model expects {tuple(want.shape)}")
        elif _is_float(want.dtype) != _is_float(info.dtype):
            wrong.append(f"{key_str(src_key)} has dtype {info.dtype}, the model expects {np.dtype(want.dtype)}")
        else:
            plan[dst_key] = src_key
    # a target whose stored array was rejected above is reported once, under "mismatched", not as missing
    rejected = {to_target(k) for k in source} - set(plan)
    missing = [key_str(k) for k in target
               if k not in plan and k not in rejected and not (allow and allow.fullmatch(key_str(k)))]
    if unexpected or wrong or missing:
        parts = []
        if missing:
            parts.append(_listing("missing keys", sorted(missing)))
        if unexpected:
            parts.append(_listing("unexpected keys", sorted(unexpected)))
        if wrong:
            parts.append(_listing("mismatched arrays", sorted(wrong)))
        raise CheckpointError(f"{origin} does not fit the model: " + "; ".join(parts), fix=fix)
    return plan


def _is_float(dtype: Any) -> bool:
    dt = np.dtype(dtype)
    # bfloat16 is an ml_dtypes extension type: numpy does not class it as floating
    return np.issubdtype(dt, np.floating) or dt.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")
