"""What kind of checkpoint a path is, and whether it fits the preset it is given to.

The seed pipeline's worst trap was serving a LoRA checkpoint with a full config (or the
reverse): openpi then fails deep inside the loader with "the param trees differ". We look at the
stored key names first (metadata only) and say which preset to use instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from recap_core.errors import CheckpointError
from recap_core.stages import is_tiny

CheckpointKind = Literal["openpi-full", "openpi-lora", "openpi-pi0", "recap-run", "bundle", "unknown"]

# pi0 (not pi0.5) top-level modules: the state token and the action/time MLP pi0.5 replaced.
PI0_ONLY_MODULES = ("state_proj", "action_time_mlp_in", "action_time_mlp_out")


def openpi_params_dir(path: Path) -> Path:
    """An openpi checkpoint dir (holding params/) or its params/ folder -> the params/ folder."""
    path = Path(path).expanduser()
    if (path / "params").is_dir():
        return path / "params"
    return path


def classify_openpi_keys(keys: Iterable[tuple[str, ...]]) -> CheckpointKind:
    keys = list(keys)
    if any(k and k[0] in PI0_ONLY_MODULES for k in keys):
        return "openpi-pi0"
    if any("lora" in part for k in keys for part in k):
        return "openpi-lora"
    return "openpi-full"


def other_preset(preset: str, *, lora: bool) -> str:
    """The preset of the same policy with (lora=True) or without LoRA: pi05 <-> pi05-lora."""
    if is_tiny(preset):  # tiny presets have no -lora twin: LoRA is a choice of Gemma variants
        variants = "model.paligemma_variant=dummy_lora --set model.action_expert_variant=dummy_expert_lora"
        return f"{preset} --set {variants}" if lora else f"{preset} without the dummy_*lora variants"
    base = preset.removesuffix("-lora")
    return f"{base}-lora" if lora else base


def check_policy_kind(
    kind: CheckpointKind, *, model_uses_lora: bool, preset: str | None, path: Path, allow_missing_lora: bool
) -> None:
    """A clear error when a checkpoint's kind cannot fill a model built from `preset`."""
    name = preset or "the chosen preset"
    if kind == "openpi-pi0":
        raise CheckpointError(
            f"{path} is an openpi pi0 checkpoint (it has {'/'.join(PI0_ONLY_MODULES)}); recap trains and "
            "serves pi0.5 / pi0.6 policies",
            fix="start from openpi's pi05_base checkpoint (gs://openpi-assets/checkpoints/pi05_base)",
        )
    if kind == "openpi-lora" and not model_uses_lora:
        raise CheckpointError(
            f"{path} is a LoRA checkpoint (it has lora_a / lora_b adapters) but preset {name} has no LoRA",
            fix=f"use --preset {other_preset(preset, lora=True) if preset else 'pi05-lora or pi06-lora'}, "
                "or export the run with `recap export openpi --merge-lora` to get a full checkpoint",
        )
    if kind == "openpi-full" and model_uses_lora and not allow_missing_lora:
        raise CheckpointError(
            f"{path} is a full checkpoint (no LoRA adapters) but preset {name} expects LoRA adapters",
            fix=f"use --preset {other_preset(preset, lora=False) if preset else 'pi05 or pi06'}",
        )
