"""Settings precedence: default < config file < environment < flag, with provenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from recap_core.errors import ConfigError
from recap_core.settings import resolve_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in ("RECAP_CONFIG", "RECAP_VLM_BUNDLE_DIR", "RECAP_CACHE_DIR", "OPENPI_VLM_CKPT_DIR", "RECAP_WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_defaults_expand_home():
    r = resolve_settings()
    assert r.sources["vlm_bundle_dir"] == "default"
    assert r.settings.vlm_bundle_dir == Path.home() / "Downloads" / "vlm_ckpt"
    assert r.config_file is None


def test_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[recap]\ncache_dir = "/file"\nvlm_bundle_dir = "/file-vlm"\nwandb_mode = "offline"\n')
    monkeypatch.setenv("RECAP_CACHE_DIR", "/env")
    r = resolve_settings(cfg, {"cache_dir": "/flag", "wandb_mode": None})
    assert (r.settings.cache_dir, r.sources["cache_dir"]) == (Path("/flag"), "flag")
    assert (r.settings.vlm_bundle_dir, r.sources["vlm_bundle_dir"]) == (Path("/file-vlm"), "file")
    assert (r.settings.wandb_mode, r.sources["wandb_mode"]) == ("offline", "file")
    r2 = resolve_settings(cfg)
    assert (r2.settings.cache_dir, r2.sources["cache_dir"]) == (Path("/env"), "env")


def test_seed_env_is_fallback_only(monkeypatch):
    monkeypatch.setenv("OPENPI_VLM_CKPT_DIR", "/seed")
    assert resolve_settings().settings.vlm_bundle_dir == Path("/seed")
    monkeypatch.setenv("RECAP_VLM_BUNDLE_DIR", "/ours")
    assert resolve_settings().settings.vlm_bundle_dir == Path("/ours")


def test_user_config_file_location(tmp_path):
    user = tmp_path / "xdg" / "recap" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('runs_dir = "/runs-from-user-file"\n')
    r = resolve_settings()
    assert r.config_file == user and r.sources["runs_dir"] == "file"


def test_bad_values_name_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('wandb_mode = "sometimes"\n')
    with pytest.raises(ConfigError, match="wandb_mode"):
        resolve_settings(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings(tmp_path / "missing.toml")
    cfg.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_settings(cfg)
