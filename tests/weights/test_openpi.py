"""openpi params/ checkpoints: sentinels land in place; every bad checkpoint is a clear error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from recap_core.errors import CheckpointError
from recap_core.weights.openpi import detect_checkpoint_kind, load_policy_params, save_openpi_checkpoint
from recap_core.weights.synthetic import sentinel_params
from tests.weights.conftest import TINY, abstract_policy


def _assert_all_equal(loaded: dict, expected: dict) -> None:
    flat = traverse_util.flatten_dict(loaded)
    assert set(flat) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(flat[key]), value, err_msg="/".join(key))


@pytest.mark.parametrize("nnx_values", [False, True])
def test_full_checkpoint_every_tensor_in_place(tmp_path: Path, tiny_full, nnx_values: bool) -> None:
    params = sentinel_params(tiny_full)
    stats = {"norm_stats": {"state": {"mean": [0.0], "std": [1.0]}}}
    save_openpi_checkpoint(tmp_path / "ck", params, norm_stats=stats, asset_id="trossen", nnx_values=nnx_values)
    assert json.loads((tmp_path / "ck/assets/trossen/norm_stats.json").read_text()) == stats
    assert detect_checkpoint_kind(tmp_path / "ck") == "openpi-full"
    _assert_all_equal(load_policy_params(tmp_path / "ck", tiny_full), params)
    # the params/ folder itself is accepted too
    _assert_all_equal(load_policy_params(tmp_path / "ck" / "params", tiny_full), params)


def test_lora_checkpoint_every_tensor_in_place(tmp_path: Path, tiny_lora) -> None:
    params = sentinel_params(tiny_lora)
    assert any("lora_a" in k for k in params)
    save_openpi_checkpoint(tmp_path / "ck", params)
    assert detect_checkpoint_kind(tmp_path / "ck") == "openpi-lora"
    _assert_all_equal(load_policy_params(tmp_path / "ck", tiny_lora, preset="pi05-lora"), params)


def test_cast_to_configured_dtype(tmp_path: Path, tiny_full) -> None:
    save_openpi_checkpoint(tmp_path / "ck", sentinel_params(tiny_full))
    loaded = traverse_util.flatten_dict(load_policy_params(tmp_path / "ck", tiny_full, dtype=jnp.bfloat16))
    assert {v.dtype for v in loaded.values()} == {jnp.dtype(jnp.bfloat16)}


def test_full_base_into_lora_preset_keeps_fresh_adapters(tmp_path: Path, tiny_full, tiny_lora) -> None:
    params = sentinel_params(tiny_full)
    save_openpi_checkpoint(tmp_path / "ck", params)
    loaded = traverse_util.flatten_dict(load_policy_params(tmp_path / "ck", tiny_lora, preset="pi05-lora"))
    assert not any("lora" in "/".join(k) for k in loaded)
    _assert_all_equal(traverse_util.unflatten_dict(loaded), params)
    with pytest.raises(CheckpointError, match=r"(?s)full checkpoint.*--preset pi05") as err:
        load_policy_params(tmp_path / "ck", tiny_lora, preset="pi05-lora", allow_missing_lora=False)
    assert "pi05-lora" in str(err.value)


def test_lora_checkpoint_into_full_preset_names_the_lora_preset(tmp_path: Path, tiny_full, tiny_lora) -> None:
    save_openpi_checkpoint(tmp_path / "ck", sentinel_params(tiny_lora))
    with pytest.raises(CheckpointError, match=r"(?s)LoRA checkpoint.*--preset pi06-lora"):
        load_policy_params(tmp_path / "ck", tiny_full, preset="pi06")


def test_pi0_checkpoint_is_refused(tmp_path: Path, tiny_full) -> None:
    params = sentinel_params(tiny_full)
    params[("state_proj", "kernel")] = np.zeros((4, 32), np.float32)
    from recap_core.weights import openpi

    tree = {"params": traverse_util.unflatten_dict(params)}
    openpi.save_tree(tmp_path / "ck" / "params", tree)
    assert detect_checkpoint_kind(tmp_path / "ck") == "openpi-pi0"
    with pytest.raises(CheckpointError, match="pi0 checkpoint"):
        load_policy_params(tmp_path / "ck", tiny_full)


def test_wrong_size_lists_every_mismatch(tmp_path: Path, tiny_full) -> None:
    save_openpi_checkpoint(tmp_path / "ck", sentinel_params(abstract_policy(dataclasses.replace(TINY, action_dim=6))))
    with pytest.raises(CheckpointError) as err:
        load_policy_params(tmp_path / "ck", tiny_full)
    msg = str(err.value)
    assert "action_in_proj/kernel has shape (6, 32), the model expects (4, 32)" in msg
    assert "action_out_proj/bias has shape (6,)" in msg
    assert "missing keys" not in msg  # a wrong shape is reported once, not also as missing


def test_missing_and_unexpected_keys_all_reported(tmp_path: Path, tiny_full) -> None:
    params = sentinel_params(tiny_full)
    del params[("time_mlp_in", "bias")]
    del params[("PaliGemma", "llm", "final_norm", "scale")]
    params[("PaliGemma", "llm", "extra_head", "kernel")] = np.zeros((2, 2), np.float32)
    save_openpi_checkpoint(tmp_path / "ck", params)
    with pytest.raises(CheckpointError) as err:
        load_policy_params(tmp_path / "ck", tiny_full)
    msg = str(err.value)
    assert "2 missing keys" in msg and "time_mlp_in/bias" in msg and "PaliGemma/llm/final_norm/scale" in msg
    assert "1 unexpected keys: PaliGemma/llm/extra_head/kernel" in msg


def test_truncated_data_is_a_clear_error(tmp_path: Path, tiny_full) -> None:
    save_openpi_checkpoint(tmp_path / "ck", sentinel_params(tiny_full))
    data = sorted((tmp_path / "ck" / "params").rglob("d/*"), key=lambda p: p.stat().st_size)[-1]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_policy_params(tmp_path / "ck", tiny_full)


def test_corrupt_metadata_names_the_file(tmp_path: Path, tiny_full) -> None:
    save_openpi_checkpoint(tmp_path / "ck", sentinel_params(tiny_full))
    (tmp_path / "ck/params/_METADATA").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"_METADATA is corrupt"):
        load_policy_params(tmp_path / "ck", tiny_full)


def test_incomplete_and_absent_checkpoints(tmp_path: Path, tiny_full) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy_params(tmp_path / "nope", tiny_full)
    (tmp_path / "half" / "params").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="_METADATA is missing"):
        load_policy_params(tmp_path / "half", tiny_full)
    assert detect_checkpoint_kind(tmp_path / "half") == "unknown"
