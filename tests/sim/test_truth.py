"""Label precision and recall at the sim's ground-truth mistake frames, and ground-truth labels."""

from __future__ import annotations

import numpy as np
import pytest

from recap_core.data.convert_aloha import convert_aloha_hdf5
from recap_core.data.dataset import column_array, open_dataset, read_table
from recap_core.data.merge import merge_datasets
from recap_core.errors import DatasetError
from recap_core.label.relabel import FrameLabels, write_labelled_copy
from recap_core.sim.collect import collect, collect_demos
from recap_core.sim.operators import OperatorMix
from recap_core.sim.task import get_task
from recap_core.sim.truth import label_quality, lead_into, read_truth, truth_labels

TASK = get_task("handover-easy")
LOOKAHEAD = 3


def test_lead_into_marks_the_mistake_and_the_frames_before_it():
    mistake = np.array([0, 0, 0, 0, 1, 0, 0, 2, 0])
    np.testing.assert_array_equal(lead_into(mistake, 2), [0, 0, 1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(lead_into(mistake, 0), mistake != 0)


@pytest.fixture(scope="module")
def round1(tmp_path_factory):
    """Two sloppy demos and one rollout of a policy that stands still, converted and merged."""
    tmp = tmp_path_factory.mktemp("truth")
    raw = [tmp / "raw_demos", tmp / "raw_rollouts"]
    collect_demos(TASK, 2, 0, raw[0], operators=OperatorMix.parse("sloppy"))
    collect(lambda obs: np.tile(obs["state"], (4, 1)), TASK, 1, 5, raw[1])
    for r in raw:
        convert_aloha_hdf5(r, tmp / f"{r.name}_ds", fps=TASK.fps, task="x")
    merge_datasets([tmp / "raw_demos_ds", tmp / "raw_rollouts_ds"], tmp / "round1")
    return tmp, raw


def _label(tmp, negative_every: int, name: str):
    info = open_dataset(tmp / "round1")
    table = read_table(info, ["frame_index"])
    index = np.asarray(column_array(table, "index")).reshape(-1)
    order = np.argsort(index)
    adv = np.where(np.arange(index.size) % negative_every == 0, "negative", "positive").astype(object)
    value = -np.linspace(1, 0, index.size).astype(np.float32)
    labels = FrameLabels(index[order].astype(np.int64), adv, value, np.zeros(index.size, np.float32))
    return write_labelled_copy(info, labels, tmp / name)


def test_label_quality_counts_negatives_against_the_ground_truth(round1):
    tmp, raw = round1
    out = _label(tmp, 3, "labelled")
    truth = read_truth(raw)
    assert [op for op, _ in truth] == ["sloppy", "sloppy", "policy"]
    # Independent reference: walk the episodes in order; rows are contiguous by episode here.
    info = open_dataset(out)
    table = read_table(info, ["frame_index", "intervention", "adv_ind"])
    ep = np.asarray(column_array(table, "episode_index")).reshape(-1)
    idx = np.asarray(column_array(table, "index")).reshape(-1)
    flags = np.asarray(column_array(table, "intervention")).reshape(-1)
    neg = np.asarray(column_array(table, "adv_ind")).reshape(-1).astype(str) == "negative"
    counted_frames = {}
    for demos in ("value", "positive"):
        quality = label_quality(out, raw, LOOKAHEAD, demos=demos)
        bad, mis, sel = [], [], []
        for e, (_, mistake) in enumerate(truth):
            rows = np.flatnonzero(ep == e)
            rows = rows[np.argsort(idx[rows])]
            counted = np.ones(rows.size, bool) if (demos == "value" and flags[rows].all()) else flags[rows] == 0
            sel.append(rows[counted])
            bad.append(lead_into(mistake, LOOKAHEAD)[counted])
            mis.append((mistake != 0)[counted])
        sel, bad, mis = np.concatenate(sel), np.concatenate(bad), np.concatenate(mis)
        assert quality.frames == sel.size
        counted_frames[demos] = sel.size
        assert quality.negatives == int(neg[sel].sum())
        assert quality.precision == pytest.approx(bad[neg[sel]].mean())
        assert quality.precision_strict == pytest.approx(mis[neg[sel]].mean())
        assert quality.recall == pytest.approx(neg[sel][mis].mean())
        assert quality.mistake_frames == int(mis.sum())
    # Demo frames count only when the demos were labelled by the value model; corrections never do.
    assert counted_frames["positive"] == int((flags == 0).sum()) < counted_frames["value"] < idx.size


def test_truth_labels_mark_exactly_the_mistake_frames(round1):
    tmp, raw = round1
    out = _label(tmp, 2, "labelled_for_truth")
    written = truth_labels(out, raw, tmp / "truth")
    quality = label_quality(written, raw, 0, demos="value")
    assert quality.precision == 1.0 and quality.recall == 1.0
    table = read_table(open_dataset(written), ["adv_ind"])
    labels = set(np.asarray(column_array(table, "adv_ind")).reshape(-1).astype(str))
    assert labels == {"positive", "negative"}


def test_wrong_raw_folders_are_refused(round1):
    tmp, raw = round1
    out = _label(tmp, 4, "labelled_refused")
    with pytest.raises(DatasetError, match="does not match"):
        label_quality(out, raw[:1], LOOKAHEAD)
    with pytest.raises(DatasetError, match="ground_truth"):
        read_truth([_plain(tmp)])


def _plain(tmp):
    """A raw folder whose episode has no ground truth (as ALOHA's own recorder writes it)."""
    import h5py

    folder = tmp / "plain"
    folder.mkdir(exist_ok=True)
    with h5py.File(tmp / "raw_demos" / "episode_0.hdf5", "r") as src, h5py.File(folder / "episode_0.hdf5", "w") as f:
        for key in ("action", "intervention"):
            f.create_dataset(key, data=src[key][()])
    return folder
