"""Validation on held-out episodes: mean loss, plus the task's own metrics (value: MAE, rank corr).

The split is by episode (`split_episodes`): frames of one episode are highly correlated, so a
frame-level split would measure memorisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from recap_core.config import RunConfig
from recap_core.runtime import compiler_options
from recap_core.train.sharding import to_global
from recap_core.train.state import ModelParts
from recap_core.train.task import Batch, Task


def split_episodes(episodes: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) episode split; val gets round(fraction * n) episodes, at least 1
    when fraction > 0 and there are 2+ episodes, and train always keeps at least one."""
    episodes = sorted(int(e) for e in episodes)
    n_val = round(fraction * len(episodes))
    if fraction > 0 and len(episodes) >= 2:
        n_val = min(max(n_val, 1), len(episodes) - 1)
    else:
        n_val = 0
    order = np.random.default_rng(seed).permutation(len(episodes))
    val = sorted(episodes[i] for i in order[:n_val])
    train = sorted(set(episodes) - set(val))
    return train, val


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); nan when either side is constant."""
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    for value in np.unique(a):  # ties share their average rank
        tied = a == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def per_episode_value_metrics(pred: np.ndarray, target: np.ndarray, episode: np.ndarray) -> dict[str, float]:
    """Value-model quality: MAE overall and per episode, Spearman rho within each episode."""
    pred, target, episode = (np.asarray(a).reshape(-1) for a in (pred, target, episode))
    maes, rhos = [], []
    for ep in np.unique(episode):
        sel = episode == ep
        maes.append(float(np.abs(pred[sel] - target[sel]).mean()))
        rho = rank_correlation(pred[sel], target[sel])
        if not np.isnan(rho):
            rhos.append(rho)
    out = {
        "value_mae": float(np.abs(pred - target).mean()) if len(pred) else float("nan"),
        "value_mae_per_episode": float(np.mean(maes)) if maes else float("nan"),
        "episodes": float(len(maes)),
    }
    if rhos:  # undefined (left out, not NaN) when no episode has two frames with distinct values
        out["value_rank_corr_per_episode"] = float(np.mean(rhos))
    return out


def run_validation(
    task: Task,
    parts: ModelParts,
    state: dict[str, Any],
    batches: Iterable[Batch],
    config: RunConfig,
    eval_loss: Callable[..., Any],
    mesh: Mesh,
) -> dict[str, float]:
    """Loss (and task metrics) of the params that would be served: EMA when it is on."""
    params = state.get("ema", state["params"])
    rng = jax.random.key(config.seed + 1)
    losses: list[float] = []
    outputs: dict[str, list[np.ndarray]] = {}
    seen: list[Batch] = []
    eval_outputs = None
    if hasattr(task, "eval_outputs"):
        graphdef = parts.graphdef
        eval_outputs = jax.jit(lambda p, f, x: task.eval_outputs(nnx.merge(graphdef, p, f), x),
                               compiler_options=compiler_options(parts.frozen))
    for i, batch in enumerate(batches):
        if i >= config.val.max_batches:
            break
        inputs = to_global(task.make_inputs(batch, np.random.default_rng(i), train=False), mesh)
        losses.append(float(eval_loss(params, parts.frozen, inputs, rng)["loss"]))
        if eval_outputs is not None:
            out = jax.device_get(eval_outputs(params, parts.frozen, inputs))
            for key, value in out.items():
                outputs.setdefault(key, []).append(np.asarray(value))
            seen.append(batch)
    if not losses:
        return {}
    result = {"loss": float(np.mean(losses)), "batches": float(len(losses))}
    if eval_outputs is not None and seen:
        result.update(task.summarize_eval({k: np.concatenate(v) for k, v in outputs.items()}, seen))
    return result


OVERFIT_LOSS_RATIO = 1.5
"""Held-out loss this many times the training episodes' loss (and at least 0.1 above it) is a gap."""
OVERFIT_RANK_GAP = 0.3
"""Per-episode Spearman this much lower on held-out episodes than on training ones is a gap."""
MIN_RANK_EPISODES = 3
"""The ranking gap is judged only when both evaluations cover at least this many episodes (`episodes`
in the metrics: `val.max_batches` batches may cover only one or two). Over one or two synthetic
episodes an untrained model's gap reached 0.64 by chance, at a loss ratio of 1.00."""


def fit_verdict(val: dict[str, float], seen: dict[str, float]) -> dict[str, Any]:
    """Does the model memorise its training episodes? Compares the same evaluation on held-out
    episodes (`val`) and on training episodes (`seen`): loss, and the value model's per-episode
    ranking when both have it. `overfit` is True with a message and a fix when either gap is large."""
    out: dict[str, Any] = {"overfit": False, "val_loss": val.get("loss"), "train_loss": seen.get("loss")}
    reasons = []
    if val.get("loss") is not None and seen.get("loss") is not None:
        ratio = val["loss"] / max(seen["loss"], 1e-9)
        out["loss_ratio"] = ratio
        if ratio >= OVERFIT_LOSS_RATIO and val["loss"] - seen["loss"] >= 0.1:
            reasons.append(f"held-out loss {val['loss']:.3g} is {ratio:.1f}x the training episodes' {seen['loss']:.3g}")
    key = "value_rank_corr_per_episode"
    episodes = min(val.get("episodes", MIN_RANK_EPISODES), seen.get("episodes", MIN_RANK_EPISODES))
    if key in val and key in seen and episodes >= MIN_RANK_EPISODES:
        gap = seen[key] - val[key]
        out["rank_corr_gap"] = gap
        if gap >= OVERFIT_RANK_GAP:
            reasons.append(f"per-episode Spearman {val[key]:.2f} held out vs {seen[key]:.2f} on training episodes")
    if "bin_accuracy" in val and "bin_accuracy" in seen:  # reported beside the verdict, which it does not drive
        out.update(val_bin_accuracy=val["bin_accuracy"], train_bin_accuracy=seen["bin_accuracy"])
    if reasons:
        out.update(overfit=True, message="the model fits its training episodes far better than held-out ones: "
                   + "; ".join(reasons),
                   fix="train fewer steps, freeze the backbone (--freeze-mode all_backbones), add episodes, "
                       "or use HL-Gauss targets (--target hl_gauss)")
    return out
