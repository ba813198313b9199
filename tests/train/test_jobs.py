"""`build_job` with the real loader: the train/val episode split, val metrics, a self-contained run dir."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from recap_core.config import resolve_run_config
from recap_core.data.synthetic import make_dataset
from recap_core.errors import TokenizerError
from recap_core.train.jobs import build_job, tokenizer_path, val_batch_size
from recap_core.train.loop import train
from recap_core.train.metrics import read_metrics
from recap_core.train.validation import per_episode_value_metrics, split_episodes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("val") / "ds", episodes=4, frames=8, cameras=("cam_high",))


def _value_config(dataset: Path, **flags: object):
    base = {"steps": 4, "batch_size": 4, "log_every": 1, "checkpoint.every": 4, "checkpoint.async_save": False,
            "val.every": 2, "val.fraction": 0.5, "val.max_batches": 2}
    base.update(flags)
    return resolve_run_config("value", "value-tiny", dataset, flags=base, environ={})


def test_train_and_val_loaders_split_by_episode(dataset: Path, tmp_path: Path) -> None:
    config = _value_config(dataset)
    train_eps, val_eps = split_episodes([0, 1, 2, 3], 0.5, config.seed)
    assert len(val_eps) == 2
    job = build_job(config, tmp_path / "run", resuming=False)
    seen_train = {int(e) for b in itertools.islice(iter(job.train_data), 8) for e in b["episode_index"]}
    assert seen_train == set(train_eps)
    assert job.val_batches is not None
    for _ in range(2):  # every validation pass starts from the first held-out batch again
        val = list(job.val_batches())
        assert len(val) == 4 and {int(e) for b in val for e in b["episode_index"]} == set(val_eps)


@pytest.fixture(scope="module")
def value_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 4-step value-tiny run validating every 2 steps: (run dir, the TrainResult's val metrics)."""
    run = tmp_path_factory.mktemp("value") / "run"
    config = _value_config(dataset)
    result = train(build_job(config, run, resuming=False), config, run)
    return run, result.val


def test_value_run_writes_val_metrics(value_run: tuple[Path, dict]) -> None:
    run, result_val = value_run
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    for record in val:
        assert record["batches"] == 2.0  # val.max_batches of the 4 held-out batches
        assert math.isfinite(record["loss"]) and math.isfinite(record["value_mae"])
        assert record["value_mae"] >= 0 and -1 <= record["value_rank_corr_per_episode"] <= 1
        assert record["episodes"] >= 1 and 0 <= record["bin_accuracy"] <= 1
    assert result_val == {k: v for k, v in val[-1].items() if k not in ("step", "split", "time")}


def test_run_stores_its_tokenizer_and_uses_it_later(value_run: tuple[Path, dict], tmp_path: Path) -> None:
    from recap_core.config import load_run_config
    from recap_core.label.model import value_task_factory

    run, _ = value_run
    config = load_run_config(run / "config.json")
    stored = run / "assets" / "tokenizer.model"
    original = tokenizer_path(config)  # the toy tokenizer of the -tiny preset, in the cache
    assert stored.read_bytes() == original.read_bytes()
    assert tokenizer_path(config, run) == stored
    # Labelling and resuming read the run's copy, whatever the config or the cache say now.
    gone = config.model_copy(update={"tokenizer": str(tmp_path / "gone.model")})
    task = value_task_factory(("observation.images.cam_high",), run)(gone)
    assert task.tokenizer.path == stored and task.cameras == ("cam_high",)
    assert build_job(gone, run, resuming=True).task.tokenizer.path == stored
    with pytest.raises(TokenizerError, match=r"gone\.model"):
        value_task_factory(("observation.images.cam_high",))(gone)


def test_no_validation_when_nothing_is_held_out(dataset: Path, tmp_path: Path) -> None:
    job = build_job(_value_config(dataset, **{"val.fraction": 0.0}), tmp_path / "run", resuming=False)
    assert job.val_batches is None
    assert {int(e) for b in itertools.islice(iter(job.train_data), 8) for e in b["episode_index"]} == {0, 1, 2, 3}


