"""`--init base` (and `--init <openpi checkpoint>`) for policies: openpi params into a run's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recap_core.weights.openpi import load_policy_params
from recap_core.weights.parts import fill_parts, parts_pure_dict


def load_into_parts(config: Any, parts: Any, mesh: Any, path: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Fill `parts` (a train.state.ModelParts) from an openpi params checkpoint.

    `path` defaults to settings.pi05_base_dir (RECAP_PI05_BASE_DIR). Each array lands on the
    sharding and dtype the part already has; LoRA adapters the checkpoint lacks keep their init.
    """
    if path is None:
        from recap_core.settings import get_settings

        path = get_settings().pi05_base_dir
    del mesh  # the shardings come from the parts themselves
    loaded = load_policy_params(Path(path), parts_pure_dict(parts), preset=config.preset)
    return fill_parts(parts, loaded), {"kind": "openpi", "path": str(Path(path).absolute())}
