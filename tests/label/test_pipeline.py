"""The label stage end to end through `label_dataset` with a deterministic predict_fn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recap_core.errors import ConfigError, DatasetError, OutputExistsError
from recap_core.label.pipeline import LabelOptions
from recap_core.label.pipeline import label_dataset as run_label
from recap_core.label.relabel import read_label_record
from tests.label.conftest import TabularFrames, tabular_predictor, tree_hashes, value_from_batch


def _read(root: Path, columns: list[str]) -> dict[str, np.ndarray]:
    from recap_core.data.dataset import column_array, open_dataset, read_table

    table = read_table(open_dataset(root), columns)
    return {c: column_array(table, c) for c in [*columns, "index", "episode_index"]}


def test_default_run_writes_new_dataset_and_keeps_input_bytes(src_dataset, tmp_path):
    before = tree_hashes(src_dataset)
    out = tmp_path / "out"
    res = label_dataset_run(src_dataset, out, tmp_path / "cache")
    assert tree_hashes(src_dataset) == before
    cols = _read(out, ["adv_ind", "intervention", "value_pred", "advantage", "value_label"])
    auto = cols["intervention"] == 0
    assert set(cols["adv_ind"][auto]) == {"positive", "negative"}
    assert (cols["adv_ind"][~auto] == "positive").all()
    assert res["frames_labelled"] == int(auto.sum())
    assert res["positive_frames"] == int((cols["adv_ind"][auto] == "positive").sum())
    assert res["skipped_episodes"] == [0]
    # Demo episode: nothing predicted. Others: the stand-in critic's values.
    demo = cols["episode_index"] == 0
    assert np.isnan(cols["value_pred"][demo]).all()
    want = cols["value_label"] - 0.03 * (cols["index"] % 5)
    pred = cols["value_pred"][auto]
    np.testing.assert_allclose(pred, want[auto], atol=1e-6)
    assert cols["value_pred"].dtype == np.float32 and cols["advantage"].dtype == np.float32
    # Videos are shared, not copied.
    video = next((src_dataset / "videos").rglob("*.mp4"))
    assert (out / video.relative_to(src_dataset)).stat().st_ino == video.stat().st_ino


def label_dataset_run(root, out, cache, **kw):
    return run_label(root, "ckpt-a", tabular_predictor, LabelOptions(output=out, cache_dir=cache, **kw))


def test_lerobot_opens_output(src_dataset, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = tmp_path / "out"
    label_dataset_run(src_dataset, out, tmp_path / "cache")
    ds = LeRobotDataset("local/out", root=out, video_backend="pyav")
    item = ds[20]
    assert item["adv_ind"] in ("positive", "negative")
    assert {"value_pred", "advantage"} <= set(item)
    assert "value_pred" in ds.meta.stats and "advantage" in ds.meta.features
    assert item["observation.images.cam_high"].shape == (3, 16, 16)


class Crash(RuntimeError):
    pass


def test_crash_then_resume_equals_clean_run(src_dataset, tmp_path):
    clean = tmp_path / "clean"
    label_dataset_run(src_dataset, clean, tmp_path / "cache-clean", batch_size=3)

    calls = {"n": 0}

    def crashing(info, cameras):
        def predict(batch):
            calls["n"] += 1
            if calls["n"] > 4:
                raise Crash("killed")
            return value_from_batch(batch)

        return TabularFrames(info.root), predict

    out = tmp_path / "resumed"
    cache = tmp_path / "cache"
    with pytest.raises(Crash):
        run_label(src_dataset, "ckpt-a", crashing, LabelOptions(output=out, cache_dir=cache, batch_size=3))
    assert not out.exists()
    saved = list(cache.rglob("ep-*.npy"))
    assert saved, "finished episodes must be cached before the crash"

    counted = {"frames": 0}

    def counting(info, cameras):
        def predict(batch):
            counted["frames"] += len(batch["index"])
            return value_from_batch(batch)

        return TabularFrames(info.root), predict

    res = run_label(src_dataset, "ckpt-a", counting, LabelOptions(output=out, cache_dir=cache, batch_size=3))
    assert res["episodes_from_cache"] == len(saved)
    assert tree_hashes(out) == tree_hashes(clean)
    # Resumed run predicted less than the whole dataset.
    assert 0 < counted["frames"] < res["frames"]

    # A rerun with everything cached never builds the predictor.
    def must_not_build(info, cameras):
        raise AssertionError("predictor built although every episode is cached")

    again = run_label(src_dataset, "ckpt-a", must_not_build, LabelOptions(output=out, cache_dir=cache, overwrite=True))
    assert again["frames_predicted"] == 0
    assert tree_hashes(out) == tree_hashes(clean)


def test_other_checkpoint_does_not_reuse_cache(src_dataset, tmp_path):
    cache = tmp_path / "cache"
    label_dataset_run(src_dataset, tmp_path / "a", cache)
    res = run_label(src_dataset, "ckpt-b", tabular_predictor, LabelOptions(output=tmp_path / "b", cache_dir=cache))
    assert res["frames_predicted"] > 0


def test_shards_merge_to_the_same_result(src_dataset, tmp_path):
    label_dataset_run(src_dataset, tmp_path / "whole", tmp_path / "cache-whole")
    caches = []
    for i in range(3):
        cache = tmp_path / f"cache-{i}"
        res = run_label(src_dataset, "ckpt-a", tabular_predictor, LabelOptions(shard=(i, 3), cache_dir=cache))
        assert res["shard"] == f"{i}/3" and "output" not in res
        caches.append(cache)
    counts = [len(list(c.rglob("ep-*.npy"))) for c in caches]
    assert sum(counts) == 4  # four non-demo episodes, each in exactly one shard

    def must_not_build(info, cameras):
        raise AssertionError("merge must not predict")

    out = tmp_path / "merged"
    run_label(
        src_dataset, "ckpt-a", must_not_build, LabelOptions(output=out, cache_dir=tmp_path / "m", merge_from=tuple(caches))
    )
    assert tree_hashes(out) == tree_hashes(tmp_path / "whole")


def test_merge_with_missing_shard_is_an_error(src_dataset, tmp_path):
    from recap_core.label.pipeline import MissingPredictionsError

    run_label(src_dataset, "ckpt-a", tabular_predictor, LabelOptions(shard=(0, 2), cache_dir=tmp_path / "c0"))

    def must_not_build(info, cameras):
        raise MissingPredictionsError("would predict", fix="")

    with pytest.raises(MissingPredictionsError):
        run_label(
            src_dataset, "ckpt-a", must_not_build,
            LabelOptions(output=tmp_path / "o", cache_dir=tmp_path / "m", merge_from=(tmp_path / "c0",)),
        )
    assert not (tmp_path / "o").exists()


def test_in_place_relabel(src_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(src_dataset, copy)
    ref = tmp_path / "ref"
    label_dataset_run(src_dataset, ref, tmp_path / "cache")
    res = run_label(copy, "ckpt-a", tabular_predictor, LabelOptions(in_place=True, cache_dir=tmp_path / "cache"))
    assert res["in_place"] and res["frames_predicted"] == 0  # same identity: cache reused
    a = _read(copy, ["adv_ind", "value_pred"])
    b = _read(ref, ["adv_ind", "value_pred"])
    assert list(a["adv_ind"]) == list(b["adv_ind"])
    np.testing.assert_array_equal(a["value_pred"], b["value_pred"])
    assert not list(copy.rglob("*.recap-staged")) and not (copy / ".recap-relabel-journal.json").exists()
    # The record of how the labels were made is renamed into place with the other files.
    assert read_label_record(copy)["thresholds"] == res["thresholds"]


def test_per_task_and_report(src_dataset, tmp_path):
    res = label_dataset_run(src_dataset, tmp_path / "o", tmp_path / "c", per_task=True, top_percent=50,
                            report_dir=tmp_path / "report")
    assert set(res["thresholds"]) == {"0", "1"}
    assert all(Path(p).stat().st_size > 1000 for p in res["report"]["plots"])
    assert 0.5 < res["spearman"] <= 1.0
    page = res["report"]["episodes_page"]
    assert page["path"] == str(tmp_path / "report" / "episodes.html") and Path(page["path"]).stat().st_size == page["bytes"]
    assert page["dataset"] == str(tmp_path / "o") and page["episodes_shown"] == 5
    assert page["has_predictions"] and page["thresholds"] == res["thresholds"]


def test_label_record_is_written_into_the_new_dataset_only(src_dataset, tmp_path):
    from recap_core.label.pipeline import label_dataset

    out = tmp_path / "out"
    res = label_dataset(src_dataset, "ckpt-a", tabular_predictor, LabelOptions(output=out, cache_dir=tmp_path / "c",
                        top_percent=40, lookahead="episode"), checkpoint={"run_dir": "runs/value", "step": 7})
    assert read_label_record(src_dataset) is None
    record = read_label_record(out)
    assert record["thresholds"] == res["thresholds"] and set(record["thresholds"]) == {"all"}
    assert record["top_percent"] == 40 and record["lookahead"] == "episode" and record["per_task"] is False
    assert record["checkpoint"] == {"hash": "ckpt-a", "run_dir": "runs/value", "step": 7}
    assert record["tasks"] == {"0": "pick up the cube", "1": "open the drawer"}
    # A copy with other labels (ground truth, ...) and no record of its own drops the input's.
    from recap_core.data.dataset import open_dataset
    from recap_core.label.relabel import FrameLabels, write_labelled_copy

    cols = _read(out, ["adv_ind", "value_pred", "advantage"])
    labels = FrameLabels(cols["index"], cols["adv_ind"], cols["value_pred"].astype(np.float32),
                         cols["advantage"].astype(np.float32))
    again = write_labelled_copy(open_dataset(out), labels, tmp_path / "again")
    assert read_label_record(again) is None and read_label_record(out) is not None


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"top_percent": 0}, ConfigError, "--top-percent"),
        ({"top_percent": 101}, ConfigError, "--top-percent"),
        ({"lookahead": 0}, ConfigError, "--lookahead"),
        ({"cameras": ("cam_nope",)}, DatasetError, "cam_nope"),
    ],
)
def test_bad_input_writes_nothing(src_dataset, tmp_path, kw, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        label_dataset_run(src_dataset, out, tmp_path / "cache", **kw)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_existing_output_needs_overwrite(src_dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputExistsError):
        label_dataset_run(src_dataset, out, tmp_path / "cache")
    assert list(out.iterdir()) == [] and not (tmp_path / "cache").exists()


def test_dataset_without_recap_columns(tmp_path):
    from recap_core.data.synthetic import make_dataset

    plain = make_dataset(tmp_path / "plain", episodes=1, frames=4, cameras=("cam_high",), image_size=8,
                         state_dim=2, action_dim=2, with_recap=False)
    with pytest.raises(DatasetError, match="reward_label"):
        label_dataset_run(plain, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_demos_value_labels_demo_frames_by_the_value_model(src_dataset, tmp_path):
    out = tmp_path / "out"
    res = label_dataset_run(src_dataset, out, tmp_path / "cache", demos="value", top_percent=50)
    cols = _read(out, ["adv_ind", "intervention", "value_pred", "advantage"])
    demo = cols["episode_index"] == 0
    assert cols["intervention"][demo].all()  # the input's flags are kept as they were
    assert res["skipped_episodes"] == [] and res["demos"] == "value"
    assert res["frames_labelled"] == int(demo.sum() + (cols["intervention"] == 0).sum())
    assert not np.isnan(cols["value_pred"][demo]).any()
    assert set(cols["adv_ind"][demo]) == {"positive", "negative"}
    # Corrections inside rollouts stay positive by rule.
    correction = (cols["intervention"] == 1) & ~demo
    assert correction.any() and (cols["adv_ind"][correction] == "positive").all()
    # The default keeps demos positive, nothing predicted for them.
    plain = label_dataset_run(src_dataset, tmp_path / "plain", tmp_path / "cache2")
    assert plain["skipped_episodes"] == [0] and plain["demos"] == "positive"


def test_demos_mode_is_checked(src_dataset, tmp_path):
    with pytest.raises(Exception, match="--demos"):
        label_dataset_run(src_dataset, tmp_path / "out", tmp_path / "cache", demos="all")
    assert not (tmp_path / "out").exists()


def test_monte_carlo_labels_predict_only_the_labelled_frames(src_dataset, tmp_path):
    mc = label_dataset_run(src_dataset, tmp_path / "mc", tmp_path / "cache", lookahead="episode")
    nstep = label_dataset_run(src_dataset, tmp_path / "n", tmp_path / "cache2", lookahead=2)
    assert mc["lookahead"] == "episode" and mc["frames_predicted"] == mc["frames_labelled"]
    assert nstep["frames_predicted"] >= mc["frames_predicted"]  # N-step also predicts its bootstrap frames
    cols = _read(tmp_path / "mc", ["intervention", "value_pred", "advantage", "reward_label"])
    auto = cols["intervention"] == 0
    for ep in np.unique(cols["episode_index"][auto]):
        rows = np.flatnonzero(cols["episode_index"] == ep)
        rtg = np.cumsum(cols["reward_label"][rows][::-1])[::-1]
        sel = auto[rows]
        np.testing.assert_allclose(cols["advantage"][rows][sel], (rtg - cols["value_pred"][rows])[sel], atol=1e-5)
