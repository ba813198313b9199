"""`recap import openpi`: an openpi checkpoint directory -> a recap run directory.

Output (the training loop's own run layout, so `recap serve`, `--init RUN` and `recap export
openpi` treat it like any finished run):

    <out>/config.json              the resolved run config (stage sft, or finetune for pi0.6 presets)
    <out>/assets/norm_stats.json   the checkpoint's norm stats, byte for byte
    <out>/checkpoints/<step>/      train state built by the loop's `init_train_state`, saved by
                                   `RunCheckpoints`; <step> is the openpi step (its dir name) or 0

The weights go in through the same path as `--init <openpi ckpt>` (`train.init.build_parts`).
A full preset freezes nothing, so every weight lands in the checkpoint and the run is recorded as
self-contained (`init: random`, nothing to re-attach). A LoRA preset keeps its base frozen and
references it the way every LoRA run does: `init` is the openpi checkpoint's path and the base's
fingerprint is checked whenever the run is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recap_core.errors import CheckpointError
from recap_core.fsutil import atomic_output_dir, check_output
from recap_core.rundir import find_run
from recap_core.weights.init_source import published_weights_kind
from recap_core.weights.kinds import check_policy_kind

NORM_STATS = "norm_stats.json"


def checkpoint_root(path: Path) -> Path:
    """An openpi checkpoint dir or its params/ folder -> the checkpoint dir (holding params/, assets/)."""
    path = Path(path).expanduser().absolute()
    if path.name == "params" and not (path / "params").is_dir():
        return path.parent
    return path


def find_norm_stats(root: Path, asset_id: str | None) -> tuple[Path, str | None]:
    """`<root>/assets/<asset_id>/norm_stats.json` (the only one when asset_id is None) and its id."""
    assets = root / "assets"
    if asset_id is not None:
        path = assets / asset_id / NORM_STATS
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist", fix="pass the checkpoint's asset id, or --norm-stats FILE")
        return path, asset_id
    found = sorted(assets.glob(f"*/{NORM_STATS}")) if assets.is_dir() else []
    if not found:
        raise CheckpointError(
            f"{root} has no {assets}/<asset_id>/{NORM_STATS}; a policy needs its norm stats to run",
            fix="pass --norm-stats FILE (e.g. `recap data stats DATASET --output norm_stats.json`)",
        )
    if len(found) > 1:
        ids = [p.parent.name for p in found]
        raise CheckpointError(f"{assets} holds norm stats for several asset ids {ids}",
                              fix=f"choose one with --asset-id (one of {', '.join(ids)}) or pass --norm-stats FILE")
    return found[0], found[0].parent.name


def _openpi_step(root: Path) -> int:
    """openpi saves `<exp>/<step>/params`: the directory name is the step."""
    return int(root.name) if root.name.isdigit() else 0


def _take_action_dim(model: dict[str, Any], leaves: dict) -> str | None:
    """The action width is the checkpoint's (issue 20, item 2): openpi zero-pads actions to
    `action_in_proj`'s input width, so a tiny policy trained on 14-dim data imports without
    `--set model.action_dim=14`. Returns a note when the preset's width changed."""
    found = leaves.get(("action_in_proj", "kernel"))
    if found is None or "action_dim" not in model or len(found.shape) != 2:
        return None
    have, width = int(model["action_dim"]), int(found.shape[0])
    if width == have:
        return None
    model["action_dim"] = width
    return f"model.action_dim {have} -> {width}, as the checkpoint's action_in_proj"