def test_val_batch_shrinks_to_a_small_held_out_set() -> None:
    config = resolve_run_config("value", "value-tiny", "unused", flags={"batch_size": 32}, environ={})
    assert val_batch_size(config, 100) == 32
    assert val_batch_size(config, 20) == 20  # one CPU device
    assert val_batch_size(config, 0) == 0


def test_value_metrics_by_hand() -> None:
    pred = np.array([-0.9, -0.5, -0.1, -0.2, -0.8])
    target = np.array([-1.0, -0.6, 0.0, -0.1, -0.7])
    got = per_episode_value_metrics(pred, target, np.array([0, 0, 0, 1, 1]))
    assert got["value_mae"] == pytest.approx(0.1)
    assert got["value_rank_corr_per_episode"] == pytest.approx(1.0)
    assert got["episodes"] == 2.0


def test_success_only_trains_and_validates_on_successful_episodes(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "mixed", episodes=6, frames=8, cameras=("cam_high",),
                      success=[True, False, True, False, True, True])
    config = _value_config(ds, **{"data.success_only": True, "val.fraction": 0.25})
    job = build_job(config, tmp_path / "run", resuming=False)
    seen = {int(e) for b in itertools.islice(iter(job.train_data), 12) for e in b["episode_index"]}
    held_out = {int(e) for b in job.val_batches() for e in b["episode_index"]} if job.val_batches else set()
    assert seen | held_out == {0, 2, 4, 5} and not seen & held_out


def test_success_only_with_no_successful_episode_is_refused(tmp_path: Path) -> None:
    from recap_core.errors import ConfigError

    ds = make_dataset(tmp_path / "failed", episodes=2, frames=8, cameras=("cam_high",), success=[False, False])
    with pytest.raises(ConfigError, match=r"no episode .* succeeded"):
        build_job(_value_config(ds, **{"data.success_only": True}), tmp_path / "run", resuming=False)


def test_the_action_width_comes_from_the_data_or_the_init_run(tmp_path: Path) -> None:
    """Issue 20 item 2: 14-dim ALOHA data trains a -tiny preset (width 8) without --set; a run made
    from another takes that run's width; weights that fix the width refuse wider data at once."""
    import json

    from recap_core.data.dataset import open_dataset
    from recap_core.errors import ConfigError
    from recap_core.train.jobs import fit_action_dim, preset_model

    info = open_dataset(make_dataset(tmp_path / "ds14", episodes=2, frames=4, cameras=("cam_high",)))
    assert info.action_dim == 14

    def config(stage: str, preset: str, init: str, sets: tuple[str, ...] = ()):
        return resolve_run_config(stage, preset, info.root, flags={"init": init}, environ={}, sets=list(sets),
                                  model=preset_model(stage, preset))

    fresh = config("sft", "pi05-tiny", "random")
    assert fresh.model["action_dim"] == 8
    assert fit_action_dim(fresh, info) == "model.action_dim 8 -> 14: the dataset's actions are 14-dimensional"
    assert fresh.model["action_dim"] == 14
    wide = config("sft", "pi05-tiny", "random", ("model.action_dim=20",))
    assert fit_action_dim(wide, info) is None and wide.model["action_dim"] == 20  # covers the data: kept

    # --init RUN: the run's width, whatever the preset says; data wider than the run: refused.
    run = tmp_path / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(fresh.model_dump(mode="json")))
    child = config("finetune", "pi06-tiny", str(run))
    assert fit_action_dim(child, info) == "model.action_dim 14, as the --init run" and child.model["action_dim"] == 14
    narrow = fresh.model_copy(deep=True)
    narrow.model["action_dim"] = 10
    (run / "config.json").write_text(json.dumps(narrow.model_dump(mode="json")))
    with pytest.raises(ConfigError, match=r"actions have 14 dims, the --init run .* was trained for 10"):
        fit_action_dim(config("finetune", "pi06-tiny", str(run)), info)

    # Published weights fix the width: a real preset (32) covers 14; a 40-dim dataset is refused.
    real = config("sft", "pi05", "base")
    assert fit_action_dim(real, info) is None and real.model["action_dim"] == 32
    info40 = open_dataset(make_dataset(tmp_path / "ds40", episodes=2, frames=4, cameras=("cam_high",),
                                       state_dim=40, action_dim=40))
    with pytest.raises(ConfigError, match="more than the 32 of preset pi05 with --init base") as err:
        fit_action_dim(config("sft", "pi05", "base"), info40)
    assert "--init random" in err.value.fix
    assert fit_action_dim(config("value", "value-tiny", "random"), info) is None


