"""Delta actions: train on joint targets relative to the current state, serve absolute ones.

openpi trains its ALOHA policies this way (`use_delta_joint_actions=True`, mask
`make_bool_mask(6, -1, 6, -1)`): every joint of an action chunk becomes `action[t+k] - state[t]`
(the state of the frame the chunk starts at), while grippers stay absolute. The model then
predicts small moves instead of absolute joint angles it would have to read off the state
tokens, which is much easier to learn, above all for a small model. Serving adds the request's
state back, so clients still receive absolute targets.

A mask is a list of booleans over the action dims (True: delta). `--delta-actions` builds it
from the dataset's action names: every dim whose name contains "gripper" stays absolute.
Norm stats of a delta run are the stats of the deltas over whole chunks (as openpi computes
them after its DeltaActions transform), so normalisation sees what the model predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recap_core.errors import ConfigError

ABSOLUTE_NAME_PARTS = ("gripper",)
MAX_STATS_ROWS = 4_000_000  # chunk rows (frame x offset) read for delta norm stats; more are subsampled


def delta_mask_from_names(names: Sequence[str] | None, action_dim: int, where: str) -> list[bool]:
    """True for every action dim that becomes a delta; dims named like a gripper stay absolute."""
    if not names or len(names) != action_dim:
        raise ConfigError(
            f"{where}: the action feature has no per-dim names, so --delta-actions cannot tell joints from grippers",
            fix="name the action dims (features.action.names in meta/info.json; grippers contain 'gripper'), or give "
            f"a training run the mask explicitly, e.g. --set 'data.delta_actions=[{', '.join(['true'] * action_dim)}]' "
            "(false for each gripper dim)",
        )
    return [not any(part in str(n).lower() for part in ABSOLUTE_NAME_PARTS) for n in names]


def check_mask(mask: Sequence[bool], action_dim: int, state_dim: int, where: str) -> list[bool]:
    """The mask as a list, or a ConfigError when it does not fit the dataset's dims."""
    mask = [bool(m) for m in mask]
    if len(mask) != action_dim:
        raise ConfigError(
            f"{where}: data.delta_actions has {len(mask)} entries but the actions have {action_dim} dims",
            fix=f"give one true/false per action dim ({action_dim})",
        )
    if any(mask[state_dim:]):
        raise ConfigError(
            f"{where}: data.delta_actions marks action dims beyond the state's {state_dim} dims as deltas; "
            "a delta needs the matching state dim",
            fix=f"set the entries from index {state_dim} on to false",
        )
    return mask


def dataset_delta_mask(info: Any, wanted: bool | Sequence[bool]) -> list[bool] | bool:
    """The delta mask a run on the dataset `info` (a `DatasetInfo`) trains with; False: absolute.

    `wanted` True builds it from the action names (`delta_mask_from_names`), a list is checked
    against the dims; a mask with no delta dim is False. Training (`train.jobs`) and `recap data
    stats --delta-actions` both call this, so their norm stats cannot disagree.
    """
    where = str(info.root)
    if wanted is True:
        names = (info.features.get("action") or {}).get("names")
        wanted = delta_mask_from_names(names if isinstance(names, list) else None, info.action_dim or 0, where)
    mask = check_mask(wanted, info.action_dim or 0, info.state_dim or 0, where) if wanted else False
    return mask if mask and any(mask) else False


def _shifted(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool], sign: float) -> np.ndarray:
    """actions [..., H, D] with `sign * state` [..., S] added on the masked dims of every step."""
    out = np.array(actions, dtype=np.float32, copy=True)
    idx = np.flatnonzero(np.asarray(mask, bool))
    out[..., idx] += sign * np.asarray(state, np.float32)[..., None, idx]
    return out


def to_delta(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """actions [B, H, D] (absolute) -> deltas against state [B, S] on the masked dims."""
    return _shifted(actions, state, mask, -1.0)


def to_absolute(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """The inverse of `to_delta`: actions [B, H, D>=len(mask)] + state [B, S] (or [H, D] + [S])."""
    return _shifted(actions, state, mask, 1.0)


def chunk_deltas(state: np.ndarray, actions: np.ndarray, episodes: np.ndarray, mask: Sequence[bool],
                 horizon: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """What a delta-action model sees: `action[min(t+k, last)] - state[t]` for every frame t and
    k < horizon (the loader's chunks), flattened to [rows, D]; subsampled beyond MAX_STATS_ROWS."""
    n = len(actions)
    frames = np.arange(n)
    if n * horizon > MAX_STATS_ROWS:
        rng = rng or np.random.default_rng(0)
        frames = np.sort(rng.choice(n, size=max(1, MAX_STATS_ROWS // horizon), replace=False))
    # Last row of each frame's episode (rows are sorted by index, episodes contiguous).
    change = np.flatnonzero(np.diff(episodes)) + 1
    ends = np.append(change, n) - 1
    last = ends[np.searchsorted(change, frames, side="right")]
    offsets = np.arange(horizon)
    rows = np.minimum(frames[:, None] + offsets[None, :], last[:, None])  # [F, H]
    chunks = actions[rows]  # [F, H, D]
    return to_delta(chunks, state[frames], mask).reshape(-1, actions.shape[-1])
