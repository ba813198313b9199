"""The VLM bundle (ybpy/vlm_ckpt) -> the value model: Gemma3-270M, SigLIP2 So400m, tokenizer.

Layout (docs/formats.md has the sources):

    <bundle>/gemma-3-270m/step_00020000/        orbax PyTree {params, ema_params, step}
    <bundle>/siglip2-so400m-patch14-224-jax/    big_vision npz (siglip2_so400m14_224.npz), keys params/img/...
    <bundle>/tokenizer.model                    Gemma3 sentencepiece (262144 tokens)

The orbax item (`params` or `ema_params`) is either a whole pistar value-model snapshot (`llm`,
`img`, `img_projection`, `cross_attention`, `cross_attn_norm`, `value_head`) or a bare gemma
library tree (`transformer/{embedder, layer_<i>, final_norm}`); both are accepted. The SigLIP
tower comes from the orbax item when it has one, else from the npz. Value-specific layers the
bundle lacks keep their fresh init; every backbone weight must be found.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from recap_core.errors import BundleError, CheckpointError
from recap_core.weights.layout import BUNDLE_GEMMA, BUNDLE_HINT, BUNDLE_SIGLIP, BUNDLE_TOKENIZER
from recap_core.weights.match import abstract_flat, plan_restore
from recap_core.weights.orbax_tree import (
    Key,
    LeafInfo,
    key_str,
    read_tree_metadata,
    restore_leaves,
    strip_value_suffix,
)
from recap_core.weights.stacking import SourceLeaf, stack_layers

SIGLIP_NPZ = "siglip2_so400m14_224.npz"  # big_vision's file name for SigLIP2 So400m/14 at 224 px
# stored subtree -> ours; pistar's value model and the gemma library (`transformer`) both map onto `llm`
BUNDLE_TO_RECAP: tuple[tuple[Key, Key], ...] = (
    (("transformer",), ("llm",)),
    (("llm",), ("llm",)),
    (("img",), ("img",)),
    (("img_projection",), ("img_projection",)),
    (("cross_attention",), ("cross_attention",)),
    (("cross_attn_norm",), ("cross_attn_norm",)),
    (("value_head",), ("value_head",)),
)
VALUE_HEADS_REGEX = "(img_projection|cross_attention|cross_attn_norm|value_head)/.*"
# parts of the SigLIP2 checkpoint the value model does not use: text tower, logit scale/bias,
# the MAP pooling head and the image projection head (pool_type "none", no head)
SIGLIP_UNUSED_REGEX = "(txt/.*|t|b|img/MAPHead_0/.*|img/head/.*)"


@dataclasses.dataclass(frozen=True)
class BundlePaths:
    root: Path
    gemma: Path
    siglip_npz: Path
    tokenizer: Path


def resolve_bundle(bundle_dir: Path | None = None, *, need_tokenizer: bool = True) -> BundlePaths:
    """The bundle's files (from `bundle_dir`, else settings: RECAP_VLM_BUNDLE_DIR / OPENPI_VLM_CKPT_DIR)."""
    if bundle_dir is None:
        from recap_core.settings import get_settings

        bundle_dir = get_settings().vlm_bundle_dir
    root = Path(bundle_dir).expanduser()
    if not root.is_dir():
        raise BundleError(f"VLM bundle directory {root} does not exist", fix=BUNDLE_HINT)
    gemma = root / BUNDLE_GEMMA
    if not gemma.is_dir():
        raise BundleError(f"VLM bundle {root} lacks {BUNDLE_GEMMA}/ (the Gemma3-270M orbax checkpoint)",
                          fix=f"restore it from the bundle ({BUNDLE_HINT})")
    siglip_dir = root / BUNDLE_SIGLIP
    npz = sorted(siglip_dir.glob("*.npz")) if siglip_dir.is_dir() else []
    if not npz:
        raise BundleError(f"VLM bundle {root} lacks {BUNDLE_SIGLIP}/{SIGLIP_NPZ} (SigLIP2 So400m, big_vision npz)",
                          fix=f"restore {BUNDLE_SIGLIP}/ from the bundle ({BUNDLE_HINT})")
    chosen = next((p for p in npz if p.name == SIGLIP_NPZ), npz[0])
    tokenizer = root / BUNDLE_TOKENIZER
    if need_tokenizer and not tokenizer.is_file():
        raise BundleError(f"VLM bundle {root} lacks {BUNDLE_TOKENIZER} (the Gemma3 sentencepiece model)",
                          fix=f"restore it from the bundle ({BUNDLE_HINT})")
    return BundlePaths(root, gemma, chosen, tokenizer)


