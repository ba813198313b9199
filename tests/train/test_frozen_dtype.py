"""Frozen params in bfloat16 (`frozen_dtype`, as openpi's trainer casts them), trainable ones, EMA
and optimiser state in float32: the dtype of every leaf after init, a checkpoint, a resume and a
load; and the loss of the real tiny models with a bf16 base against the same weights in f32."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_core.config import load_run_config, resolve_run_config
from recap_core.data.synthetic import make_dataset
from recap_core.train.checkpoint import RunCheckpoints
from recap_core.train.init import load_parts
from recap_core.train.jobs import build_job
from recap_core.train.loop import train
from recap_core.train.sharding import make_mesh
from recap_core.train.state import abstract_parts, cast_floats, count_params, init_fn, init_parts
from recap_core.train.step import abstract_train_state
from tests.conftest import TINY_PI0
from tests.train.toy import ToyTask, toy_config, toy_job


def _dtypes(tree) -> set[str]:
    return {str(x.dtype) for x in jax.tree.leaves(tree)}


def test_defaults_bf16_for_real_presets_f32_for_tiny_and_for_runs_made_before(tmp_path: Path) -> None:
    assert resolve_run_config("finetune", "pi06-lora", "ds", environ={}).frozen_dtype == "bfloat16"
    assert resolve_run_config("value", "value", "ds", environ={}).frozen_dtype == "bfloat16"
    assert resolve_run_config("value", "value-tiny", "ds", environ={}).frozen_dtype == "float32"
    config = resolve_run_config("value", "value-tiny", "ds", environ={}, sets=["frozen_dtype=bfloat16"])
    assert config.frozen_dtype == "bfloat16"
    # A config.json written before the setting existed is read as what that run did: float32.
    old = config.model_dump(mode="json")
    del old["frozen_dtype"]
    import json

    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_run_config(tmp_path / "config.json").frozen_dtype == "float32"


def test_init_rng_rbg_for_real_presets_threefry_for_tiny_and_for_runs_made_before(tmp_path: Path) -> None:
    assert resolve_run_config("finetune", "pi06-lora", "ds", environ={}).init_rng == "rbg"
    assert resolve_run_config("value", "value", "ds", environ={}).init_rng == "rbg"
    tiny = resolve_run_config("value", "value-tiny", "ds", environ={})
    assert tiny.init_rng == "threefry2x32"
    old = tiny.model_dump(mode="json")
    del old["init_rng"]
    import json

    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_run_config(tmp_path / "config.json").init_rng == "threefry2x32"


def test_rbg_init_needs_a_fraction_of_threefrys_temporaries_and_is_reproducible() -> None:
    """Why the real presets initialise with rbg: XLA's analysis of the init itself. Threefry keeps
    its bits and float32 values of every leaf alive; rbg writes each bf16 value in one fused loop."""
    task = ToyTask(hidden=512)

    def temp_bytes(rng: str) -> int:
        compiled = jax.jit(init_fn(task, 0, "bfloat16", rng)).lower().compile()
        return compiled.memory_analysis().temp_size_in_bytes

    frozen_bytes = sum(x.size * 2 for x in jax.tree.leaves(abstract_parts(task, 0, "bfloat16").frozen))
    threefry, rbg = temp_bytes("threefry2x32"), temp_bytes("rbg")
    assert threefry > 2 * frozen_bytes and rbg < threefry / 4, (threefry, rbg, frozen_bytes)
    mesh = make_mesh(1)
    a, b = (init_parts(task, 0, mesh, "bfloat16", "rbg") for _ in range(2))
    c = init_parts(task, 1, mesh, "bfloat16", "rbg")
    for x, y in zip(jax.tree.leaves(a.frozen), jax.tree.leaves(b.frozen), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype == jnp.bfloat16
    kernel = (a.frozen["backbone"]["kernel"].value, c.frozen["backbone"]["kernel"].value)
    assert not np.array_equal(*map(np.asarray, kernel)) and float(jnp.std(kernel[0].astype(jnp.float32))) > 0.01


def test_every_leaf_has_its_dtype_after_init_checkpoint_resume_and_load(tmp_path: Path) -> None:
    config = toy_config(steps=3, frozen_dtype="bfloat16")
    mesh = make_mesh(1)
    parts = init_parts(ToyTask(), config.seed, mesh, config.frozen_dtype, config.init_rng)
    assert _dtypes(parts.frozen) == {"bfloat16"} and _dtypes(parts.trainable) == {"float32"}
    abstract = abstract_parts(ToyTask(), config.seed, config.frozen_dtype, config.init_rng)
    assert _dtypes(abstract.frozen) == {"bfloat16"} and _dtypes(abstract.trainable) == {"float32"}

    train(toy_job(config), config, tmp_path / "run")
    state, _ = RunCheckpoints(tmp_path / "run" / "checkpoints", read_only=True).restore(
        3, abstract_train_state(parts, config))
    assert _dtypes(state["params"]) == _dtypes(state["ema"]) == {"float32"}  # EMA: trainable params only
    assert "bfloat16" not in _dtypes(state["opt_state"])
    # The frozen base is re-attached in bf16, bit-identical to the one it trained with.
    loaded = load_parts(tmp_path / "run", None, mesh, task_factory=lambda c: ToyTask())
    assert _dtypes(loaded.frozen) == {"bfloat16"} and _dtypes(loaded.trainable) == {"float32"}
    for a, b in zip(jax.tree.leaves(parts.frozen), jax.tree.leaves(loaded.frozen), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Resume continues in the same dtypes (the fingerprint of the bf16 base matches).
    longer = toy_config(steps=6, frozen_dtype="bfloat16")
    train(toy_job(longer), longer, tmp_path / "run", resume=True)
    resumed = load_parts(tmp_path / "run", None, mesh, task_factory=lambda c: ToyTask())
    assert _dtypes(resumed.frozen) == {"bfloat16"} and _dtypes(resumed.trainable) == {"float32"}


def test_toy_training_with_a_bf16_base_follows_the_f32_run(tmp_path: Path) -> None:
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = toy_config(steps=20, frozen_dtype=dtype, **{"optim.peak_lr": 3e-2})
        result = train(toy_job(config), config, tmp_path / dtype)
        losses[dtype] = (result.first_loss, result.final_loss)
    (f32_first, f32_final), (bf_first, bf_final) = losses["float32"], losses["bfloat16"]
    assert bf_first == pytest.approx(f32_first, rel=2e-2)
    assert bf_final == pytest.approx(f32_final, rel=5e-2, abs=1e-3)
    assert bf_final < 0.5 * bf_first


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "ds", episodes=2, frames=8, state_dim=6, action_dim=6)


def _tokenizer(root: Path) -> Path:
    from recap_core.models.tokenizer import build_toy_tokenizer

    path = root / "tok.model"
    if not path.exists():
        build_toy_tokenizer(path)
    return path


@pytest.mark.parametrize("stage", ["value", "finetune"])
def test_real_tiny_models_lose_the_same_with_a_bf16_base(stage: str, dataset: Path, tmp_path: Path) -> None:
    """value-tiny (frozen SigLIP + Gemma3) and pi06-tiny with its vision tower frozen: the loss on one
    batch with the base cast to bf16 matches the f32 weights within bf16 precision."""
    flags = {"batch_size": 2}
    if stage == "value":
        config = resolve_run_config("value", "value-tiny", dataset, flags=flags, environ={})
    else:
        config = resolve_run_config("finetune", "pi06-tiny", dataset, flags=flags, environ={},
                                    model={**TINY_PI0, "pi06": True, "train_vision": False},
                                    sets=[f"tokenizer={_tokenizer(tmp_path)}"])
    job = build_job(config, tmp_path / "run", resuming=False)
    parts = init_parts(job.task, config.seed, make_mesh(1))
    assert count_params(parts.frozen) > 0 and count_params(parts.trainable) > 0
    inputs = job.task.make_inputs(next(iter(job.train_data)), np.random.default_rng(0), train=False)
    rng = jax.random.key(0)

    import flax.nnx as nnx

    @jax.jit
    def _loss(frozen):
        return job.task.loss(nnx.merge(parts.graphdef, parts.trainable, frozen), inputs, rng)[0]

    def loss(frozen) -> float:
        return float(_loss(frozen))

    bf16 = cast_floats(parts.frozen, jnp.bfloat16)
    assert _dtypes(bf16) == {"bfloat16"}
    f32_loss, bf16_loss = loss(parts.frozen), loss(bf16)
    assert np.isfinite(bf16_loss)
    assert bf16_loss == pytest.approx(f32_loss, rel=3e-2), (f32_loss, bf16_loss)
    # ... and it is the cast that differs, not a dropped input: the same f32 weights give the same loss.
    assert loss(parts.frozen) == f32_loss
