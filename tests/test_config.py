"""Run-config resolution: defaults < file < env < flags, and clear errors for bad keys/values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recap_core.config import load_run_config, parse_sets, resolve_run_config
from recap_core.errors import ConfigError


def test_defaults_are_openpis() -> None:
    cfg = resolve_run_config("sft", "pi05", "/data/ds", environ={})
    assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.eps, cfg.optim.weight_decay) == (0.9, 0.95, 1e-8, 1e-10)
    assert (cfg.optim.peak_lr, cfg.optim.end_lr, cfg.optim.clip_norm) == (2.5e-5, 2.5e-6, 1.0)
    assert (cfg.steps, cfg.warmup_steps, cfg.decay_steps, cfg.ema_decay) == (30_000, 1000, 30_000, 0.99)


def test_stage_and_preset_defaults() -> None:
    assert resolve_run_config("finetune", "pi06-lora", "d", environ={}).ema_decay is None
    assert resolve_run_config("value", "value", "d", environ={}).freeze_mode == "all_backbones"
    tiny = resolve_run_config("sft", "pi05-tiny", "d", environ={})
    assert tiny.steps < 1000 and tiny.warmup_steps == tiny.steps // 10


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("steps = 10\nbatch_size = 4\nseed = 1\n[optim]\npeak_lr = 1e-4\nb2 = 0.9\n")
    env = {"RECAP_RUN__BATCH_SIZE": "6", "RECAP_RUN__OPTIM__PEAK_LR": "2e-4", "RECAP_RUN__SEED": "2"}
    cfg = resolve_run_config(
        "sft", "pi05", "d", config_file=toml, environ=env, flags={"seed": 3}, sets=["optim.b2=0.99"]
    )
    assert cfg.steps == 10  # file over default
    assert cfg.batch_size == 6  # env over file
    assert cfg.optim.peak_lr == 2e-4  # env over file
    assert cfg.seed == 3  # flag over env
    assert cfg.optim.b2 == 0.99  # --set over file
    assert cfg.optim.b1 == 0.9  # untouched default


def test_set_parses_types_and_none() -> None:
    tree = parse_sets(["ema_decay=none", "optim.peak_lr=1e-5", "checkpoint.async_save=false", "init=random"])
    assert tree == {"ema_decay": None, "optim": {"peak_lr": 1e-5}, "checkpoint": {"async_save": False}, "init": "random"}


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["optim.peak_rate=1"], "unknown run-config key 'optim.peak_rate'"),
        (["peak_lr=1e-5"], "did you mean optim.peak_lr"),
        (["steps"], "not KEY=VALUE"),
        (["steps=-3"], "steps"),
        (["batch_size=5", "grad_accum=2"], "not divisible by grad_accum"),
    ],
)
def test_bad_overrides_name_the_key(sets: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        resolve_run_config("sft", "pi05", "d", sets=sets, environ={})
    assert info.value.fix


def test_bad_env_and_file_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECAP_RUN__OPTIM__NOPE"):
        resolve_run_config("sft", "pi05", "d", environ={"RECAP_RUN__OPTIM__NOPE": "1"})
    bad = tmp_path / "run.toml"
    bad.write_text("[optim\n")
    with pytest.raises(ConfigError, match=str(bad)):
        resolve_run_config("sft", "pi05", "d", config_file=bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_run_config("sft", "pi05", "d", config_file=tmp_path / "missing.toml", environ={})


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = resolve_run_config("value", "value-tiny", "d", sets=["optim.peak_lr=3e-4"], environ={})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert load_run_config(path) == cfg
    # A previous run's config.json also works as --config.
    again = resolve_run_config("value", "value-tiny", "d", config_file=path, environ={})
    assert again.optim.peak_lr == 3e-4
