"""Device memory of a training step before it runs (recap_core.train.memory): XLA's analysis of the
real compiled step, split into params / EMA / optimiser / frozen / batch / temporaries, checked
against the bytes the built train state really holds, the run's own figure, a mesh simulated with
fake CPU devices (`recap doctor --devices --fsdp`), and a device too small for the step."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from recap_core.config import resolve_run_config
from recap_core.data.synthetic import make_dataset
from recap_core.errors import ConfigError, PreflightError
from recap_core.train import estimate, memory
from recap_core.train.jobs import build_job, preset_model
from recap_core.train.loop import train
from recap_core.train.sharding import make_mesh
from recap_core.train.state import init_parts
from recap_core.train.step import init_train_state
from tests.conftest import run_recap
from tests.train.toy import toy_config, toy_job


@pytest.mark.parametrize(("text", "expected"), [
    ("80GB", 80 * 10**9), ("24GiB", 24 * 2**30), ("512 MiB", 512 * 2**20), ("1.5e9", 1_500_000_000), ("40000MB", 4 * 10**10),
])
def test_sizes_parse(text: str, expected: int) -> None:
    assert memory.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-4GB", "0", "12 parsecs", "nan"])
def test_bad_sizes_are_refused_with_the_fix(text: str) -> None:
    with pytest.raises(ConfigError, match="80GB"):
        memory.parse_bytes(text)


def _actual_bytes(tree) -> int:
    """What one device really holds of built arrays."""
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def value_tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """value-tiny at batch 4 on this process's one device: the prediction, and the real train state."""
    root = tmp_path_factory.mktemp("memory")
    config = resolve_run_config("value", "value-tiny", "unused", environ={}, flags={"batch_size": 4},
                                model=preset_model("value", "value-tiny"))
    predicted = estimate.analyse(config)
    ds = make_dataset(root / "ds", episodes=2, frames=6)
    real = config.model_copy(update={"dataset": str(ds)})
    job = build_job(real, root / "run", resuming=False)
    parts = init_parts(job.task, real.seed, make_mesh(1), real.frozen_dtype, real.init_rng)
    state = init_train_state(parts, real)
    return {"predicted": predicted, "state": state, "frozen": parts.frozen}


def test_the_estimate_matches_the_bytes_a_built_train_state_holds(value_tiny: dict) -> None:
    predicted, state = value_tiny["predicted"], value_tiny["state"]
    parts = predicted["parts"]
    assert predicted["analysed"] and predicted["devices"] == 1 and predicted["batch_size"] == 4
    assert parts["params"] == _actual_bytes(state["params"]) > 0
    assert parts["ema"] == _actual_bytes(state["ema"]) == parts["params"]
    assert parts["optimizer"] == _actual_bytes(state["opt_state"])  # Adam: two moments and a count
    assert parts["frozen"] == _actual_bytes(value_tiny["frozen"]) > 100 * parts["params"]
    # XLA's arguments are exactly those pieces (plus the step counter and the RNG key).
    pieces = parts["params"] + parts["ema"] + parts["optimizer"] + parts["frozen"] + parts["batch"]
    assert 0 <= predicted["xla"]["argument"] - pieces <= 64
    assert parts["temporaries"] > parts["batch"] > 0
    assert predicted["peak_bytes"] >= predicted["xla"]["argument"] + parts["temporaries"]


