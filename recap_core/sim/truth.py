"""The sim's ground truth against a labelled dataset: do the negative labels sit on the mistakes?

`recap_core.sim.collect` writes, next to every toy-task episode, which mistake (operators.MISTAKES)
each frame's action makes. `recap demo` merges raw folders in a known order (demos, then rollouts),
so episode k of the merged dataset is the k-th file of those folders. This module joins the two:

- precision: the share of negative labels that are a mistake frame or lead into one within the
  lookahead (a mistake at t .. t + lookahead of the same episode);
- recall: the share of mistake frames labelled negative;
- Spearman of the predicted value against the return-to-go (`value_label`).

Only frames whose label came from the value model count (autonomous frames, and demo frames when
demos were labelled by value; corrections are positive by rule). `truth_labels` writes the
ceiling: a dataset labelled from the ground truth itself (negative exactly on mistake frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.errors import DatasetError
from recap_core.sim.operators import MISTAKES


@dataclasses.dataclass(frozen=True)
class LabelQuality:
    frames: int  # frames labelled by the value model
    negatives: int
    mistake_frames: int
    precision: float | None  # share of negatives that are, or lead into, a mistake
    precision_strict: float | None  # share of negatives that are themselves mistake frames
    recall: float | None  # share of mistake frames labelled negative
    recall_by_kind: dict[str, float | None]
    negative_share_by_operator: dict[str, float | None]
    value_spearman: float | None  # predicted value vs return-to-go

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_truth(raw_dirs: Sequence[Path]) -> list[tuple[str, np.ndarray]]:
    """(operator, per-frame mistake codes) of every episode, in the order `recap convert` and
    `recap data merge` give them (each folder's files in episode order, folder after folder)."""
    import h5py

    from recap_core.data.convert_aloha import episode_files

    out = []
    for raw in raw_dirs:
        for path in episode_files(Path(raw)):
            with h5py.File(path, "r") as f:
                if "/ground_truth/mistake" not in f:
                    raise DatasetError(f"{path} has no /ground_truth/mistake",
                                       fix="record the episodes with recap_core.sim.collect (the toy task's recorder)")
                out.append((str(f.attrs.get("operator", "careful")), np.asarray(f["/ground_truth/mistake"][()])))
    return out


def _episodes(root: Path, columns: list[str]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    from recap_core.data.dataset import column_array, open_dataset, read_table
    from recap_core.label.advantage import episode_groups

    table = read_table(open_dataset(Path(root)), [*columns, "frame_index"])
    data = {c: np.asarray(column_array(table, c)) for c in [*columns, "frame_index", "episode_index", "index"]}
    return data, episode_groups(data["episode_index"], data["frame_index"])


def _aligned(truth: list[tuple[str, np.ndarray]], groups: list[np.ndarray], root: Path) -> None:
    if len(truth) != len(groups) or any(len(m) != len(g) for (_, m), g in zip(truth, groups, strict=False)):
        raise DatasetError(
            f"{root} does not match the raw episodes' ground truth ({len(groups)} vs {len(truth)} episodes, "
            "or different lengths)",
            fix="pass the raw folders the dataset was converted and merged from, in merge order",
        )


def lead_into(mistake: np.ndarray, lookahead: int) -> np.ndarray:
    """Per frame: a mistake happens at this frame or within the next `lookahead` frames."""
    bad = np.asarray(mistake) != 0
    out = bad.copy()
    for k in range(1, lookahead + 1):
        out[:-k] |= bad[k:]
    return out


def label_quality(labelled: Path, raw_dirs: Sequence[Path], lookahead: int, demos: str = "positive") -> LabelQuality:
    """Score a `recap value label` output against the ground truth of the raw episodes it came from."""
    from recap_core.label.report import spearman

    data, groups = _episodes(labelled, ["adv_ind", "intervention", "value_pred", "value_label"])
    truth = read_truth(raw_dirs)
    _aligned(truth, groups, labelled)
    rows_all, neg_all, bad_all, mis_all, kinds_all, ops_all = [], [], [], [], [], []
    for (operator, mistake), rows in zip(truth, groups, strict=True):
        flags = data["intervention"][rows].reshape(-1).astype(bool)
        by_value = ~flags if not (demos == "value" and flags.all()) else np.ones_like(flags)
        neg = data["adv_ind"][rows].reshape(-1).astype(str) == "negative"
        rows_all.append(rows[by_value])
        neg_all.append(neg[by_value])
        bad_all.append(lead_into(mistake, lookahead)[by_value])
        mis_all.append(mistake[by_value] != 0)
        kinds_all.append(mistake[by_value])
        ops_all.append(np.full(int(by_value.sum()), operator))
    rows, neg, bad, mis, kinds, ops = (np.concatenate(x) for x in (rows_all, neg_all, bad_all, mis_all, kinds_all, ops_all))
    value = data["value_pred"][rows].reshape(-1).astype(np.float64)
    target = data["value_label"][rows].reshape(-1).astype(np.float64)
    finite = np.isfinite(value)

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        return float(mask[of].mean()) if of.any() else None

    return LabelQuality(
        frames=int(rows.size),
        negatives=int(neg.sum()),
        mistake_frames=int(mis.sum()),
        precision=share(bad, neg),
        precision_strict=share(mis, neg),
        recall=share(neg, mis),
        recall_by_kind={k: share(neg, kinds == i) for i, k in enumerate(MISTAKES) if k != "none"},
        negative_share_by_operator={o: share(neg, ops == o) for o in sorted(set(ops.tolist()))},
        value_spearman=spearman(value[finite], target[finite]) if finite.sum() > 2 else None,
    )


def truth_labels(labelled: Path, raw_dirs: Sequence[Path], output: Path, *, overwrite: bool = False) -> Path:
    """A copy of `labelled` whose adv_ind comes from the ground truth: negative exactly on the
    mistake frames, positive elsewhere (the ceiling a value model could reach)."""
    from recap_core.data.dataset import open_dataset
    from recap_core.label.relabel import FrameLabels, write_labelled_copy

    data, groups = _episodes(labelled, ["adv_ind", "value_pred", "advantage"])
    truth = read_truth(raw_dirs)
    _aligned(truth, groups, labelled)
    adv = np.full(data["index"].size, "positive", dtype=object)
    for (_, mistake), rows in zip(truth, groups, strict=True):
        adv[rows[mistake != 0]] = "negative"
    order = np.argsort(data["index"])
    labels = FrameLabels(
        index=data["index"][order].astype(np.int64),
        adv_ind=adv[order],
        value_pred=data["value_pred"][order].reshape(-1).astype(np.float32),
        advantage=data["advantage"][order].reshape(-1).astype(np.float32),
    )
    return write_labelled_copy(open_dataset(Path(labelled)), labels, Path(output), overwrite=overwrite)
