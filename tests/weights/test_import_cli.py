"""`recap import openpi` user errors (exit 2, nothing written) and `--init` with published weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx, traverse_util

from recap_core.config import resolve_run_config
from recap_core.errors import CheckpointError
from recap_core.models.value import ValueModel, value_config
from recap_core.train.init import build_parts
from recap_core.train.jobs import preset_model, task_for_config
from recap_core.train.sharding import make_mesh
from recap_core.train.state import init_parts
from recap_core.weights import pi05_base
from recap_core.weights.openpi import save_openpi_checkpoint
from recap_core.weights.parts import parts_pure_dict
from recap_core.weights.synthetic import sentinel_params, write_bundle
from tests.weights.conftest import TINY_LORA, abstract_policy, norm_stats_doc, recap


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentinel openpi checkpoints: `lora/` (with stats), `nostats/`, `two_ids/` (stats for two assets)."""
    root = tmp_path_factory.mktemp("ckpts")
    lora = sentinel_params(abstract_policy(TINY_LORA))
    save_openpi_checkpoint(root / "lora", lora, norm_stats=norm_stats_doc(), asset_id="arm")
    save_openpi_checkpoint(root / "nostats", lora)
    save_openpi_checkpoint(root / "two_ids", lora, norm_stats=norm_stats_doc(), asset_id="left")
    (root / "two_ids/assets/right").mkdir()
    (root / "two_ids/assets/right/norm_stats.json").write_text(json.dumps(norm_stats_doc()))
    (root / "run").mkdir()
    (root / "run/config.json").write_text("{}")
    (root / "existing").mkdir()
    (root / "existing/keep.txt").write_text("mine")
    return root


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("missing", "out"), "does not exist"),
        (("existing", "out"), "not an openpi checkpoint"),
        (("run", "out"), "already a recap run"),
        (("lora", "out", "--preset", "pi05-tiny"), "LoRA checkpoint"),
        (("nostats", "out", "--preset", "pi05-tiny"), "--norm-stats"),
        (("two_ids", "out", "--preset", "pi05-tiny"), "--asset-id"),
        (("lora", "out", "--preset", "nope"), "nope"),
        (("lora", "existing", "--preset", "pi05-tiny"), "already exists"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(ckpts: Path, args: tuple[str, ...], needle: str) -> None:
    before = sorted(p.name for p in ckpts.iterdir())
    result = recap("import", "openpi", *args, cwd=ckpts)
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith("cache")) == [
        n for n in before if not n.startswith("cache")]
    assert (ckpts / "existing/keep.txt").read_text() == "mine"


def test_load_into_parts_fills_real_model_parts(tmp_path: Path) -> None:
    """The --init hook against a run's own ModelParts: every value in place, shardings and dtypes kept;
    with frozen_dtype=bfloat16 (here the vision tower is frozen) the frozen params arrive in bf16 (never
    a full f32 copy), each the checkpoint's value rounded to bf16, the trainable ones exact in f32."""
    import ml_dtypes

    model = {**preset_model("sft", "pi05-tiny"), "train_vision": False}
    config = resolve_run_config("sft", "pi05-tiny", "ds", model=model, sets=["frozen_dtype=bfloat16"])
    parts = init_parts(task_for_config(config), config.seed, make_mesh(1), config.frozen_dtype, config.init_rng)
    sentinels = sentinel_params(parts_pure_dict(parts))
    save_openpi_checkpoint(tmp_path / "ck", sentinels)
    filled, base = pi05_base.load_into_parts(config, parts, make_mesh(1), path=tmp_path / "ck")
    assert base["kind"] == "openpi"
    trainable = traverse_util.flatten_dict(nnx.to_pure_dict(filled.trainable))
    frozen = traverse_util.flatten_dict(nnx.to_pure_dict(filled.frozen))
    assert trainable and frozen and set(trainable) | set(frozen) == set(sentinels)
    before = {**traverse_util.flatten_dict(nnx.to_pure_dict(parts.trainable)),
              **traverse_util.flatten_dict(nnx.to_pure_dict(parts.frozen))}
    for key, value in trainable.items():
        np.testing.assert_array_equal(np.asarray(value), sentinels[key], err_msg="/".join(key))
        assert value.dtype == np.float32
    for key, value in frozen.items():
        np.testing.assert_array_equal(np.asarray(value), sentinels[key].astype(ml_dtypes.bfloat16), err_msg="/".join(key))
        assert str(value.dtype) == "bfloat16"
    for key, value in {**trainable, **frozen}.items():
        assert value.sharding == before[key].sharding and value.dtype == before[key].dtype


def test_value_init_from_bundle_and_wrong_family(tmp_path: Path) -> None:
    model = nnx.eval_shape(lambda: ValueModel(value_config("value-tiny"), rngs=nnx.Rngs(0)))
    sentinels = sentinel_params(model)
    write_bundle(tmp_path / "bundle", sentinels)
    config = resolve_run_config("value", "value-tiny", "ds", flags={"init": str(tmp_path / "bundle"),
                                                                     "cameras": ["cam_high"]},
                                model=preset_model("value", "value-tiny"))
    parts, base = build_parts(config, task_for_config(config), make_mesh(1), task_for_config)
    assert base["kind"] == "vlm_bundle" and base["fingerprint"]
    loaded = traverse_util.flatten_dict(parts_pure_dict(parts))
    backbone = [k for k in sentinels if k[0] in ("llm", "img")]
    assert backbone
    for key in backbone:
        np.testing.assert_array_equal(np.asarray(loaded[key]), sentinels[key], err_msg="/".join(key))

    # the bundle is no policy, an openpi checkpoint is no value model
    policy = resolve_run_config("sft", "pi05-tiny", "ds", flags={"init": str(tmp_path / "bundle")},
                                model=preset_model("sft", "pi05-tiny"))
    with pytest.raises(CheckpointError, match="VLM bundle"):
        build_parts(policy, task_for_config(policy), make_mesh(1), task_for_config)
    save_openpi_checkpoint(tmp_path / "ck", sentinel_params(abstract_policy(TINY_LORA)))
    config.init = str(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="openpi policy checkpoint"):
        build_parts(config, task_for_config(config), make_mesh(1), task_for_config)
