"""`--init base` for the value model: the VLM bundle's Gemma3 + SigLIP2 into a run's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recap_core.weights.bundle import load_value_bundle, resolve_bundle
from recap_core.weights.parts import fill_parts, parts_pure_dict


def load_into_parts(config: Any, parts: Any, mesh: Any, path: Path | None = None, *,
                    use_ema: bool = False) -> tuple[Any, dict[str, Any]]:
    """Fill `parts` from the bundle (`path`, else settings.vlm_bundle_dir); heads keep their init."""
    del mesh, config  # the shardings come from the parts; the bundle fits every value preset of its size
    paths = resolve_bundle(path, need_tokenizer=False)
    loaded = load_value_bundle(paths.root, parts_pure_dict(parts), use_ema=use_ema)
    return fill_parts(parts, loaded), {
        "kind": "vlm_bundle", "path": str(paths.root.absolute()), "item": "ema_params" if use_ema else "params"}
