"""What the value model believes: plots and a rank correlation for `recap value label --report`.

- `advantage_hist.png`: histogram of autonomous advantages, one line per threshold.
- `value_vs_label.png`: predicted value and `value_label` over time for a few episodes of each
  outcome (success: last `value_label` is 0; failure: otherwise).
- Spearman rank correlation between predicted values and `value_label` (frames with a
  prediction), the number to watch: the seed notes that absolute C51 loss says little, the
  ranking is what matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EPISODES_PER_OUTCOME = 3


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], x.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho over the pairs where both are finite; None if it is undefined."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return None
    ra, rb = _ranks(a[ok]), _ranks(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def episode_outcome(value_label: np.ndarray) -> str:
    """"success" when an episode's last `value_label` (its return-to-go, frames in order) is 0, else "failure"."""
    return "success" if value_label[-1] > -1e-6 else "failure"


def _outcome_episodes(episode_index: np.ndarray, value_label: np.ndarray, value_pred: np.ndarray) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"success": [], "failure": []}
    for ep in np.unique(episode_index):
        sel = episode_index == ep
        if not np.isfinite(value_pred[sel]).any():
            continue
        outcome = episode_outcome(value_label[sel])
        if len(out[outcome]) < EPISODES_PER_OUTCOME:
            out[outcome].append(int(ep))
    return out


def write_report(
    out_dir: Path,
    *,
    advantage: np.ndarray,
    autonomous: np.ndarray,
    thresholds: dict[str, float],
    episode_index: np.ndarray,
    frame_index: np.ndarray,
    value_label: np.ndarray,
    value_pred: np.ndarray,
) -> dict[str, Any]:
    """Write the PNGs into `out_dir` (created) and return {plots, spearman, episodes}. Arrays are per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []

    fig, ax = plt.subplots(figsize=(7, 4))
    adv = advantage[autonomous & np.isfinite(advantage)]
    ax.hist(adv, bins=min(100, max(10, adv.size // 20 or 10)), color="#4477aa")
    for name, value in thresholds.items():
        ax.axvline(value, color="#cc3311", linestyle="--", label=f"threshold {name}: {value:.4g}")
    ax.set_xlabel("advantage (autonomous frames)")
    ax.set_ylabel("frames")
    if thresholds:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / "advantage_hist.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    plots.append(str(path))

    chosen = _outcome_episodes(episode_index, value_label, value_pred)
    rows = [(o, ep) for o in ("success", "failure") for ep in chosen[o]]
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(7, 2.2 * max(1, len(rows))), squeeze=False)
    for ax, (outcome, ep) in zip(axes[:, 0], rows, strict=False):
        sel = episode_index == ep
        order = np.argsort(frame_index[sel])
        t = frame_index[sel][order]
        ax.plot(t, value_label[sel][order], label="value_label", color="#228833")
        ax.plot(t, value_pred[sel][order], label="value_pred", color="#4477aa")
        ax.set_title(f"episode {ep} ({outcome})", fontsize="small")
        ax.set_ylim(-1.05, 0.05)
        ax.legend(fontsize="x-small", loc="lower right")
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    path = out_dir / "value_vs_label.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    plots.append(str(path))

    return {"plots": plots, "spearman": spearman(value_pred, value_label), "episodes": chosen}
