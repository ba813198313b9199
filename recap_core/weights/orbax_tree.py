"""Reading and writing orbax PyTree checkpoints leaf by leaf (openpi `params/`, the VLM bundle).

Reading goes through the checkpoint's metadata first (names, shapes, dtypes; no array data), so
every problem with a checkpoint can be reported before anything large is read. Restoring asks
orbax for exactly the leaves we need, each straight onto its target sharding and dtype
(`partial_restore`): the host never holds a second full copy of the weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from recap_core.errors import CheckpointError

Key = tuple[str, ...]


def key_str(key: Key) -> str:
    return "/".join(key)


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """What the metadata says about one stored array (no data read)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _is_orbax_dir(path: Path) -> bool:
    return (path / "_METADATA").is_file() or (path / "_CHECKPOINT_METADATA").is_file()


def require_orbax_dir(path: Path, what: str) -> Path:
    """`path` must be an orbax PyTree checkpoint directory; else a CheckpointError saying why."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist", fix="check the path (and that the copy finished)")
    if not path.is_dir():
        raise CheckpointError(f"{what} {path} is a file; an orbax checkpoint is a directory",
                              fix="pass the checkpoint directory (the one holding _METADATA)")
    if not (path / "_METADATA").is_file():
        raise CheckpointError(
            f"{what} {path} is not a complete orbax checkpoint: {path / '_METADATA'} is missing",
            fix="copy the whole checkpoint directory again (an interrupted download or save leaves it incomplete)",
        )
    return path


def read_tree_metadata(path: Path, what: str = "checkpoint") -> dict[Key, LeafInfo]:
    """Flat {key path: LeafInfo} of every array in an orbax PyTree checkpoint."""
    path = require_orbax_dir(path, what)
    try:
        json.loads((path / "_METADATA").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} {path}: {path / '_METADATA'} is corrupt ({exc})",
                              fix="copy the checkpoint again from its source") from exc
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            meta = checkpointer.metadata(path)
    except Exception as exc:  # orbax raises many types for a damaged directory
        raise CheckpointError(f"{what} {path}: unreadable orbax metadata ({type(exc).__name__}: {exc})",
                              fix="copy the checkpoint again from its source") from exc
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{what} {path} holds no PyTree (metadata is {type(tree).__name__})",
                              fix="pass a checkpoint saved with orbax's PyTreeCheckpointer / StandardCheckpointer")
    flat = traverse_util.flatten_dict(_to_dict(tree), is_leaf=lambda _, x: not isinstance(x, Mapping))
    out: dict[Key, LeafInfo] = {}
    for key, leaf in flat.items():
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            continue  # non-array leaves (e.g. a saved string); never a weight
        out[tuple(str(k) for k in key)] = LeafInfo(tuple(int(d) for d in shape), np.dtype(dtype))
    return out


def _to_dict(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _to_dict(v) for k, v in tree.items()}
    return tree


def strip_value_suffix(flat: Mapping[Key, Any]) -> tuple[dict[Key, Any], bool]:
    """Training writes nnx.State, whose every leaf path ends in `value`; drop it (as openpi does)."""
    if flat and all(key[-1] == "value" for key in flat):
        return {key[:-1]: v for key, v in flat.items()}, True
    return dict(flat), False


def restore_leaves(
    path: Path, targets: Mapping[Key, jax.ShapeDtypeStruct | np.dtype], what: str = "checkpoint"
) -> dict[Key, Any]:
    """Restore only the named leaves (their stored key paths).

    A target `jax.ShapeDtypeStruct` with a sharding gives a device array of that dtype on that
    sharding; a bare numpy dtype gives a host numpy array (used when leaves must be stacked).
    """
    if not targets:
        return {}
    item: dict[Key, Any] = {}
    args: dict[Key, Any] = {}
    for key, target in targets.items():
        if isinstance(target, jax.ShapeDtypeStruct):
            item[key] = target
            args[key] = ocp.ArrayRestoreArgs(sharding=target.sharding, dtype=target.dtype, global_shape=target.shape)
        else:
            item[key] = np.zeros((), target)
            args[key] = ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.dtype(target))
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                Path(path),
                args=ocp.args.PyTreeRestore(
                    item=traverse_util.unflatten_dict(item),
                    restore_args=traverse_util.unflatten_dict(args),
                    partial_restore=True,
                ),
            )
    except Exception as exc:  # truncated / missing data files surface as many exception types
        raise CheckpointError(
            f"{what} {path}: reading the arrays failed ({type(exc).__name__}: {str(exc)[:300]}); the data "
            "files are truncated or corrupt",
            fix="copy the checkpoint again from its source (compare sizes with the original)",
        ) from exc
    flat = traverse_util.flatten_dict(restored)
    missing = [key_str(k) for k in targets if flat.get(k) is None]
    if missing:
        raise CheckpointError(f"{what} {path}: no data for {', '.join(missing[:10])}",
                              fix="copy the checkpoint again from its source")
    return {k: flat[k] for k in targets}


def save_tree(path: Path, tree: Mapping[str, Any]) -> None:
    """Write a PyTree checkpoint the way openpi does (`PyTreeCheckpointer().save`)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), dict(tree))