def _rename(key: Key) -> Key | None:
    for src, dst in BUNDLE_TO_RECAP:
        if key[: len(src)] == src:
            key = dst + key[len(src):]
            break
    else:
        return None
    # the gemma library stores the MLP weights as einsum modules (`gating_einsum/w`); ours are plain params
    if len(key) >= 2 and key[-1] == "w" and key[-2] in ("gating_einsum", "linear"):
        key = key[:-1]
    return key


def _gemma_sources(path: Path, use_ema: bool) -> tuple[dict[Key, SourceLeaf], list[str], str]:
    raw = read_tree_metadata(path, "VLM bundle Gemma3 checkpoint")
    item = "ema_params" if use_ema else "params"
    top = sorted({k[0] for k in raw})
    if item not in top:
        raise BundleError(f"{path} has no {item!r} item (top-level keys: {top})",
                          fix="use --use-ema only with a bundle that has ema_params" if use_ema
                          else "pass the bundle's gemma-3-270m/step_00020000 checkpoint")
    inner = {k[1:]: v for k, v in raw.items() if k[0] == item}
    inner, value_suffix = strip_value_suffix(inner)
    renamed: dict[Key, LeafInfo] = {}
    stored_of: dict[Key, Key] = {}
    unknown: list[str] = []
    for key, info in inner.items():
        new = _rename(key)
        if new is None:
            unknown.append(f"{item}/{key_str(key)}")
            continue
        renamed[new] = info
        stored_of[new] = (item, *key, *(("value",) if value_suffix else ()))
    stacked, problems = stack_layers(renamed)
    sources = {k: dataclasses.replace(v, stored=tuple(stored_of[s] for s in v.stored)) for k, v in stacked.items()}
    return sources, problems + [f"unexpected key {u}" for u in unknown], item


def _siglip_sources(npz_path: Path) -> tuple[dict[Key, SourceLeaf], list[str]]:
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            names = list(npz.files)
            # shapes from the zip members' headers: np.load reads a member only when indexed
            infos = {name: _npz_member_info(npz, name) for name in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"SigLIP2 file {npz_path} is not a readable npz ({exc})",
                          fix=f"restore it from the bundle ({BUNDLE_HINT})") from exc
    leaves: dict[Key, LeafInfo] = {}
    for name, info in infos.items():
        key = tuple(name.split("/"))
        if key[:1] == ("params",):
            key = key[1:]
        leaves[key] = info
    stacked, problems = stack_layers(leaves)
    return stacked, problems


def _npz_member_info(npz: Any, name: str) -> LeafInfo:
    """Shape and dtype of one npz member from its .npy header (the data is not read)."""
    import numpy.lib.format as npy_format

    with npz.zip.open(f"{name}.npy") as member:
        version = npy_format.read_magic(member)
        shape, _, dtype = npy_format._read_array_header(member, version)
    return LeafInfo(tuple(shape), np.dtype(dtype))


