"""The stages of the RECAP loop: one table that training, `doctor`, `data inspect`, the CLI and
the docs read (issue 19).

Each stage has one spelling everywhere (`--stage`, `--ready-for`, JSON keys): `sft`, `finetune`,
`value-train`, `value-label`, `serve`. A training run records its trainer in `config.json` as
`stage` (`sft`, `finetune`, `value`: the run's kind, unchanged so old runs load); `for_run` maps it
back. Older spellings (`value_train`, `value_label`) are accepted where a user types a stage.

Adding a stage: one `StageSpec` below, plus the code that is new for it (its trainer or command).
Adding a preset: `recap_core/presets.py` (policies) or `models/value.py` (value models); the
`-tiny` suffix is read by `is_tiny` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recap_core.data.dataset import ACTION, STATE
from recap_core.data.schema import ADV_IND, INTERVENTION, REWARD_LABEL, VALUE_LABEL

Family = Literal["policy", "value"]
Size = Literal["real", "lora", "tiny"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    """The one spelling: `--stage` values, JSON keys, docs."""
    command: str
    """What a user runs, for messages: `recap value train`."""
    columns: tuple[str, ...]
    """Dataset columns the stage reads (the state under its canonical name)."""
    needs_camera: bool
    default_preset: str
    """The preset `recap doctor --stage NAME` assumes when none is given."""
    host_ram_gib: dict[Size, float]
    """Host RAM the stage needs by preset size (benchmarks/RESULTS.md; the seed needed ~25 GiB)."""
    checkpoint_gib: dict[Size, float]
    """Disk one checkpoint needs by preset size (trainable params + EMA + Adam; 0: writes none)."""
    run_stage: str | None = None
    """`stage` in the config.json of a run this stage trains (None: it trains nothing)."""
    family: Family | None = None
    """The kind of model it trains or reads: a run of one family cannot --init the other."""
    bundle: Literal["always", "init-base", "never"] = "never"
    """When it needs the VLM bundle (value model weights and tokenizer)."""
    base_weights: bool = False
    """Whether `--init base` means the pi0.5 base checkpoint."""
    aliases: tuple[str, ...] = field(default=())


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("sft", "recap sft", (STATE, ACTION), True, "pi05",
                  {"real": 16.0, "lora": 12.0, "tiny": 2.0}, {"real": 53.0, "lora": 1.0, "tiny": 0.05},
                  run_stage="sft", family="policy", base_weights=True),
        StageSpec("finetune", "recap finetune", (STATE, ACTION, ADV_IND), True, "pi06",
                  {"real": 16.0, "lora": 12.0, "tiny": 2.0}, {"real": 53.0, "lora": 1.0, "tiny": 0.05},
                  run_stage="finetune", family="policy", base_weights=True),
        StageSpec("value-train", "recap value train", (VALUE_LABEL,), True, "value",
                  {"real": 8.0, "lora": 8.0, "tiny": 2.0}, {"real": 0.2, "lora": 0.2, "tiny": 0.05},
                  run_stage="value", family="value", bundle="init-base", aliases=("value_train", "value")),
        StageSpec("value-label", "recap value label", (REWARD_LABEL, INTERVENTION), False, "value",
                  {"real": 8.0, "lora": 8.0, "tiny": 2.0}, {"real": 0.1, "lora": 0.1, "tiny": 0.05},
                  family="value", bundle="always", aliases=("value_label",)),
        StageSpec("serve", "recap serve", (), False, "pi06",
                  {"real": 12.0, "lora": 12.0, "tiny": 1.0}, {"real": 0.0, "lora": 0.0, "tiny": 0.0},
                  family="policy"),
    )
}
TRAINED = tuple(s for s in STAGES.values() if s.run_stage is not None)
"""The stages that write a training run (sft, finetune, value-train)."""
DATA_STAGES = tuple(s.name for s in STAGES.values() if s.columns)
"""The stages that read a dataset (the keys of `data inspect`'s `ready`)."""


def get_stage(name: str) -> StageSpec:
    """The stage a user named (any accepted spelling); a ConfigError lists the names otherwise."""
    for spec in STAGES.values():
        if name == spec.name or name in spec.aliases:
            return spec
    from recap_core.errors import ConfigError

    raise ConfigError(f"unknown stage {name!r}", fix=f"use one of: {', '.join(STAGES)}")


def for_run(run_stage: str) -> StageSpec:
    """The stage that trains runs whose config.json says `stage: run_stage`."""
    for spec in TRAINED:
        if spec.run_stage == run_stage:
            return spec
    raise KeyError(run_stage)


def is_tiny(preset: str | None) -> bool:
    """The -tiny presets: toy sizes for tests and the demo, with no published weights."""
    return bool(preset) and str(preset).endswith("-tiny")


def preset_size(preset: str | None) -> Size:
    """'tiny', 'lora' or 'real' for a preset name (None: real)."""
    if is_tiny(preset):
        return "tiny"
    return "lora" if preset and "lora" in preset else "real"


def inspect_dataset(root: str | Path) -> dict[str, Any]:
    """`recap data inspect`: what the dataset holds (`data.inspect.describe_dataset`) plus

    ready   {stage: {"ready": bool, "missing": [str], "why": str | null, "fix": str | null}}
            for every stage that reads a dataset (DATA_STAGES): its columns present, a camera where
            it needs one, and for training stages a v3.0 dataset that passes validation; finetune
            also needs adv_ind with at least one positive/negative frame.
    """
    from recap_core.data.inspect import describe_dataset

    report = describe_dataset(root)
    report["ready"] = readiness(report)
    return report


def readiness(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage: ready or not, the missing columns, why, and the command that fixes it."""
    from recap_core.data.dataset import PRODUCED_BY, V30
    from recap_core.data.schema import ADV_NEGATIVE, ADV_POSITIVE

    out: dict[str, dict[str, Any]] = {}
    for name in DATA_STAGES:
        spec = STAGES[name]
        missing = [c for c in spec.columns if c not in report["features"]]
        why: str | None = None
        fix: str | None = None
        counts = report["adv_ind_counts"]
        if missing:
            why = f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            fix = f"add {missing[0]} with: {PRODUCED_BY.get(missing[0], 'the tool that recorded the dataset')}"
        elif spec.needs_camera and not report["cameras"]:
            missing = ["observation.images.*"]
            why = "no camera (video or image feature)"
            fix = "record at least one camera as observation.images.<name>"
        elif ADV_IND in spec.columns and counts is not None and not (counts.get(ADV_POSITIVE) or counts.get(ADV_NEGATIVE)):
            why = "adv_ind is 'none' on every frame, so there is nothing to condition on"
            fix = "label advantages first: recap value label"
        elif report["version"] != V30:
            why = f"the dataset is LeRobot {report['version']}; training reads v3.0"
            fix = f"convert it: recap convert v21-to-v30 {report['root']} {report['root']}_v30"
        elif report["problems"]:
            why = f"the dataset fails validation: {report['problems'][0]}"
            fix = "repair the dataset (see the problem above) and inspect it again"
        out[name] = {"ready": why is None, "missing": missing, "why": why, "fix": fix}
    return out


def preset_fit(report: dict[str, Any], preset: str) -> dict[str, Any]:
    """Does a dataset (`inspect_dataset`'s report) fit a preset's model? Before a run starts:

    problems  what would stop the run (actions wider than published weights allow, more cameras than
              the model has image slots), each with its fix;
    notes     what the run will decide from the data (a random-init policy widening `action_dim`).
    """
    from recap_core.presets import get_preset

    spec = get_preset(preset)
    problems: list[dict[str, str]] = []
    notes: list[str] = []
    if spec.kind == "policy":
        model = spec.model
        have, need = int(model.action_dim), int(report.get("action_dim") or 0)
        if need > have and is_tiny(preset):
            notes.append(f"actions have {need} dims, {preset} has {have}: a --init random run widens "
                         f"model.action_dim to {need}")
        elif need > have:
            problems.append({"problem": f"actions have {need} dims, more than the {have} of {preset} "
                             "(its published weights fix the width)",
                             "fix": "drop action dims the robot does not use, or train a -tiny preset with --init random"})
        cams, slots = list(report.get("cameras") or []), len(model.image_keys)
        if len(cams) > slots:
            problems.append({"problem": f"{len(cams)} cameras ({', '.join(cams)}), {preset} has {slots} image slots",
                             "fix": f"train on {slots} of them: --cameras {' --cameras '.join(cams[:slots])}"})
    return {"preset": preset, "kind": spec.kind, "fits": not problems, "problems": problems, "notes": notes}
