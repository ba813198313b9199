"""Checkpoint bytes per step, from the eval_shape trainable set (no weights are materialised).

A recap checkpoint stores the trainable params, their EMA (when on) and AdamW's two moments, all
in the params' dtype, plus a few scalars; a params-only last step (`--no-keep-optimizer`) drops the
moments. This prints both sizes next to the full param tree (all float32, as the issue counts it)
and the tree as trained (frozen params in the preset's `frozen_dtype`).

    python benchmarks/checkpoint_size.py [--presets value pi06-lora ...]
"""

from __future__ import annotations

import argparse
import json

from recap_core.config import resolve_run_config
from recap_core.train.jobs import preset_model
from recap_core.train.state import abstract_parts, count_bytes, count_params


def task_for(stage: str, preset: str, freeze_mode: str | None):
    from recap_core.models.pi0 import Pi0Config
    from recap_core.models.value import ValueModel, frozen_filter, value_config

    if stage == "value":
        cfg = value_config(preset, freeze=freeze_mode or "all_backbones")

        class _ValueShapes:  # build + freeze only: shapes need no tokenizer or data
            def build_model(self, rngs):
                return ValueModel(cfg, rngs=rngs)

            def frozen_filter(self):
                return frozen_filter(cfg.freeze)

        return _ValueShapes()
    cfg = Pi0Config.from_dict(policy_model(stage, preset))

    class _PolicyShapes:
        def build_model(self, rngs):
            return cfg.create(rngs)

        def frozen_filter(self):
            return cfg.freeze_filter()

    return _PolicyShapes()


def policy_model(stage: str, preset: str) -> dict:
    """The preset's Pi0Config fields; openpi's LoRA variants by name while recap_core.presets is absent."""
    try:
        model = dict(preset_model(stage, preset))
        model.pop("kind")
        return model
    except Exception:
        lora = preset.endswith("-lora")
        return {"pi06": preset.startswith("pi06"),
                "paligemma_variant": "gemma_2b_lora" if lora else "gemma_2b",
                "action_expert_variant": "gemma_300m_lora" if lora else "gemma_300m"}


def measure(stage: str, preset: str, freeze_mode: str | None = None) -> dict:
    model = {"kind": "value", "name": preset} if stage == "value" else {"kind": "pi0", **policy_model(stage, preset)}
    config = resolve_run_config(stage, preset, "-", flags={"freeze_mode": freeze_mode}, environ={}, model=model)
    parts = abstract_parts(task_for(stage, preset, freeze_mode), config.seed)
    trained = abstract_parts(task_for(stage, preset, freeze_mode), config.seed, config.frozen_dtype)
    trainable = count_bytes(parts.trainable)
    ema = 1 if config.ema_decay is not None else 0
    copies = 3 + ema  # params + mu + nu (+ EMA)
    full = trainable + count_bytes(parts.frozen)
    return {
        "stage": stage, "preset": preset, "freeze_mode": config.freeze_mode, "ema": config.ema_decay is not None,
        "trainable_params": count_params(parts.trainable), "frozen_params": count_params(parts.frozen),
        "checkpoint_bytes": trainable * copies, "full_tree_bytes": full,
        "checkpoint_fraction_of_full_tree": trainable * copies / full,
        "params_only_bytes": trainable * (1 + ema), "params_only_fraction_of_full_tree": trainable * (1 + ema) / full,
        "frozen_dtype": config.frozen_dtype, "trained_tree_bytes": trainable + count_bytes(trained.frozen),
        "method": "eval_shape (computed, not written)",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=["value", "pi06-lora", "value-tiny"])
    args = parser.parse_args()
    results = []
    for name in args.presets:
        stage = "value" if name.startswith("value") else ("finetune" if name.startswith("pi06") else "sft")
        try:
            results.append(measure(stage, name, "all_backbones" if stage == "value" else None))
        except Exception as exc:  # report and continue: one missing preset must not hide the others
            results.append({"preset": name, "error": f"{type(exc).__name__}: {exc}"})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
