"""`recap export openpi`: a recap policy run -> an openpi checkpoint directory.

Output (openpi's released-checkpoint layout, so openpi's `create_trained_policy` loads it):

    <out>/params/                            orbax PyTree {"params": <openpi tree>}
    <out>/assets/<asset_id>/norm_stats.json  {"norm_stats": {"state": ..., "actions": ...}}

The run's EMA weights are exported when it has them (openpi's params/ holds EMA too). A LoRA run
is exported with its adapters (load it in openpi with the matching *_lora config), or with
`merge_lora` folded into the base weights, which any full pi0.5 config loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flax import traverse_util

from recap_core.errors import CheckpointError
from recap_core.fsutil import atomic_output_dir
from recap_core.rundir import NORM_STATS, find_run
from recap_core.weights.openpi import save_openpi_checkpoint


def export_openpi(
    run_or_ckpt: Path,
    out: Path,
    *,
    merge_lora: bool = False,
    asset_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `out` from a recap policy run (its dir, `checkpoints/` or `checkpoints/<step>`)."""
    from recap_core.config import load_run_config
    from recap_core.train.init import POLICY_STAGES, load_parts
    from recap_core.train.jobs import task_for_config
    from recap_core.train.sharding import make_mesh
    from recap_core.weights.lora_merge import merge_lora as fold
    from recap_core.weights.parts import parts_pure_dict

    run_or_ckpt = Path(run_or_ckpt).expanduser()
    run = find_run(run_or_ckpt)
    if run is None:
        raise CheckpointError(
            f"{run_or_ckpt} is not a recap run (no config.json there or two levels up)",
            fix="pass the --run-dir of `recap sft` / `recap finetune`, or one of its checkpoints/<step>",
        )
    run_dir = run.dir
    step = run.resolved_step()  # reported, and pinned so the export says which step it holds
    config = load_run_config(run_dir / "config.json")
    if config.stage not in POLICY_STAGES:
        raise CheckpointError(f"{run_dir} is a `{config.stage}` run; only policies export to openpi",
                              fix="pass a run of `recap sft` or `recap finetune`")
    stats_path = run.dir / NORM_STATS
    if run.norm_stats is None:
        raise CheckpointError(f"{stats_path} is missing; openpi needs the norm stats next to the params",
                              fix="restore the run's assets/ folder (training writes it)")
    norm_stats = json.loads(stats_path.read_text())
    asset_id = asset_id or Path(config.dataset).name
    with atomic_output_dir(Path(out), overwrite, inputs=(run_dir,)) as tmp:
        task = task_for_config(config)
        parts = load_parts(run_dir, step, make_mesh(1), task_factory=task_for_config, use_ema=True)
        flat = traverse_util.flatten_dict(parts_pure_dict(parts))
        has_lora = any("lora" in p for k in flat for p in k)
        merged = merge_lora and has_lora
        if merged:
            model_config = task.model_config
            flat = fold(flat, [model_config.prefix_config, model_config.expert_config])
        save_openpi_checkpoint(tmp, flat, norm_stats=norm_stats, asset_id=asset_id)
    return {
        "output": str(Path(out).absolute()),
        "run_dir": str(run_dir),
        "step": step,
        "asset_id": asset_id,
        "lora": has_lora and not merged,
        "merged_lora": merged,
        "params": len(flat),
    }
