"""Per-layer checkpoints (`layer_0/...`, `encoderblock_0/...`) <-> our stacked `layers/...` trees.

The gemma library saves Gemma3 as `layer_<i>` subtrees and big_vision saves SigLIP2 as
`encoderblock_<i>`; our models stack layer params on a leading depth axis (one `lax.scan`).
A group of per-layer keys becomes one virtual stacked leaf; it is read layer by layer and stacked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from recap_core.weights.orbax_tree import Key, LeafInfo

# stored per-layer module name -> our stacked module name
LAYER_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"layer_(\d+)"), "layers"),
    (re.compile(r"encoderblock_(\d+)"), "encoderblock"),
)


@dataclasses.dataclass(frozen=True)
class SourceLeaf:
    """One leaf as the model sees it: its stored key(s) (one per layer when stacked) and shape."""

    info: LeafInfo
    stored: tuple[Key, ...]
    stacked: bool = False


def stack_layers(leaves: Mapping[Key, LeafInfo]) -> tuple[dict[Key, SourceLeaf], list[str]]:
    """Group per-layer keys into stacked virtual leaves; also returns problems (gaps, shape drift)."""
    out: dict[Key, SourceLeaf] = {}
    groups: dict[Key, dict[int, tuple[Key, LeafInfo]]] = {}
    for key, info in leaves.items():
        for i, part in enumerate(key):
            match = next((m for p, name in LAYER_PATTERNS if (m := p.fullmatch(part))), None)
            if match is not None:
                name = next(name for p, name in LAYER_PATTERNS if p.fullmatch(part))
                groups.setdefault((*key[:i], name, *key[i + 1:]), {})[int(match.group(1))] = (key, info)
                break
        else:
            out[key] = SourceLeaf(info, (key,))
    problems: list[str] = []
    for vkey, layers in groups.items():
        depth = max(layers) + 1
        gaps = sorted(set(range(depth)) - set(layers))
        shapes = {info.shape for _, info in layers.values()}
        if gaps:
            problems.append(f"{'/'.join(vkey)} has no layer(s) {gaps}")
            continue
        if len(shapes) > 1:
            problems.append(f"{'/'.join(vkey)} has different shapes across layers {sorted(shapes)}")
            continue
        first = layers[0][1]
        out[vkey] = SourceLeaf(LeafInfo((depth, *first.shape), first.dtype),
                               tuple(layers[i][0] for i in range(depth)), stacked=True)
    return out, problems


def unstack_key(key: Key, layer: int) -> Key:
    """Our stacked key -> the per-layer stored key of layer `layer` (for writing per-layer trees)."""
    names = {name: pattern.pattern.split("_(")[0] for pattern, name in LAYER_PATTERNS}
    for i, part in enumerate(key):
        if part in names:
            return (*key[:i], f"{names[part]}_{layer}", *key[i + 1:])
    return key
