"""The real predict_fn wiring: checkpoint resolution, restore, jitted data-parallel forward."""

from __future__ import annotations

import numpy as np
import pytest

from recap_core.errors import CheckpointError
from recap_core.label.checkpoint import resolve_value_checkpoint
from recap_core.label.model import load_value_model, make_predict_fn, value_predictor
from recap_core.label.pipeline import LabelOptions, label_dataset
from tests.train.toy import IN_DIM, ToyTask


class StateToyTask(ToyTask):
    """The toy model fed from a loader batch: the first IN_DIM state dims (zero padded)."""

    image_size = (16, 16)

    def make_inputs(self, batch, rng, *, train):
        state = np.asarray(batch["state"], np.float32)
        x = np.zeros((state.shape[0], IN_DIM), np.float32)
        x[:, : min(IN_DIM, state.shape[1])] = state[:, :IN_DIM]
        assert batch["images"]["cam_high"].shape[1:] == (16, 16, 3)  # real decoded frames
        return {"x": x}


def toy_forward(model, inputs):
    return -(model(inputs["x"])[:, 0] ** 2)


def test_resolve_accepts_run_and_step_dirs(toy_value_run):
    ckpt = resolve_value_checkpoint(toy_value_run)
    assert ckpt.step == 2 and ckpt.run_dir == toy_value_run.absolute()
    assert resolve_value_checkpoint(toy_value_run / "checkpoints" / "2").step == 2
    assert ckpt.content_hash() == resolve_value_checkpoint(toy_value_run).content_hash()


def test_policy_run_is_not_a_value_model(toy_policy_run, tmp_path):
    with pytest.raises(CheckpointError, match="not a value model"):
        resolve_value_checkpoint(toy_policy_run)
    with pytest.raises(CheckpointError, match="not a recap value-model run"):
        resolve_value_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_value_checkpoint(tmp_path / "nope")


def test_predict_fn_matches_eager_model_and_pads_to_devices(toy_value_run):
    ckpt = resolve_value_checkpoint(toy_value_run)
    task, model, mesh = load_value_model(ckpt, use_ema=False, task_factory=lambda cfg: StateToyTask())
    predict = make_predict_fn(task, model, mesh, toy_forward)
    rng = np.random.default_rng(0)
    batch = {"state": rng.normal(size=(5, 4)).astype(np.float32), "images": {"cam_high": np.zeros((5, 16, 16, 3), np.uint8)}}
    got = predict(batch)
    want = np.asarray(toy_forward(model, task.make_inputs(batch, rng, train=False)))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_label_with_real_checkpoint_and_decoded_frames(toy_value_run, src_dataset, tmp_path):
    ckpt = resolve_value_checkpoint(toy_value_run)
    factory = value_predictor(ckpt, use_ema=True, task_factory=lambda cfg: StateToyTask(), forward=toy_forward)
    res = label_dataset(src_dataset, ckpt.content_hash(), factory, LabelOptions(output=tmp_path / "o", cache_dir=tmp_path / "c", batch_size=4))
    assert res["frames_predicted"] > 0 and res["frames_labelled"] > 0
    assert 0 < res["positive_fraction"] < 1