def test_value_run_evaluates_training_episodes_too(value_run: tuple[Path, dict]) -> None:
    """Issue 26 item 2: the same evaluation on training episodes, for the train-vs-held-out gap."""
    from recap_core.train.validation import fit_verdict

    run, _ = value_run
    records = read_metrics(run)
    val = [r for r in records if r["split"] == "val"]
    seen = [r for r in records if r["split"] == "train_eval"]
    assert [r["step"] for r in seen] == [r["step"] for r in val] == [2, 4]
    assert all(math.isfinite(r["loss"]) and r["batches"] >= 1 for r in seen)
    verdict = fit_verdict(val[-1], seen[-1])
    assert verdict["val_loss"] == val[-1]["loss"] and verdict["train_loss"] == seen[-1]["loss"]
    assert (verdict["val_bin_accuracy"], verdict["train_bin_accuracy"]) == (val[-1]["bin_accuracy"],
                                                                            seen[-1]["bin_accuracy"])


def test_bin_accuracy_counts_the_bin_nearest_each_label() -> None:
    from recap_core.models.value import value_config
    from recap_core.train.value_task import bin_accuracy

    config = value_config("value-tiny")  # 201 bins on [-1, 0]: bin k holds -1 + k / 200
    labels = np.array([-1.0, -0.5, -0.5024, 0.0, 0.3, -1.7])  # the last two are clipped to the support
    assert bin_accuracy(np.array([0, 100, 100, 200, 200, 0]), labels, config) == 1.0
    assert bin_accuracy(np.array([1, 100, 99, 200, 199, 0]), labels, config) == pytest.approx(3 / 6)


def test_fit_verdict_flags_a_memorising_model_and_not_a_fitting_one() -> None:
    from recap_core.train.validation import fit_verdict

    fine = fit_verdict({"loss": 2.1, "value_rank_corr_per_episode": 0.8}, {"loss": 2.0, "value_rank_corr_per_episode": 0.85})
    assert fine["overfit"] is False and "message" not in fine
    by_loss = fit_verdict({"loss": 3.2}, {"loss": 1.1})
    assert by_loss["overfit"] and "2.9x" in by_loss["message"] and "--freeze-mode" in by_loss["fix"]
    by_rank = fit_verdict({"loss": 2.0, "value_rank_corr_per_episode": 0.1}, {"loss": 1.9, "value_rank_corr_per_episode": 0.9})
    assert by_rank["overfit"] and "Spearman 0.10 held out vs 0.90" in by_rank["message"]
    tiny = fit_verdict({"loss": 0.03}, {"loss": 0.01})  # 3x, but a few hundredths: noise, not a gap
    assert tiny["overfit"] is False
    few = fit_verdict({"loss": 2.0, "value_rank_corr_per_episode": -0.4, "episodes": 2.0},
                      {"loss": 2.0, "value_rank_corr_per_episode": 0.3, "episodes": 12.0})
    assert few["overfit"] is False and "rank_corr_gap" not in few  # 2 held-out episodes: too few to judge
    many = fit_verdict({"loss": 2.0, "value_rank_corr_per_episode": -0.4, "episodes": 3.0},
                       {"loss": 2.0, "value_rank_corr_per_episode": 0.3, "episodes": 12.0})
    assert many["overfit"] and many["rank_corr_gap"] == pytest.approx(0.7)