def test_a_device_too_small_for_the_step_stops_the_run_before_it_starts(value_tiny: dict) -> None:
    predicted = value_tiny["predicted"]
    small = memory.verdict(predicted, predicted["peak_bytes"] // 2)
    assert small["fits"] is False and "batch-size" in small["fix"]
    roomy = memory.verdict(predicted, predicted["peak_bytes"] * 2)
    assert roomy["fits"] is True and "fix" not in roomy
    assert memory.verdict(predicted, None)["fits"] is None  # CPU: no verdict without --device-memory


class _Gpu:
    """A device as the run sees it: a platform and the runtime's memory limit."""

    platform = "gpu"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def memory_stats(self) -> dict[str, int]:
        return {"bytes_limit": self.limit}


def test_the_run_checks_its_compiled_step_and_reports_its_peak(tmp_path: Path) -> None:
    config = toy_config(steps=2)
    result = train(toy_job(config), config, tmp_path / "run")
    assert result.step_memory_bytes and result.step_memory_bytes > 0
    # The same check on a device with less memory than the step needs: a PreflightError with the fix.
    job = toy_job(config)
    mesh = make_mesh(1)
    from recap_core.train.init import build_parts
    from recap_core.train.sharding import to_global
    from recap_core.train.step import make_train_step

    parts, _ = build_parts(config, job.task, mesh, job.task_factory)
    state = init_train_state(parts, config)
    inputs = to_global(job.task.make_inputs(next(iter(job.train_data)), np.random.default_rng(0), train=True), mesh)
    compiled = make_train_step(job.task, parts, config).lower(state, parts.frozen, inputs).compile()
    fine = memory.check_step(compiled, state=state, frozen=parts.frozen, inputs=inputs, devices=[_Gpu(2**30)])
    assert fine["fits"] is True and fine["peak_bytes"] == result.step_memory_bytes
    with pytest.raises(PreflightError, match="needs") as err:
        memory.check_step(compiled, state=state, frozen=parts.frozen, inputs=inputs, devices=[_Gpu(1000)])
    assert "batch-size" in err.value.fix


def test_doctor_sizes_a_mesh_this_machine_lacks(value_tiny: dict) -> None:
    """2 fake devices, params sharded over both: each holds about half the frozen base, and a device
    smaller than the step is a failed check (exit 1) with the fix, in one JSON document."""
    one = value_tiny["predicted"]
    proc = run_recap("doctor", "--stage", "value-train", "--preset", "value-tiny", "--batch-size", "4",
                     "--devices", "2", "--fsdp", "2", "--device-memory", "20MB", "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "step_memory")
    details = check["details"]
    assert check["status"] == "fail" and "per device of 19.1 MiB" in check["message"]
    assert details["devices"] == 2 and details["fsdp"] == 2 and details["fits"] is False
    assert details["device_memory_bytes"] == 20 * 10**6 and "fsdp" not in check["fix"]
    assert 0.45 < details["parts"]["frozen"] / one["parts"]["frozen"] < 0.6
    assert details["peak_bytes"] < one["peak_bytes"]


def test_doctor_refuses_memory_flags_for_a_stage_that_trains_nothing() -> None:
    proc = run_recap("doctor", "--stage", "serve", "--batch-size", "4", "--json")
    assert proc.returncode == 2
    assert "value-train" in json.loads(proc.stdout)["fix"]


def test_a_bf16_base_is_not_copied_to_float32_by_the_cpu_compiler(tmp_path: Path, monkeypatch) -> None:
    """On CPU, XLA computes bf16 dots in f32 and would hoist the conversion of every layer's weights
    out of the scan over layers (an f32 copy of the whole frozen base: temporaries ~2.7x the base's
    bytes). The step is compiled with `runtime.compiler_options()`, so the temporaries stay well
    under the base's own bytes."""
    import jax.numpy as jnp

    from recap_core.models import gemma
    from recap_core.models import lora as lora_lib
    from recap_core.models.tokenizer import build_toy_tokenizer
    from recap_core.runtime import compiler_options

    assert compiler_options({"w": jnp.zeros(2, jnp.bfloat16)}) == {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
    assert compiler_options({"w": jnp.zeros(2, jnp.float32)}) == {}  # float32 models keep the pass
    lora = lora_lib.LoRAConfig(4, 4.0)
    monkeypatch.setitem(gemma.VARIANTS, "wide_lora", gemma.GemmaConfig(
        width=512, depth=4, mlp_dim=4096, num_heads=4, num_kv_heads=1, head_dim=64, attn_lora=lora, ffn_lora=lora))
    monkeypatch.setitem(gemma.VARIANTS, "wide_expert_lora", gemma.GemmaConfig(
        width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1, head_dim=64, attn_lora=lora, ffn_lora=lora))
    model = {**preset_model("sft", "pi05-tiny"), "paligemma_variant": "wide_lora",
             "action_expert_variant": "wide_expert_lora", "train_vision": False, "dtype": "bfloat16", "remat": True}
    config = resolve_run_config("sft", "pi05-tiny", "unused", environ={}, model=model, flags={"batch_size": 1},
                                sets=["frozen_dtype=bfloat16", f"tokenizer={build_toy_tokenizer(tmp_path / 'tok.model')}"])
    report = estimate.analyse(config)
    parts = report["parts"]
    assert parts["frozen"] > 50 * 2**20, parts  # the bf16 base: 4 layers of a 512-wide, 4096-MLP Gemma
    assert parts["temporaries"] < parts["frozen"], parts  # measured 39 MB; 151 MB with the f32 copy
