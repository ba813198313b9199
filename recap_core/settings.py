"""User settings: where the weights, the cache and the logging go.

Resolution order, lowest to highest: built-in default < config file < environment < flag.
The config file is TOML, found at `--config FILE`, else `$RECAP_CONFIG`, else
`$XDG_CONFIG_HOME/recap/config.toml` (default `~/.config/recap/config.toml`). Environment
variables use the prefix `RECAP_` (e.g. `RECAP_VLM_BUNDLE_DIR`). For the VLM bundle the seed
pipeline's `OPENPI_VLM_CKPT_DIR` is honoured too, and `~/Downloads/vlm_ckpt` is only the last
fallback. `resolve_settings` also reports, for every value, where it came from.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from recap_core.errors import ConfigError

Source = Literal["default", "file", "env", "flag"]

SEED_VLM_ENV = "OPENPI_VLM_CKPT_DIR"
SEED_VLM_DEFAULT = Path("~/Downloads/vlm_ckpt")


class Settings(BaseSettings):
    """Everything recap needs to know about this machine."""

    model_config = SettingsConfigDict(env_prefix="RECAP_", extra="forbid")

    vlm_bundle_dir: Path = SEED_VLM_DEFAULT
    """The VLM bundle: gemma-3-270m/ (orbax), siglip2-so400m-patch14-224-jax/, tokenizer.model."""
    pi05_base_dir: Path = Path("~/pi05_base")
    """openpi's pi0.5 base checkpoint (the directory holding params/ and assets/)."""
    paligemma_tokenizer: Path | None = None
    """PaliGemma's sentencepiece model (openpi downloads it as paligemma_tokenizer.model)."""
    cache_dir: Path = Path("~/.cache/recap")
    runs_dir: Path = Path("runs")
    wandb_mode: Literal["disabled", "online", "offline"] = "disabled"
    wandb_project: str = "recap"

    def expanded(self) -> Settings:
        """A copy with `~` expanded in every path."""
        values = {
            k: (Path(os.path.expanduser(v)) if isinstance(v, Path) else v) for k, v in self.model_dump().items()
        }
        return Settings.model_construct(**values)


FIELDS = tuple(Settings.model_fields)


def default_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "recap" / "config.toml"


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    sources: dict[str, Source]
    config_file: Path | None

    def as_dict(self) -> dict[str, Any]:
        dumped = self.settings.model_dump(mode="json")
        return {
            "config_file": str(self.config_file) if self.config_file else None,
            "values": {k: {"value": dumped[k], "source": self.sources[k]} for k in FIELDS},
        }


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML (UTF-8): {exc}", fix="correct the syntax") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}", fix="check the path and its permissions") from exc
    # Accept either top-level keys or a [recap] table.
    data = data.get("recap", data)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: `recap` must be a table of settings, not {type(data).__name__}",
                          fix="write the settings under a [recap] header, e.g. [recap]\nruns_dir = \"runs\"")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}",
            fix=f"use only: {', '.join(FIELDS)}",
        )
    return data


def _read_env() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in FIELDS:
        env = f"RECAP_{name.upper()}"
        if env in os.environ:
            found[name] = os.environ[env]
    if "vlm_bundle_dir" not in found and os.environ.get(SEED_VLM_ENV):
        found["vlm_bundle_dir"] = os.environ[SEED_VLM_ENV]
    return found


def resolve_settings(config_file: Path | None = None, flags: dict[str, Any] | None = None) -> Resolved:
    """Resolve settings from defaults, a config file, the environment and flags, with provenance."""
    if config_file is None and os.environ.get("RECAP_CONFIG"):
        config_file = Path(os.environ["RECAP_CONFIG"])
    explicit = config_file is not None
    path = Path(os.path.expanduser(config_file)) if explicit else default_config_file()
    if explicit and not path.is_file():
        raise ConfigError(f"config file {path} does not exist", fix="pass an existing TOML file to --config")
    layers: list[tuple[Source, dict[str, Any]]] = [
        ("file", _read_file(path) if path.is_file() else {}),
        ("env", _read_env()),
        ("flag", {k: v for k, v in (flags or {}).items() if v is not None}),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, Source] = dict.fromkeys(FIELDS, "default")
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = source
    try:
        # init kwargs only: the environment was already read above, with provenance.
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"setting {key!r} (from {sources.get(key, 'default')}): {first['msg']}",
            fix=f"correct {key} in the config file, RECAP_{key.upper()} or the flag",
        ) from exc
    return Resolved(settings=settings.expanded(), sources=sources, config_file=path if path.is_file() else None)


def get_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    return resolve_settings(config_file, flags).settings
