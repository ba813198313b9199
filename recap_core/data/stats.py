"""Normalisation statistics for state and actions, in openpi's `norm_stats.json` layout.

File layout (openpi `shared/normalize.py`, written with indent 2), so openpi reads ours and we
read theirs:

    {"norm_stats": {"state":   {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
                    "actions": {"mean": [...], "std": [...], "q01": [...], "q99": [...]}}}

`q01` / `q99` may be absent or null in files openpi wrote for z-score-only models; other keys
under "norm_stats" are kept as they are.

How we compute them (`compute_norm_stats`): straight from the parquet columns
`observation.state` and `action` (no video decode), over every frame of the dataset.
`mean` and `std` are the population moments (ddof=0, as openpi's running stats); `q01` / `q99`
are exact quantiles per dimension (numpy's default linear interpolation between order
statistics), where openpi approximates them with 5000-bin histograms, so the two agree to
within one histogram bin. openpi computes action stats over action *chunks*, which repeat each
frame's action up to H times; per frame is the same distribution without the edge repeats.

Normalisation (openpi `transforms.Normalize` / `Unnormalize`; pi0.5/pi0.6 use quantiles):

    quantile:  x_n = (x - q01) / (q99 - q01 + 1e-6) * 2 - 1      x = (x_n + 1) / 2 * (q99 - q01 + 1e-6) + q01
    z-score:   x_n = (x - mean) / (std + 1e-6)                    x = x_n * (std + 1e-6) + mean

Vectors with more dimensions than the stats (a model padding state/actions to 32) keep the extra
dimensions unchanged; vectors with fewer use the first dimensions of the stats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.errors import ConfigError, DatasetError, RecapError
from recap_core.fsutil import atomic_write_text

EPS = 1e-6
STATE = "state"
ACTIONS = "actions"
# openpi's key in norm_stats.json -> our LeRobot column.
DEFAULT_COLUMNS: dict[str, str] = {STATE: "observation.state", ACTIONS: "action"}


class NormStatsError(RecapError):
    """A norm_stats.json file is missing, malformed, or does not fit the data."""


@dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one vector (state or actions)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def to_json(self) -> dict[str, list[float] | None]:
        return {
            "mean": _floats(self.mean),
            "std": _floats(self.std),
            "q01": None if self.q01 is None else _floats(self.q01),
            "q99": None if self.q99 is None else _floats(self.q99),
        }


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]


def stats_of(values: np.ndarray) -> NormStats:
    """Mean, std (ddof=0), q01, q99 per dimension of `values` [N, D], in float64."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, D] array, got shape {x.shape}")
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return NormStats(mean=x.mean(axis=0), std=x.std(axis=0), q01=q01, q99=q99)


def compute_norm_stats(root: str | Path, columns: Mapping[str, str] | None = None, *,
                       delta_mask: Sequence[bool] | None = None, horizon: int = 1) -> dict[str, NormStats]:
    """Norm stats of a LeRobot dataset's state and action columns, read from its parquet files.

    Works on LeRobot v3.0 and v2.1. `columns` maps the norm_stats key to the dataset column (default: state <- observation.state,
    actions <- action). With `delta_mask`, the action stats are those of the chunk deltas a
    delta-action run trains on (`recap_core.data.actions.chunk_deltas`, chunks of `horizon`).
    Raises `DatasetError` naming the column when it is missing, not a vector of numbers, or
    holds NaN/inf.
    """
    from recap_core.data.actions import chunk_deltas
    from recap_core.data.dataset import column_array, open_dataset, read_table
    from recap_core.data.loader import vector_column

    columns = dict(columns or DEFAULT_COLUMNS)
    # Only parquet columns are read, so v2.1 datasets (openpi's side) work as well as v3.0.
    info = open_dataset(Path(root), version=None)
    table = read_table(info, [*columns.values(), "frame_index"])  # frame_index: NaN/inf errors name the frame
    if table.num_rows == 0:
        raise DatasetError(f"dataset {info.root} has no frames", fix="record at least one episode")
    values = {key: vector_column(table, column, str(info.root)) for key, column in columns.items()}
    if delta_mask is not None and any(delta_mask):
        episodes = np.asarray(column_array(table, "episode_index"))
        values[ACTIONS] = chunk_deltas(values[STATE], values[ACTIONS], episodes, delta_mask, horizon)
    return {key: stats_of(v) for key, v in values.items()}


def run_norm_stats(root: str | Path, columns: Mapping[str, str] | None = None, *,
                   delta_actions: bool | Sequence[bool] = False, horizon: int = 1) -> tuple[dict[str, NormStats], dict[str, Any]]:
    """The norm stats a training run on `root` uses (the run and `recap data stats` call this), and
    the action convention they are for: {"actions": "absolute" | "delta", "delta_mask": [bool] |
    None, "action_horizon": int | None}. With `delta_actions` (True: the mask from the action names,
    or a mask) the stats are those of the run's chunk deltas (`actions.dataset_delta_mask`,
    chunks of `horizon`); absolute stats do not depend on the horizon."""
    from recap_core.data.actions import dataset_delta_mask
    from recap_core.data.dataset import open_dataset

    columns = dict(columns or DEFAULT_COLUMNS)
    mask = False
    if delta_actions:
        if columns != DEFAULT_COLUMNS:
            raise ConfigError(f"delta actions are taken from the columns {DEFAULT_COLUMNS[STATE]} and "
                              f"{DEFAULT_COLUMNS[ACTIONS]}, as a training run does (asked: {columns[STATE]} and {columns[ACTIONS]})",
                              fix="drop --state-column/--action-column, or drop --delta-actions")
        if horizon < 1:
            raise ConfigError(f"action horizon {horizon} must be at least 1", fix="use the model's action_horizon")
        mask = dataset_delta_mask(open_dataset(Path(root), version=None), delta_actions)
    stats = compute_norm_stats(root, columns, delta_mask=mask or None, horizon=horizon)
    convention = {"actions": "delta" if mask else "absolute", "delta_mask": mask or None,
                  "action_horizon": horizon if mask else None}
    return stats, convention


