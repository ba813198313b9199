"""openpi policy checkpoints (`<ckpt>/params/`) <-> recap's pi0.5 / pi0.6 param tree.

openpi writes `params/` with orbax as the PyTree `{"params": tree}` (`models/model.py`
`restore_params`, `training/checkpoints.py`); a training run saves an nnx.State, so every leaf
path then ends in `value`. Our `Pi0` is built with openpi's module names, so below each subtree
of `OPENPI_TO_RECAP` the names are the same; the table is the one place a rename would go.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from flax import traverse_util

from recap_core.errors import CheckpointError
from recap_core.rundir import find_run
from recap_core.weights.kinds import (
    CheckpointKind,
    check_policy_kind,
    classify_openpi_keys,
    openpi_params_dir,
)
from recap_core.weights.layout import BUNDLE_GEMMA
from recap_core.weights.match import abstract_flat, plan_restore
from recap_core.weights.orbax_tree import (
    Key,
    LeafInfo,
    read_tree_metadata,
    restore_leaves,
    save_tree,
    strip_value_suffix,
)

# openpi subtree -> recap subtree (pi0.5: PaliGemma mixture + SigLIP, action projections, time MLP).
OPENPI_TO_RECAP: tuple[tuple[Key, Key], ...] = (
    (("PaliGemma", "llm"), ("PaliGemma", "llm")),
    (("PaliGemma", "img"), ("PaliGemma", "img")),
    (("action_in_proj",), ("action_in_proj",)),
    (("action_out_proj",), ("action_out_proj",)),
    (("time_mlp_in",), ("time_mlp_in",)),
    (("time_mlp_out",), ("time_mlp_out",)),
)
PARAMS_ITEM = "params"  # the single top-level key of openpi's params/ checkpoint
LORA_REGEX = ".*lora.*"  # adapters a full checkpoint lacks: fresh init (openpi's CheckpointWeightLoader)


def _rename(key: Key, table: tuple[tuple[Key, Key], ...]) -> Key | None:
    for src, dst in table:
        if key[: len(src)] == src:
            return dst + key[len(src):]
    return None


def openpi_key_to_recap(key: Key) -> Key | None:
    return _rename(key, OPENPI_TO_RECAP)


def recap_key_to_openpi(key: Key) -> Key | None:
    return _rename(key, tuple((dst, src) for src, dst in OPENPI_TO_RECAP))


class OpenpiParams:
    """An openpi `params/` checkpoint, read as metadata only: its keys, shapes, dtypes and kind."""

    def __init__(self, path: Path) -> None:
        self.path = openpi_params_dir(Path(path))
        raw = read_tree_metadata(self.path, "openpi params checkpoint")
        inner = {k[1:]: v for k, v in raw.items() if k[:1] == (PARAMS_ITEM,)}
        if not inner:
            top = sorted({k[0] for k in raw})
            raise CheckpointError(
                f"{self.path} has no {PARAMS_ITEM!r} item (top-level keys: {top}); openpi's params/ "
                "checkpoint is the PyTree {'params': ...}",
                fix="pass an openpi checkpoint directory (holding params/ and assets/) or its params/ folder",
            )
        self.leaves, self.value_suffix = strip_value_suffix(inner)
        self.kind = classify_openpi_keys(self.leaves)

    def stored_key(self, key: Key) -> Key:
        return (PARAMS_ITEM, *key, *(("value",) if self.value_suffix else ()))

    @property
    def info(self) -> dict[Key, LeafInfo]:
        return self.leaves


def detect_checkpoint_kind(path: Path) -> CheckpointKind:
    """Classify `path` from its layout and stored key names (reads no array data)."""
    path = Path(path).expanduser()
    if find_run(path) is not None:
        return "recap-run"
    if (path / BUNDLE_GEMMA).is_dir():
        return "bundle"
    params = openpi_params_dir(path)
    if (params / "_METADATA").is_file():
        try:
            return OpenpiParams(params).kind
        except CheckpointError:
            return "unknown"
    return "unknown"


def load_policy_params(
    path: Path,
    model_or_abstract_state: Any,
    *,
    dtype: Any = None,
    sharding: Any = None,
    preset: str | None = None,
    allow_missing_lora: bool = True,
) -> dict[str, Any]:
    """openpi params -> a nested dict of device arrays keyed like our model's params.

    Every stored array is checked (name, shape, dtype) against `model_or_abstract_state` before
    any data is read, and restored straight onto its sharding, cast to `dtype` (None: the model
    leaf's dtype). With `allow_missing_lora`, LoRA adapters the checkpoint lacks are left out of
    the result (the caller keeps their fresh init); every other missing key is an error.
    """
    ckpt = OpenpiParams(path)
    target = abstract_flat(model_or_abstract_state, sharding)
    model_lora = any("lora" in part for key in target for part in key)
    check_policy_kind(ckpt.kind, model_uses_lora=model_lora, preset=preset, path=ckpt.path,
                      allow_missing_lora=allow_missing_lora)
    plan = plan_restore(
        ckpt.info, target, to_target=openpi_key_to_recap, origin=f"openpi checkpoint {ckpt.path}",
        allow_missing=LORA_REGEX if allow_missing_lora else None,
        fix="use the preset this checkpoint was trained with (same Gemma / SigLIP sizes, action_dim, LoRA)",
    )
    requests = {
        ckpt.stored_key(src): jax.ShapeDtypeStruct(target[dst].shape, dtype or target[dst].dtype,
                                                   sharding=target[dst].sharding)
        for dst, src in plan.items()
    }
    restored = restore_leaves(ckpt.path, requests, "openpi params checkpoint")
    flat = {dst: restored[ckpt.stored_key(src)] for dst, src in plan.items()}
    return traverse_util.unflatten_dict(flat)


def to_openpi_tree(flat_recap: Mapping[Key, Any]) -> dict[str, Any]:
    """Our flat params -> openpi's `{"params": tree}` item (the layout `params/` holds)."""
    out: dict[Key, Any] = {}
    for key, value in flat_recap.items():
        dst = recap_key_to_openpi(key)
        if dst is None:
            raise CheckpointError(f"param {'/'.join(key)} has no openpi name", fix="export a pi0.5 / pi0.6 policy")
        out[dst] = value
    return {PARAMS_ITEM: traverse_util.unflatten_dict(out)}


def save_openpi_checkpoint(
    out_dir: Path,
    flat_params: Mapping[Key, Any],
    *,
    norm_stats: Mapping[str, Any] | None = None,
    asset_id: str | None = None,
    nnx_values: bool = False,
) -> None:
    """Write an openpi checkpoint directory: `params/` (orbax) and `assets/<asset_id>/norm_stats.json`.

    `nnx_values=True` writes every leaf as `{"value": array}`, as openpi's training saves an
    nnx.State; released checkpoints (and our exports) hold plain arrays.
    """
    out_dir = Path(out_dir)
    tree = to_openpi_tree(flat_params)
    if nnx_values:
        flat = traverse_util.flatten_dict(tree)
        tree = traverse_util.unflatten_dict({(*k, "value"): v for k, v in flat.items()})
    save_tree(out_dir / "params", tree)
    if norm_stats is not None:
        if not asset_id:
            raise CheckpointError("norm stats need an asset id (openpi reads assets/<asset_id>/norm_stats.json)",
                                  fix="pass --asset-id, e.g. the dataset's repo id")
        stats_dir = out_dir / "assets" / asset_id
        stats_dir.mkdir(parents=True, exist_ok=True)
        (stats_dir / "norm_stats.json").write_text(json.dumps(dict(norm_stats), indent=2))