def load_value_bundle(
    bundle_dir: Path | None,
    model_abstract: Any,
    *,
    use_ema: bool = False,
    dtype: Any = None,
    sharding: Any = None,
) -> dict[str, Any]:
    """The bundle's weights as a nested dict of device arrays keyed like the value model's params.

    Keys absent from the result are value-specific layers the bundle does not hold (they keep
    their fresh init). Everything is checked against `model_abstract` before data is read.
    """
    paths = resolve_bundle(bundle_dir, need_tokenizer=False)
    target = abstract_flat(model_abstract, sharding)
    gemma, gemma_problems, item = _gemma_sources(paths.gemma, use_ema)
    siglip, siglip_problems = _siglip_sources(paths.siglip_npz)
    origin = f"VLM bundle {paths.root} ({BUNDLE_GEMMA}:{item} + {paths.siglip_npz.name})"
    if gemma_problems or siglip_problems:
        raise CheckpointError(f"{origin}: " + "; ".join(gemma_problems + siglip_problems),
                              fix=f"restore the bundle files ({BUNDLE_HINT})")
    has_img = any(k[0] == "img" for k in gemma)
    sources: dict[Key, tuple[str, SourceLeaf]] = {k: ("gemma", v) for k, v in gemma.items()}
    for key, leaf in siglip.items():
        if not has_img:
            sources[key] = ("siglip", leaf)
    info = {k: v[1].info for k, v in sources.items()}
    plan = plan_restore(
        info, target, to_target=lambda k: k, origin=origin, allow_missing=VALUE_HEADS_REGEX,
        ignore_unexpected=SIGLIP_UNUSED_REGEX,
        fix="use the value preset the bundle was made for (value: SigLIP2 So400m/14 224 px + Gemma3-270M)",
    )
    out: dict[Key, Any] = {}
    gemma_plan = {dst: sources[src][1] for dst, src in plan.items() if sources[src][0] == "gemma"}
    siglip_plan = {dst: sources[src][1] for dst, src in plan.items() if sources[src][0] == "siglip"}
    out.update(_restore_gemma(paths.gemma, gemma_plan, target, dtype))
    out.update(_restore_npz(paths.siglip_npz, siglip_plan, target, dtype))
    return traverse_util.unflatten_dict(out)


def _put(value: np.ndarray, want: jax.ShapeDtypeStruct, dtype: Any) -> jax.Array:
    return jax.device_put(np.asarray(value).astype(dtype or want.dtype), want.sharding)


def _restore_gemma(path: Path, plan: Mapping[Key, SourceLeaf], target: Mapping[Key, jax.ShapeDtypeStruct],
                   dtype: Any) -> dict[Key, Any]:
    direct = {dst: leaf for dst, leaf in plan.items() if not leaf.stacked}
    requests = {leaf.stored[0]: jax.ShapeDtypeStruct(target[dst].shape, dtype or target[dst].dtype,
                                                     sharding=target[dst].sharding) for dst, leaf in direct.items()}
    # per-layer leaves are read to host one tensor at a time, stacked, then placed
    layer_requests = {key: leaf.info.dtype for leaf in plan.values() if leaf.stacked for key in leaf.stored}
    restored = restore_leaves(path, {**requests, **layer_requests}, "VLM bundle Gemma3 checkpoint")
    out: dict[Key, Any] = {dst: restored[leaf.stored[0]] for dst, leaf in direct.items()}
    for dst, leaf in plan.items():
        if leaf.stacked:
            out[dst] = _put(np.stack([restored[k] for k in leaf.stored]), target[dst], dtype)
    return out


def _restore_npz(path: Path, plan: Mapping[Key, SourceLeaf], target: Mapping[Key, jax.ShapeDtypeStruct],
                 dtype: Any) -> dict[Key, Any]:
    out: dict[Key, Any] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            prefix = "params/" if any(n.startswith("params/") for n in npz.files) else ""
            for dst, leaf in plan.items():
                arrays = [npz[prefix + key_str(k)] for k in leaf.stored]
                out[dst] = _put(np.stack(arrays) if leaf.stacked else arrays[0], target[dst], dtype)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise BundleError(f"SigLIP2 file {path}: reading the arrays failed ({type(exc).__name__}: {exc})",
                          fix=f"restore it from the bundle ({BUNDLE_HINT})") from exc
    return out
