"""The generic loop on a toy task: learning, freezing, EMA, accumulation, resume, run dirs, init."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from recap_core.config import load_run_config
from recap_core.errors import CheckpointError, OutputExistsError
from recap_core.train.checkpoint import RunCheckpoints
from recap_core.train.init import load_parts
from recap_core.train.loop import train
from recap_core.train.metrics import read_metrics
from recap_core.train.sharding import make_mesh
from recap_core.train.state import abstract_parts
from tests.train.toy import ToyTask, toy_config, toy_job


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def test_trains_to_lower_loss_and_writes_the_run_dir(tmp_path: Path) -> None:
    config = toy_config(steps=40, **{"checkpoint.every": 20, "optim.peak_lr": 3e-2})
    result = train(toy_job(config), config, tmp_path / "run")
    assert result.final_loss < 0.5 * result.first_loss
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["steps"] == 40
    assert (run / "assets" / "norm_stats.json").is_file()
    assert RunCheckpoints(run / "checkpoints", read_only=True).steps() == [20, 40]
    records = read_metrics(run)
    assert {"loss", "lr", "grad_norm", "param_norm", "steps_per_s", "mae"} <= set(records[0])
    assert any(r["split"] == "val" for r in records)


def test_frozen_params_stay_bit_identical_and_only_trainable_params_are_saved(tmp_path: Path) -> None:
    config = toy_config(steps=3)
    train(toy_job(config), config, tmp_path / "run")
    mesh = make_mesh(1)
    fresh = abstract_parts(ToyTask(), config.seed)
    trained = load_parts(tmp_path / "run", None, mesh, task_factory=lambda c: ToyTask())
    from recap_core.train.state import init_parts

    initial = init_parts(ToyTask(), config.seed, mesh, config.frozen_dtype, config.init_rng)
    for a, b in zip(jax.tree.leaves(initial.frozen), jax.tree.leaves(trained.frozen), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(initial.trainable), jax.tree.leaves(trained.trainable), strict=True)
    )
    # The checkpoint holds the head only: no backbone kernel anywhere in it.
    saved = list((tmp_path / "run" / "checkpoints" / "3").rglob("*"))
    assert saved and not any("backbone" in p.read_bytes().decode("latin-1") for p in saved if p.is_file())
    assert set(nnx.to_pure_dict(fresh.trainable)) == {"head"}


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full = toy_config(steps=6)
    train(toy_job(full), full, tmp_path / "full")
    half = toy_config(steps=3)
    train(toy_job(half), half, tmp_path / "split")
    train(toy_job(full), full, tmp_path / "split", resume=True)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


def test_existing_run_dir_is_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    config = toy_config(steps=1)
    train(toy_job(config), config, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(toy_job(config), config, tmp_path / "run")
    result = train(toy_job(config), config, tmp_path / "run", overwrite=True)
    assert result.start_step == 0


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    one = toy_config(steps=2, **{"optim.clip_norm": None})
    two = toy_config(steps=2, grad_accum=2, **{"optim.clip_norm": None})
    train(toy_job(one), one, tmp_path / "one")
    train(toy_job(two), two, tmp_path / "two")
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert abs(a[2] - b[2]) < 1e-5


def test_ema_is_saved_and_can_be_off(tmp_path: Path) -> None:
    on, off = toy_config(steps=3, ema_decay=0.5), toy_config(steps=3, ema_decay=None)
    train(toy_job(on), on, tmp_path / "on")
    train(toy_job(off), off, tmp_path / "off")
    mesh = make_mesh(1)
    ema = load_parts(tmp_path / "on", None, mesh, task_factory=lambda c: ToyTask(), use_ema=True)
    raw = load_parts(tmp_path / "on", None, mesh, task_factory=lambda c: ToyTask(), use_ema=False)
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(ema.trainable)[0]), np.asarray(jax.tree.leaves(raw.trainable)[0])
    )
    assert (tmp_path / "on" / "checkpoints" / "3").is_dir() and (tmp_path / "off" / "checkpoints" / "3").is_dir()


def test_init_from_a_run_and_a_changed_base_is_refused(tmp_path: Path) -> None:
    src = toy_config(steps=3)
    train(toy_job(src), src, tmp_path / "src")
    child = toy_config(steps=3, init=str(tmp_path / "src"))
    result = train(toy_job(child), child, tmp_path / "child")
    assert result.first_loss < _losses(tmp_path / "src")[1]  # starts where the source got to
    # The source run is replaced by a different one: the child's base no longer matches.
    other = toy_config(steps=3, seed=7)
    train(toy_job(other), other, tmp_path / "src", overwrite=True)
    longer = toy_config(steps=6, init=str(tmp_path / "src"))
    with pytest.raises(CheckpointError, match="frozen base"):
        train(toy_job(longer), longer, tmp_path / "child", resume=True)


def test_wrong_kind_of_init_is_refused(tmp_path: Path) -> None:
    src = toy_config("value", steps=1)
    train(toy_job(src), src, tmp_path / "value_run")
    policy = toy_config("finetune", steps=1, init=str(tmp_path / "value_run"))
    with pytest.raises(CheckpointError, match="is a value run"):
        train(toy_job(policy), policy, tmp_path / "policy")
    not_a_run = toy_config("sft", steps=1, init=str(tmp_path))
    with pytest.raises(CheckpointError, match="not a recap run"):
        train(toy_job(not_a_run), not_a_run, tmp_path / "policy2")
    assert not (tmp_path / "policy").exists() or not RunCheckpoints(
        tmp_path / "policy" / "checkpoints", read_only=True
    ).steps()


def test_damaged_checkpoint_files_are_named_as_damaged_not_as_another_preset(tmp_path: Path) -> None:
    config = toy_config(steps=2, **{"checkpoint.every": 1})
    train(toy_job(config), config, tmp_path / "run")
    for blob in (tmp_path / "run" / "checkpoints" / "2" / "state").rglob("d/*"):
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])  # a copy that stopped half-way
    longer = toy_config(steps=3, **{"checkpoint.every": 1})
    with pytest.raises(CheckpointError, match="damaged or incomplete") as err:
        train(toy_job(longer), longer, tmp_path / "run", resume=True)
    assert "steps [1]" in err.value.fix and "preset" not in err.value.fix
    assert len(err.value.message) < 600


class _BrokenSource:
    """A data source whose reads fail (a dataset on a disk that went away)."""

    def __iter__(self):
        raise OSError("input/output error")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(tmp_path: Path) -> None:
    config = toy_config(steps=2, **{"checkpoint.every": 1})
    job = toy_job(config)
    job.train_data = _BrokenSource()
    with pytest.raises(OSError, match="input/output error"):
        train(job, config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    train(toy_job(config), config, tmp_path / "run")  # the retry needs no --overwrite
    # A run with a checkpoint is kept when a later resume fails.
    longer = toy_config(steps=4, **{"checkpoint.every": 1})
    job = toy_job(longer)
    job.train_data = _BrokenSource()
    with pytest.raises(OSError):
        train(job, longer, tmp_path / "run", resume=True)
    assert RunCheckpoints(tmp_path / "run" / "checkpoints", read_only=True).steps() == [1, 2]


def test_runs_work_from_anywhere_and_after_a_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child run keeps working when it and its --init run move together, from a directory that
    holds a *different* runs/src, and refuses a replaced --init run naming both fingerprints."""
    import shutil

    mesh = make_mesh(1)
    factory = lambda c: ToyTask()  # noqa: E731
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    src = toy_config(steps=3)
    train(toy_job(src), src, Path("runs/src"))
    child = toy_config(steps=3, init="runs/src")  # relative, as users type it
    train(toy_job(child), child, Path("runs/child"))
    before = load_parts(Path("runs/child"), None, mesh, task_factory=factory)

    shutil.move(tmp_path / "a" / "runs", tmp_path / "b")
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "c")
    other = toy_config(steps=3, seed=7)
    train(toy_job(other), other, Path("runs/src"))  # someone else's runs/src in the current directory
    moved = load_parts(tmp_path / "b" / "child", None, mesh, task_factory=factory)
    for a, b in zip(jax.tree.leaves(before.frozen), jax.tree.leaves(moved.frozen), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Resuming the moved run works too (with its own config, as `--resume` does).
    longer = load_run_config(tmp_path / "b" / "child" / "config.json").model_copy(update={"steps": 4})
    assert train(toy_job(longer), longer, tmp_path / "b" / "child", resume=True).start_step == 3

    shutil.rmtree(tmp_path / "b" / "src")
    shutil.copytree(Path("runs/src"), tmp_path / "b" / "src")  # a different run under the old name
    with pytest.raises(CheckpointError, match="frozen base") as err:
        load_parts(tmp_path / "b" / "child", None, mesh, task_factory=factory)
    assert err.value.message.count("fingerprint") == 1 and ", found " in err.value.message


def test_a_run_with_nothing_frozen_needs_not_its_init_run(tmp_path: Path) -> None:
    src = toy_config(steps=3)
    train(toy_job(src, freeze_backbone=False), src, tmp_path / "src")
    child = toy_config(steps=3, init=str(tmp_path / "src"))
    train(toy_job(child, freeze_backbone=False), child, tmp_path / "child")
    import shutil

    shutil.rmtree(tmp_path / "src")
    parts = load_parts(tmp_path / "child", None, make_mesh(1), task_factory=lambda c: ToyTask(freeze_backbone=False))
    assert jax.tree.leaves(parts.trainable)


def test_a_params_only_last_step_serves_the_same_weights_and_refuses_to_resume(tmp_path: Path) -> None:
    """--no-keep-optimizer: the last checkpoint holds params + EMA only (smaller), loads to the same
    weights as a full one, and --resume says to start a new run from it instead."""
    full, slim = toy_config(steps=6), toy_config(steps=6, **{"checkpoint.final_optimizer": False})
    train(toy_job(full), full, tmp_path / "full")
    result = train(toy_job(slim), slim, tmp_path / "slim")
    ckpts = RunCheckpoints(tmp_path / "slim" / "checkpoints", read_only=True)
    assert ckpts.read_meta(6)["optimizer"] is False and ckpts.read_meta(3)["optimizer"] is True
    full_bytes = RunCheckpoints(tmp_path / "full" / "checkpoints", read_only=True)
    from recap_core.train.checkpoint import checkpoint_bytes

    assert result.checkpoint_bytes == checkpoint_bytes(tmp_path / "slim" / "checkpoints" / "6")
    assert result.checkpoint_bytes < 0.75 * checkpoint_bytes(tmp_path / "full" / "checkpoints" / "6")
    assert full_bytes.read_meta(6)["optimizer"] is True
    mesh = make_mesh(1)
    a = load_parts(tmp_path / "full", None, mesh, task_factory=lambda c: ToyTask())
    b = load_parts(tmp_path / "slim", None, mesh, task_factory=lambda c: ToyTask())
    for x, y in zip(jax.tree.leaves(a.trainable), jax.tree.leaves(b.trainable), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    longer = toy_config(steps=9, **{"checkpoint.final_optimizer": False})
    with pytest.raises(CheckpointError, match="params-only") as err:
        train(toy_job(longer), longer, tmp_path / "slim", resume=True)
    assert "--init" in err.value.fix
    # ... and a new run from it works.
    again = toy_config(steps=2, init=str(tmp_path / "slim"))
    assert train(toy_job(again), again, tmp_path / "again").final_step == 2
