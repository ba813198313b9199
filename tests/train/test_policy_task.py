"""sft / finetune through the real loader, tokenizer and pi0 model at a tiny size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recap_core.config import resolve_run_config
from recap_core.data.synthetic import make_dataset
from recap_core.errors import DatasetError
from recap_core.train.jobs import build_job, check_dataset
from recap_core.train.loop import train
from recap_core.train.metrics import read_metrics
from recap_core.train.policy_task import assign_cameras
from tests.conftest import TINY_PI0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "ds", episodes=4, frames=12, state_dim=6, action_dim=6)


def _config(stage: str, preset: str, dataset: Path, tmp_path: Path, **flags: object):
    pi06 = stage == "finetune"
    base = {"steps": 30, "batch_size": 4, "log_every": 1, "optim.peak_lr": 3e-3, "checkpoint.every": 30,
            "val.every": 30, "val.fraction": 0.25}
    base.update(flags)
    return resolve_run_config(stage, preset, dataset, flags=base, environ={},
                              model={**TINY_PI0, "pi06": pi06},
                              sets=[f"tokenizer={_tokenizer(tmp_path)}"])


def _tokenizer(tmp_path: Path) -> Path:
    from recap_core.models.tokenizer import build_toy_tokenizer

    path = tmp_path / "tok.model"
    if not path.exists():
        build_toy_tokenizer(path)
    return path


def test_assign_cameras() -> None:
    keys = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    assert assign_cameras(("cam_left_wrist", "cam_high"), keys) == {
        "base_0_rgb": "cam_high", "left_wrist_0_rgb": "cam_left_wrist"}
    with pytest.raises(DatasetError, match="unused: d"):
        assign_cameras(("a", "b", "c", "d"), keys)


def test_finetune_trains_to_lower_loss(dataset: Path, tmp_path: Path) -> None:
    config = _config("finetune", "pi06-tiny", dataset, tmp_path)
    job = build_job(config, tmp_path / "run", resuming=False)
    # The prompt carries the indicator, dropped for some samples with the seeded generator.
    batch = next(iter(job.train_data))
    inputs = job.task.make_inputs(batch, np.random.default_rng(0), train=True)
    assert inputs["tokens"].shape == (4, 48) and inputs["actions"].shape == (4, 4, 8)
    assert inputs["images"]["right_wrist_0_rgb"].max() == 0 and not inputs["image_masks"]["right_wrist_0_rgb"].any()
    result = train(job, config, tmp_path / "run")
    assert result.final_loss < 0.7 * result.first_loss, (result.first_loss, result.final_loss)
    assert (tmp_path / "run" / "assets" / "norm_stats.json").is_file()
    # One of the 4 episodes is held out (val.fraction 0.25): its flow-matching loss is logged at step 30.
    val = [r for r in read_metrics(tmp_path / "run") if r["split"] == "val"]
    assert [r["step"] for r in val] == [30] and val[0]["batches"] == 2.0  # the tiny preset's val.max_batches
    assert np.isfinite(val[0]["loss"]) and result.val["loss"] == val[0]["loss"]


def test_wrong_stage_dataset_names_the_producer(tmp_path: Path) -> None:
    plain = make_dataset(tmp_path / "plain", episodes=2, frames=6, with_recap=False)
    with pytest.raises(DatasetError, match="adv_ind") as info:
        check_dataset(_config("finetune", "pi06-tiny", plain, tmp_path))
    assert "recap finetune" in str(info.value) and "recap value label" in (info.value.fix or "")
    with pytest.raises(DatasetError, match="value_label"):
        check_dataset(resolve_run_config("value", "value-tiny", plain, environ={}))
