"""`--init PATH` with published weights: an openpi checkpoint (policies) or the VLM bundle (value).

`train.init.build_parts` asks `published_weights_kind` first; a path that is neither (a recap run,
a typo) goes on to its run-directory handling, which names what it expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from recap_core.errors import CheckpointError
from recap_core.rundir import find_run
from recap_core.weights.kinds import openpi_params_dir
from recap_core.weights.layout import BUNDLE_GEMMA

PublishedKind = Literal["openpi", "bundle"]


def published_weights_kind(path: Path) -> PublishedKind | None:
    """"openpi" / "bundle" from the directory layout alone (no file is parsed), else None.

    Layout, not contents: a damaged openpi checkpoint must still reach its loader, which names the
    broken file, instead of being reported as "not a recap run".
    """
    path = Path(path).expanduser()
    if not path.is_dir() or find_run(path) is not None:
        return None
    if (path / BUNDLE_GEMMA).is_dir():
        return "bundle"
    params = openpi_params_dir(path)
    if params != path or (params / "_METADATA").is_file() or (params / "_CHECKPOINT_METADATA").is_file():
        return "openpi"
    return None


def load_published_weights(
    config: Any, parts: Any, mesh: Any, path: Path, *, family: str
) -> tuple[Any, dict[str, Any]]:
    """Fill a new run's model parts from `path` (kind checked against the run's model family)."""
    kind = published_weights_kind(path)
    if kind == "openpi" and family == "policy":
        from recap_core.weights.pi05_base import load_into_parts

        return load_into_parts(config, parts, mesh, path=Path(path))
    if kind == "bundle" and family == "value":
        from recap_core.weights.vlm_bundle import load_into_parts as load_bundle

        return load_bundle(config, parts, mesh, path=Path(path))
    if kind == "openpi":
        raise CheckpointError(
            f"--init {path} is an openpi policy checkpoint; `{config.stage}` trains the value model",
            fix="start the value model from the VLM bundle (--init base or --init <bundle dir>)",
        )
    if kind == "bundle":
        raise CheckpointError(
            f"--init {path} is the VLM bundle (the value model's backbone); `{config.stage}` trains a policy",
            fix="start a policy from an openpi checkpoint (e.g. pi05_base) or a recap policy run",
        )
    raise CheckpointError(
        f"--init {path} is neither an openpi checkpoint (params/) nor the VLM bundle ({BUNDLE_GEMMA}/)",
        fix="pass an openpi checkpoint directory, the VLM bundle directory, or a recap run",
    )
