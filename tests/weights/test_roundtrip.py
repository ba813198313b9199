"""recap run -> `recap export openpi` -> `recap import openpi` -> `--init`: every step keeps the weights.

The trained run comes from the real `recap sft` (pi05-tiny, 2 steps); the pi0.6 and LoRA cases use
sentinel checkpoints, so a value in the wrong place names the tensor it came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx, traverse_util

from recap_core.config import load_run_config, resolve_run_config
from recap_core.errors import CheckpointError
from recap_core.interop.export import export_openpi
from recap_core.interop.import_openpi import import_openpi
from recap_core.presets import get_preset
from recap_core.train.init import build_parts
from recap_core.train.jobs import preset_model, task_for_config
from recap_core.train.sharding import make_mesh
from recap_core.weights.openpi import save_openpi_checkpoint, to_openpi_tree
from recap_core.weights.orbax_tree import read_tree_metadata, restore_leaves
from recap_core.weights.parts import parts_pure_dict
from recap_core.weights.synthetic import sentinel_params
from tests.weights.conftest import assert_same_params, norm_stats_doc, recap, run_params

DOCS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
LORA_SETS = ("model.paligemma_variant=dummy_lora", "model.action_expert_variant=dummy_expert_lora")


def published_keys() -> dict[str, tuple[int, ...]]:
    """The key list docs/formats.md publishes for openpi pi0.5 (`key [shape]` lines)."""
    block = DOCS.read_text().split("<!-- openpi-pi05-keys:start -->")[1].split("<!-- openpi-pi05-keys:end -->")[0]
    out = {}
    for line in block.splitlines():
        match = re.fullmatch(r"(\S+)\s+\[([\d, ]+)\]", line.strip())
        if match:
            out[match.group(1)] = tuple(int(d) for d in match.group(2).split(","))
    return out


def openpi_arrays(ckpt: Path) -> dict[tuple[str, ...], np.ndarray]:
    """Every array of an openpi `params/` checkpoint, keyed by its stored path."""
    meta = read_tree_metadata(ckpt / "params")
    return restore_leaves(ckpt / "params", {k: np.dtype(np.float32) for k in meta})


def as_openpi(flat: dict) -> dict[tuple[str, ...], np.ndarray]:
    return traverse_util.flatten_dict(to_openpi_tree(flat))


def policy_model(preset: str, sets: tuple[str, ...] = ()) -> nnx.Module:
    stage = "finetune" if preset.startswith("pi06") else "sft"
    config = resolve_run_config(stage, preset, "ds", sets=list(sets), model=preset_model(stage, preset))
    model_config = task_for_config(config).model_config
    return nnx.eval_shape(lambda: model_config.create(nnx.Rngs(0)))


def test_published_key_list_is_the_pi05_preset() -> None:
    model = nnx.eval_shape(lambda: get_preset("pi05").model.create(nnx.Rngs(0)))
    ours = {"/".join(k[1:]): tuple(v.shape) for k, v in as_openpi(sentinel_shapes(model)).items()}
    assert ours == published_keys()


def sentinel_shapes(model: nnx.Module) -> dict:
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {tuple(str(p) for p in k): v for k, v in flat.items()}


def test_export_import_init_round_trip(sft_run: Path, workdir: Path) -> None:
    trained = run_params(sft_run)  # the run's EMA weights: what serving and export use

    exported = recap("export", "openpi", str(sft_run), "exp", "--json", cwd=workdir)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads(exported.stdout)["step"] == 2
    exp = workdir / "exp"
    # openpi's layout key for key: one `params` item holding exactly to_openpi_tree's keys and shapes
    stored = read_tree_metadata(exp / "params")
    expected = as_openpi(trained)
    assert set(stored) == set(expected)
    assert {k: v.shape for k, v in stored.items()} == {k: v.shape for k, v in expected.items()}
    assert {"/".join(k[1:]) for k in stored} == set(published_keys())  # same names as a real pi05_base
    for key, value in openpi_arrays(exp).items():
        np.testing.assert_array_equal(value, expected[key], err_msg="/".join(key))
    run_stats = json.loads((sft_run / "assets" / "norm_stats.json").read_text())
    assert json.loads((exp / "assets" / "ds" / "norm_stats.json").read_text()) == run_stats

    imported = recap("import", "openpi", "exp", "runs/imp", "--preset", "pi05-tiny", "--json", cwd=workdir)
    assert imported.returncode == 0, imported.stderr[-3000:]
    summary = json.loads(imported.stdout)
    assert (summary["stage"], summary["asset_id"], summary["base"], summary["frozen_params"]) == (
        "sft", "ds", "self-contained", 0)
    run2 = workdir / "runs" / "imp"
    assert_same_params(run_params(run2), trained)  # export -> import is the identity
    assert (run2 / "assets" / "norm_stats.json").read_bytes() == (exp / "assets/ds/norm_stats.json").read_bytes()
    config = load_run_config(run2 / "config.json")
    assert (config.init, config.dataset, config.preset) == ("random", "ds", "pi05-tiny")

    # `recap sft DS --init exp` (and --init runs/imp) build their model with these exact weights
    for init in (exp, run2):
        new = resolve_run_config("sft", "pi05-tiny", workdir / "ds", flags={"init": str(init)},
                                 model=preset_model("sft", "pi05-tiny"))
        parts, base = build_parts(new, task_for_config(new), make_mesh(1), task_for_config)
        got = traverse_util.flatten_dict(parts_pure_dict(parts))
        assert_same_params({k: np.asarray(v) for k, v in got.items()}, trained)
        assert base["kind"] == ("openpi" if init == exp else "run") and base["fingerprint"]

    # and the imported run exports to the same arrays again
    export_openpi(run2, workdir / "exp2")
    again = openpi_arrays(workdir / "exp2")
    for key, value in openpi_arrays(exp).items():
        np.testing.assert_array_equal(again[key], value, err_msg="/".join(key))


def test_pi06_tiny_sentinels_land_in_the_run_and_come_back(tmp_path: Path) -> None:
    sentinels = sentinel_params(policy_model("pi06-tiny"))
    ckpt = tmp_path / "exp" / "5000"  # openpi's <exp>/<step>/ layout: the step comes from the name
    save_openpi_checkpoint(ckpt, sentinels, norm_stats=norm_stats_doc(), asset_id="trossen", nnx_values=True)

    result = import_openpi(ckpt, tmp_path / "run", preset="pi06-tiny")
    assert (result["stage"], result["step"], result["asset_id"]) == ("finetune", 5000, "trossen")
    assert_same_params(run_params(tmp_path / "run"), sentinels)

    export_openpi(tmp_path / "run", tmp_path / "back")
    assert (tmp_path / "back" / "assets" / "trossen" / "norm_stats.json").is_file()
    back = openpi_arrays(tmp_path / "back")
    assert set(back) == set(as_openpi(sentinels))
    for key, value in as_openpi(sentinels).items():
        np.testing.assert_array_equal(back[key], value, err_msg="/".join(key))


def test_lora_import_keeps_the_base_frozen_and_checked(tmp_path: Path) -> None:
    sentinels = sentinel_params(policy_model("pi05-tiny", LORA_SETS))
    ckpt = tmp_path / "lora_ckpt"
    save_openpi_checkpoint(ckpt, sentinels, norm_stats=norm_stats_doc(), asset_id="arm")

    result = import_openpi(ckpt, tmp_path / "run", preset="pi05-tiny", sets=LORA_SETS)
    assert result["kind"] == "openpi-lora" and result["frozen_params"] > 0
    assert load_run_config(tmp_path / "run" / "config.json").init == str(ckpt.absolute())
    assert_same_params(run_params(tmp_path / "run"), sentinels)  # base re-attached from ckpt + trained part

    merged = export_openpi(tmp_path / "run", tmp_path / "merged", merge_lora=True)
    assert merged["merged_lora"] and not any("lora" in "/".join(k) for k in openpi_arrays(tmp_path / "merged"))

    # the base changed under the run: loading it must refuse, naming the fingerprint
    save_openpi_checkpoint(tmp_path / "other", sentinel_params(policy_model("pi05-tiny", LORA_SETS), offset=7))
    ckpt.rename(tmp_path / "moved")
    (tmp_path / "other").rename(ckpt)
    with pytest.raises(CheckpointError, match="changed since it was saved"):
        run_params(tmp_path / "run")
