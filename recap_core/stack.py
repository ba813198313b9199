"""The versions of the stack a run depends on, read from package metadata (nothing is imported).

A run records them in its `config.json` (`versions`); `--resume` and `serve` warn when a run is
continued under other versions, `recap --version` and `recap doctor` show them, next to the versions
this release was tested with (`tested_versions.json`, written from requirements/lock.txt by
scripts/lock.sh and shipped in the package, so an install from a wheel knows them too).
"""

from __future__ import annotations

import json
from importlib import metadata, resources

from recap_core import __version__

STACK = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "lerobot", "torch", "numpy")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def stack_versions() -> dict[str, str | None]:
    """recap's version and each package of `STACK` (None: not installed)."""
    return {"recap": __version__, **{name: installed(name) for name in STACK}}


def tested_versions() -> dict[str, str]:
    """The stack's versions in the lock this release was tested with."""
    text = resources.files("recap_core").joinpath("tested_versions.json").read_text(encoding="utf-8")
    return json.loads(text)["versions"]


def lock_differences(current: dict[str, str | None] | None = None) -> list[str]:
    """'jax 0.10.3 (tested: 0.10.2)' for each stack package whose installed version is not the lock's."""
    current = current if current is not None else stack_versions()
    return [f"{name} {current.get(name) or 'not installed'} (tested: {version})"
            for name, version in tested_versions().items() if current.get(name) != version]


def version_changes(recorded: dict[str, str | None] | None, current: dict[str, str | None] | None = None) -> list[str]:
    """'jax 0.10.2 -> 0.10.3' for each package whose version differs from what a run recorded
    (a run from before versions were recorded has none: no changes)."""
    current = current if current is not None else stack_versions()
    return [f"{name} {recorded[name]} -> {current.get(name)}" for name in recorded or {}
            if name in current and recorded[name] != current.get(name)]
