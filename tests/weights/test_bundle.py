"""VLM bundle: Gemma3 (params / ema_params, gemma-library or value-snapshot layout) and SigLIP2 npz."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx, traverse_util

from recap_core.errors import BundleError, CheckpointError
from recap_core.models.value import ValueModel, value_config
from recap_core.weights.bundle import SIGLIP_NPZ, load_value_bundle, resolve_bundle
from recap_core.weights.layout import BUNDLE_GEMMA, BUNDLE_SIGLIP
from recap_core.weights.openpi import detect_checkpoint_kind
from recap_core.weights.synthetic import sentinel_params, write_bundle

HEADS = ("img_projection", "cross_attention", "cross_attn_norm", "value_head")


@pytest.fixture(scope="module")
def value_model() -> ValueModel:
    return nnx.eval_shape(lambda: ValueModel(value_config("value-tiny"), rngs=nnx.Rngs(0)))


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree)


@pytest.mark.parametrize("use_ema", [False, True])
def test_gemma_library_layout_and_npz(tmp_path: Path, value_model, use_ema: bool) -> None:
    params, ema = sentinel_params(value_model), sentinel_params(value_model, offset=1000)
    write_bundle(tmp_path, params, ema_params=ema)
    assert detect_checkpoint_kind(tmp_path) == "bundle"
    loaded = _flat(load_value_bundle(tmp_path, value_model, use_ema=use_ema))
    expected = ema if use_ema else params
    # backbones come from the bundle (llm from the chosen orbax item, img from the npz, which
    # carries the `params` sentinels); value heads are not in a gemma-library bundle
    backbone = {k for k in expected if k[0] in ("llm", "img")}
    assert set(loaded) == backbone
    for key in backbone:
        want = expected[key] if key[0] == "llm" else params[key]
        np.testing.assert_array_equal(np.asarray(loaded[key]), want, err_msg="/".join(key))


def test_value_snapshot_layout_loads_heads_too(tmp_path: Path, value_model) -> None:
    params = sentinel_params(value_model)
    write_bundle(tmp_path, params, ema_params=params, gemma_layout="value-snapshot")
    loaded = _flat(load_value_bundle(tmp_path, value_model))
    assert set(loaded) == set(params)
    for key, want in params.items():
        np.testing.assert_array_equal(np.asarray(loaded[key]), want, err_msg="/".join(key))


def test_missing_ema_item(tmp_path: Path, value_model) -> None:
    write_bundle(tmp_path, sentinel_params(value_model))
    with pytest.raises(BundleError, match="no 'ema_params' item"):
        load_value_bundle(tmp_path, value_model, use_ema=True)


def test_missing_layer_and_wrong_size(tmp_path: Path, value_model) -> None:
    params = sentinel_params(value_model)
    key = ("llm", "layers", "attn", "q_einsum", "w")
    params[key] = params[key][:, :, :, :8]  # head_dim 16 -> 8
    write_bundle(tmp_path, params)
    with pytest.raises(CheckpointError, match=r"llm/layers/attn/q_einsum/w has shape \(2, 4, 32, 8\), the model expects \(2, 4, 32, 16\)"):
        load_value_bundle(tmp_path, value_model)


def test_gap_in_layers_names_the_key(tmp_path: Path, value_model) -> None:
    write_bundle(tmp_path / "b", sentinel_params(value_model))
    npz_path = tmp_path / "b" / BUNDLE_SIGLIP / SIGLIP_NPZ
    with np.load(npz_path) as npz:
        arrays = {k: npz[k] for k in npz.files if "encoderblock_0/" not in k}
    np.savez(npz_path, **arrays)
    with pytest.raises(CheckpointError, match=r"encoderblock/LayerNorm_0/scale has no layer\(s\) \[0\]"):
        load_value_bundle(tmp_path / "b", value_model)


def test_corrupt_npz_and_missing_parts(tmp_path: Path, value_model) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        resolve_bundle(tmp_path / "nope")
    write_bundle(tmp_path / "b", sentinel_params(value_model))
    with pytest.raises(BundleError, match=r"tokenizer\.model"):
        resolve_bundle(tmp_path / "b")
    npz_path = tmp_path / "b" / BUNDLE_SIGLIP / SIGLIP_NPZ
    npz_path.write_bytes(npz_path.read_bytes()[:100])
    with pytest.raises(BundleError, match=re.escape(SIGLIP_NPZ)):
        load_value_bundle(tmp_path / "b", value_model)
    (tmp_path / "b" / BUNDLE_GEMMA / "_METADATA").unlink()
    with pytest.raises(CheckpointError, match="_METADATA is missing"):
        load_value_bundle(tmp_path / "b", value_model)


def test_bundle_dir_from_settings(tmp_path: Path, value_model, monkeypatch: pytest.MonkeyPatch) -> None:
    write_bundle(tmp_path / "vlm", sentinel_params(value_model))
    monkeypatch.delenv("RECAP_VLM_BUNDLE_DIR", raising=False)
    monkeypatch.setenv("OPENPI_VLM_CKPT_DIR", str(tmp_path / "vlm"))
    monkeypatch.setenv("RECAP_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    loaded = _flat(load_value_bundle(None, value_model))
    assert ("llm", "final_norm", "scale") in loaded