def test_keep_best_keeps_the_best_ranked_step_and_value_label_uses_it(dataset: Path, tmp_path: Path) -> None:
    """--keep-best (issue 26): every validation that ranks held-out frames better than before saves
    its step and names it in best.json; orbax keeps that step beside the latest and drops the
    superseded ones; `value label --checkpoint RUN` resolves to it (a named step still wins)."""
    import json

    from recap_core.label.checkpoint import resolve_value_checkpoint

    run = tmp_path / "run"
    config = _value_config(dataset, **{"val.every": 1, "steps": 6, "checkpoint.every": 100,
                                       "checkpoint.keep_best": True, "optim.peak_lr": 3e-3})
    result = train(build_job(config, run, resuming=False), config, run)
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    ranks = [r["value_rank_corr_per_episode"] for r in val]
    best_step = val[int(np.argmax(ranks))]["step"]  # the first of equal bests: later ties do not replace it
    assert json.loads((run / "best.json").read_text()) == {
        "step": best_step, "metric": "value_rank_corr_per_episode", "value": max(ranks)}
    assert result.best_step == best_step
    kept = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == sorted({best_step, 6})
    chosen = resolve_value_checkpoint(run)
    assert (chosen.step, chosen.chosen) == (best_step, "best")
    named = resolve_value_checkpoint(run / "checkpoints" / "6")
    assert (named.step, named.chosen) == (6, "named")


def test_keep_best_preserves_the_best_ranked_and_the_latest_steps_only(tmp_path: Path) -> None:
    """Orbax's preservation policies as `keep_best` sets them: the best-ranked step survives later
    saves, a superseded best and unranked older steps go, every keep_every-th stays."""
    import jax.numpy as jnp

    from recap_core.config import CheckpointConfig
    from recap_core.train.checkpoint import BEST_METRIC, RunCheckpoints

    ckpts = RunCheckpoints(tmp_path / "ckpts", CheckpointConfig(keep_last=1, keep_every=4, async_save=False,
                                                                 keep_best=True))
    ranks = {1: 0.2, 2: 0.6, 3: None, 5: 0.4, 6: None, 7: None}
    for step, rank in ranks.items():
        ckpts.save(step, {"w": jnp.full((2,), float(step))}, {}, metrics=None if rank is None else {BEST_METRIC: rank})
    ckpts.wait()
    assert ckpts.steps() == [2, 7]  # 2: best rank; 7: latest; 1 and 5 ranked lower, 3 and 6 unranked
    ckpts.save(8, {"w": jnp.zeros((2,))}, {})
    ckpts.wait()
    assert ckpts.steps() == [2, 8]  # 8 is the latest and a multiple of keep_every
    ckpts.save(9, {"w": jnp.zeros((2,))}, {})
    ckpts.wait()
    assert ckpts.steps() == [2, 8, 9]
    ckpts.close()


def test_a_value_model_that_memorises_its_one_training_episode_is_flagged(tmp_path: Path) -> None:
    """Deliberate overfitting (issue 26): one training episode, one held out, 150 steps with every
    weight trainable. The run's fit verdict says so, with the fix, and the training episode's bins
    are hit far more often than the held-out one's."""
    ds = make_dataset(tmp_path / "ds", episodes=2, frames=16, cameras=("cam_high",))
    config = _value_config(ds, **{"steps": 150, "log_every": 50, "checkpoint.every": 1000, "val.every": 150,
                                  "val.max_batches": 4, "freeze_mode": "none", "optim.peak_lr": 3e-3,
                                  "optim.warmup_steps": 5})
    fit = train(build_job(config, tmp_path / "run", resuming=False), config, tmp_path / "run").fit
    assert fit["overfit"] is True and fit["loss_ratio"] >= 1.5
    assert "held-out loss" in fit["message"] and "--freeze-mode all_backbones" in fit["fix"]
    assert fit["train_bin_accuracy"] > fit["val_bin_accuracy"] + 0.2


def test_a_value_model_that_fits_without_memorising_is_not_flagged(tmp_path: Path) -> None:
    """The other half of the acceptance (issue 26): the same tiny model with its backbones frozen, on
    eight episodes with half held out, learns the head for as many steps, and its verdict stays quiet."""
    ds = make_dataset(tmp_path / "ds", episodes=8, frames=16, cameras=("cam_high",))
    config = _value_config(ds, **{"steps": 150, "log_every": 50, "checkpoint.every": 1000, "val.every": 150,
                                  "val.max_batches": 4, "freeze_mode": "all_backbones", "optim.peak_lr": 3e-3,
                                  "optim.warmup_steps": 5})
    result = train(build_job(config, tmp_path / "run", resuming=False), config, tmp_path / "run")
    fit = result.fit
    assert fit["overfit"] is False and "message" not in fit, fit
    assert fit["loss_ratio"] < 1.5 and fit["val_loss"] < result.first_loss, (fit, result.first_loss)
