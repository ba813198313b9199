"""Small, atomic, resumable checkpoints with orbax `CheckpointManager`.

Each `<run>/checkpoints/<step>/` holds two items:
- `state`: the train state pytree (trainable params, EMA, optimiser state, step, rng); a run's last
  step may be written without the optimiser state (`meta.optimizer` false: for serving and export,
  not resumable);
- `meta`:  JSON (format, stage, preset, step, data position, the frozen base's identity).
Frozen params are never written: `meta.base` records where they came from and their
fingerprint, and loading checks the re-attached base against it. Orbax writes each step into
a temporary directory and renames it when complete, so a crash mid-save leaves the previous
step as the latest loadable one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from recap_core.config import CheckpointConfig
from recap_core.errors import CheckpointError

FORMAT = "recap-train-state/1"
BEST_METRIC = "value_rank_corr_per_episode"
"""What `keep_best` ranks steps by: the held-out per-episode Spearman of predicted value vs value_label."""


class RunCheckpoints:
    """The checkpoints of one run directory."""

    def __init__(self, directory: Path, config: CheckpointConfig | None = None, *, read_only: bool = False):
        config = config or CheckpointConfig()
        self.directory = Path(directory).absolute()
        keep: dict[str, Any] = {"max_to_keep": config.keep_last, "keep_period": config.keep_every}
        if config.keep_best:
            # Orbax's preservation policies: the latest, every keep_every-th, and the best-ranked step.
            policies = [ocp.checkpoint_managers.LatestN(config.keep_last),
                        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                                      keep_checkpoints_without_metrics=False)]
            if config.keep_every:
                policies.append(ocp.checkpoint_managers.EveryNSteps(config.keep_every))
            keep = {"preservation_policy": ocp.checkpoint_managers.AnyPreservationPolicy(policies)}
        options = ocp.CheckpointManagerOptions(
            **keep,
            enable_async_checkpointing=config.async_save and not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any], *, optimizer: bool = True,
             metrics: dict[str, float] | None = None) -> None:
        """Save `state` at `step`; `optimizer=False` leaves out the optimiser state (params-only).
        `metrics` (the validation at this step) rank it for `keep_best`."""
        if not optimizer:
            state = {k: v for k, v in state.items() if k != "opt_state"}
        meta = {"format": FORMAT, "step": int(step), "optimizer": bool(optimizer), **meta}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=True,
        )

    def read_meta(self, step: int) -> dict[str, Any]:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.directory / str(step)} is not a recap training checkpoint (meta format "
                f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})",
                fix="pass a directory written by `recap sft`, `recap finetune` or `recap value train`",
            )
        return meta

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore onto the shardings given by `abstract_state` (ShapeDtypeStructs with sharding). A
        params-only step comes back without `opt_state` (`meta["optimizer"]` is False)."""
        meta = self.read_meta(step)
        if meta.get("optimizer") is False:
            abstract_state = {k: v for k, v in abstract_state.items() if k != "opt_state"}
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as exc:
            raise self._restore_error(step, exc) from exc
        return restored.state, meta

    def _restore_error(self, step: int, exc: Exception) -> CheckpointError:
        """Damaged files (tensorstore cannot read them) and a model of another shape need different fixes."""
        where = self.directory / str(step)
        text = str(exc)
        detail = " ".join(text.split())[:300] + ("..." if len(text) > 300 else "")
        if isinstance(exc, OSError) or "tensorstore" in text.lower() or "error reading" in text.lower():
            others = [s for s in self.steps() if s != step]
            return CheckpointError(
                f"checkpoint {where} cannot be read: its files are damaged or incomplete ({detail})",
                fix="copy the run again from where it was written"
                + (f", or use another of its checkpoints (steps {others})" if others else ""),
            )
        if not isinstance(exc, ValueError | KeyError | TypeError):
            raise exc
        return CheckpointError(f"checkpoint {where} does not match this model's trainable params: {detail}",
                               fix="use the same preset (and freeze mode) as the run that wrote it")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each array's sharding: the restore target for `tree`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def checkpoint_bytes(step_dir: Path) -> int:
    """Bytes on disk of one checkpoint step directory."""
    return sum(p.stat().st_size for p in Path(step_dir).rglob("*") if p.is_file())
