"""Put loaded weights into a training run's model parts (trainable + frozen states, on devices)."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx, traverse_util


def parts_pure_dict(parts: Any) -> dict[str, Any]:
    """The model's params (trainable and frozen together) as one nested dict of arrays."""
    flat = {**traverse_util.flatten_dict(nnx.to_pure_dict(parts.trainable)),
            **traverse_util.flatten_dict(nnx.to_pure_dict(parts.frozen))}
    return traverse_util.unflatten_dict(flat)


def fill_parts(parts: Any, loaded: dict[str, Any]) -> Any:
    """Parts (a `train.state.ModelParts`) whose params are replaced by `loaded` where it has them
    (others keep their init)."""
    new = traverse_util.flatten_dict(loaded)

    def fill(state: nnx.State) -> nnx.State:
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
        flat.update({k: new[k] for k in flat if k in new})
        nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
        return state

    return dataclasses.replace(parts, trainable=fill(parts.trainable), frozen=fill(parts.frozen))