def norm_stats_to_json(stats: Mapping[str, NormStats]) -> dict[str, Any]:
    """The openpi document `{"norm_stats": {key: {mean, std, q01, q99}}}`."""
    return {"norm_stats": {key: value.to_json() for key, value in stats.items()}}


def save_norm_stats(path: str | Path, stats: Mapping[str, NormStats]) -> Path:
    """Write `norm_stats.json` atomically (temp file + fsync + rename), indent 2 like openpi.

    A directory, or a path without a suffix (an openpi assets dir), gets `<path>/norm_stats.json`.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "norm_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(norm_stats_to_json(stats), indent=2) + "\n")
    return path


def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """Read an openpi-layout `norm_stats.json` (ours or openpi's). A directory means `<dir>/norm_stats.json`."""
    path = Path(path)
    if path.is_dir():
        path = path / "norm_stats.json"
    fix = "compute them with `recap data stats DATASET --output norm_stats.json`"
    if not path.is_file():
        raise NormStatsError(f"norm stats file {path} does not exist", fix=fix)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NormStatsError(f"norm stats file {path} is not valid JSON ({exc})", fix=fix) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("norm_stats"), dict):
        raise NormStatsError(
            f"norm stats file {path} has no top-level \"norm_stats\" object",
            fix='use the openpi layout {"norm_stats": {"state": {...}, "actions": {...}}}; ' + fix,
        )
    return {key: _parse_entry(path, key, entry) for key, entry in doc["norm_stats"].items()}


def _parse_entry(path: Path, key: str, entry: Any) -> NormStats:
    where = f"norm_stats.{key} in {path}"
    if not isinstance(entry, dict):
        raise NormStatsError(f"{where} is not an object", fix="give mean, std, q01, q99 lists for it")
    arrays: dict[str, np.ndarray | None] = {}
    for name in ("mean", "std", "q01", "q99"):
        raw = entry.get(name)
        if raw is None:
            if name in ("mean", "std"):
                raise NormStatsError(f"{where} has no {name!r} list", fix=f"add {name!r}, one number per dimension")
            arrays[name] = None
            continue
        try:
            arr = np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise NormStatsError(f"{where}.{name} is not a list of numbers", fix="recompute the stats") from exc
        if not np.isfinite(arr).all():
            raise NormStatsError(f"{where}.{name} holds NaN/inf", fix="recompute the stats from clean data")
        arrays[name] = arr
    dims = {name: len(arr) for name, arr in arrays.items() if arr is not None}
    if len(set(dims.values())) != 1:
        raise NormStatsError(f"{where} has lists of different lengths {dims}", fix="recompute the stats")
    if (arrays["q01"] is None) != (arrays["q99"] is None):
        raise NormStatsError(f"{where} has only one of q01/q99", fix="give both quantiles or neither")
    return NormStats(mean=arrays["mean"], std=arrays["std"], q01=arrays["q01"], q99=arrays["q99"])


def _xp(x: Any) -> Any:
    """The array module of `x`: jax.numpy for jax arrays (traced or not), numpy otherwise."""
    if type(x).__module__.startswith("jax"):
        import jax.numpy as jnp

        return jnp
    return np


def _split(x: Any, dim: int) -> tuple[Any, Any | None]:
    """(the first `dim` dims, the rest or None) of the last axis."""
    if x.shape[-1] <= dim:
        return x, None
    return x[..., :dim], x[..., dim:]


def _join(xp: Any, head: Any, tail: Any | None) -> Any:
    return head if tail is None else xp.concatenate([head, tail], axis=-1)


def _require_quantiles(stats: NormStats) -> tuple[np.ndarray, np.ndarray]:
    if stats.q01 is None or stats.q99 is None:
        raise NormStatsError(
            "quantile normalisation needs q01/q99, but these norm stats have none",
            fix="recompute them with `recap data stats`, or use z-score normalisation",
        )
    return stats.q01, stats.q99


def _operands(x: Any, stats: NormStats, use_quantiles: bool) -> tuple[Any, Any, Any | None, Any, Any]:
    """(array module, head, tail, a, b) with (a, b) = (q01, q99) or (mean, std) cut to the head's dims."""
    xp = _xp(x)
    head, tail = _split(x, len(stats.mean))
    d = head.shape[-1]
    dtype = head.dtype if xp.issubdtype(head.dtype, xp.floating) else np.float32
    pair = _require_quantiles(stats) if use_quantiles else (stats.mean, stats.std)
    a, b = (xp.asarray(v[:d], dtype=dtype) for v in pair)
    return xp, head.astype(dtype), tail, a, b


def normalize(x: Any, stats: NormStats, *, use_quantiles: bool) -> Any:
    """Normalise the last axis of `x` (numpy or jax); dims beyond the stats pass through."""
    xp, head, tail, a, b = _operands(x, stats, use_quantiles)
    out = (head - a) / (b - a + EPS) * 2.0 - 1.0 if use_quantiles else (head - a) / (b + EPS)
    return _join(xp, out.astype(head.dtype), tail)


def unnormalize(x: Any, stats: NormStats, *, use_quantiles: bool) -> Any:
    """Invert `normalize` on the last axis of `x`; dims beyond the stats pass through."""
    xp, head, tail, a, b = _operands(x, stats, use_quantiles)
    out = (head + 1.0) / 2.0 * (b - a + EPS) + a if use_quantiles else head * (b + EPS) + a
    return _join(xp, out.astype(head.dtype), tail)