def import_openpi(
    ckpt: Path,
    out: Path,
    *,
    preset: str | None = None,
    norm_stats: Path | None = None,
    asset_id: str | None = None,
    dataset: str | None = None,
    cameras: Sequence[str] | None = None,
    sets: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the run directory `out` from the openpi checkpoint `ckpt`; returns a summary."""
    import jax.numpy as jnp

    from recap_core.config import resolve_run_config
    from recap_core.data.stats import ACTIONS, STATE, load_norm_stats
    from recap_core.train.checkpoint import RunCheckpoints
    from recap_core.train.init import build_parts
    from recap_core.train.jobs import preset_model, task_for_config
    from recap_core.train.sharding import make_mesh, process_info
    from recap_core.train.state import count_params
    from recap_core.train.step import init_train_state
    from recap_core.weights.openpi import OpenpiParams

    root = checkpoint_root(ckpt)
    if not root.exists():
        raise CheckpointError(f"openpi checkpoint {root} does not exist", fix="check the path")
    if find_run(root) is not None:
        raise CheckpointError(f"{root} is already a recap run (it holds config.json)",
                              fix="use it directly (serve, --init, export); nothing to import")
    if published_weights_kind(root) != "openpi":
        raise CheckpointError(f"{root} is not an openpi checkpoint: {root / 'params'} is missing",
                              fix="pass the directory holding params/ and assets/ (e.g. .../pi05_base or <exp>/<step>)")
    check_output(Path(out), overwrite, inputs=(root,))  # say so now, not after building the model
    params = OpenpiParams(root)  # metadata only: damaged or pi0 checkpoints fail here, before any work
    kind = params.kind
    preset = preset or ("pi05-lora" if kind == "openpi-lora" else "pi05")
    stats_file, found_id = (Path(norm_stats).expanduser(), asset_id) if norm_stats else find_norm_stats(root, asset_id)
    stats = load_norm_stats(stats_file)
    for key in (STATE, ACTIONS):
        if key not in stats:
            raise CheckpointError(f"{stats_file} has no norm_stats.{key}",
                                  fix="pass a norm_stats.json with both state and actions (--norm-stats FILE)")
    model = preset_model("finetune", preset)  # any policy preset; the stage follows from it
    note = _take_action_dim(model, params.info)
    stage = "finetune" if model.get("pi06") else "sft"
    step = _openpi_step(root)
    config = resolve_run_config(
        stage, preset, dataset or found_id or root.name,
        flags={"init": str(root), "steps": max(step, 1), "cameras": list(cameras) if cameras else None},
        sets=list(sets), model=model,
    )
    # fail before the model compiles: a LoRA checkpoint needs a LoRA preset (the loader checks it again)
    uses_lora = any("lora" in str(config.model.get(k, "")) for k in ("paligemma_variant", "action_expert_variant"))
    check_policy_kind(kind, model_uses_lora=uses_lora, preset=preset, path=root, allow_missing_lora=True)
    with atomic_output_dir(Path(out), overwrite, inputs=(root,)) as tmp:
        task = task_for_config(config, norm_stats=stats)
        parts, base = build_parts(config, task, make_mesh(config.fsdp_devices), task_for_config)
        if count_params(parts.frozen) == 0:
            config.init = "random"  # every weight is in the checkpoint: the run needs no base
        state = init_train_state(parts, config)
        state["step"] = jnp.asarray(step, state["step"].dtype)
        ckpts = RunCheckpoints(tmp / "checkpoints", config.checkpoint)
        try:
            ckpts.save(step, state, {
                "stage": stage, "preset": preset, "data": None, "base": base,
                "ema": config.ema_decay is not None, "process": process_info(),
                "imported_from": {"format": "openpi", "path": str(root), "kind": kind},
            })
            ckpts.wait()
        finally:
            ckpts.close()
        (tmp / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        (tmp / "assets").mkdir()
        (tmp / "assets" / NORM_STATS).write_bytes(stats_file.read_bytes())
    return {
        "output": str(Path(out).absolute()),
        "checkpoint": str(root),
        "kind": kind,
        "preset": preset,
        "stage": stage,
        "step": step,
        "norm_stats": str(stats_file),
        "asset_id": found_id,
        "trainable_params": count_params(parts.trainable),
        "frozen_params": count_params(parts.frozen),
        "base": "self-contained" if config.init == "random" else config.init,
        "action_dim": config.model.get("action_dim"),
        **({"note": note} if note else {}),
    }
