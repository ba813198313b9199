"""Named model configs: one lookup for every table of presets (SigLIP, Gemma, Gemma3, value)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from recap_core.errors import ConfigError

C = TypeVar("C")


def named_config(table: Mapping[str, C], name: str, what: str, fix: str, **overrides: Any) -> C:
    """`table[name]` with dataclass field `overrides`; an unknown name lists the known ones."""
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; expected one of {sorted(table)}", fix=fix)
    return dataclasses.replace(table[name], **overrides) if overrides else table[name]
