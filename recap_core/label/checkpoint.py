"""Which value checkpoint `--checkpoint RUN_OR_STEP` names, and what identifies its weights.

Accepts what `recap value train` writes: the run directory (latest step), its `checkpoints/`
folder, or one `checkpoints/<step>/`. A policy run, an openpi checkpoint or a random folder is a
CheckpointError before anything is read or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recap_core.errors import CheckpointError
from recap_core.rundir import RunRef, find_run


@dataclass(frozen=True)
class ValueCheckpoint:
    run_dir: Path
    step: int
    preset: str
    cameras: tuple[str, ...] | None = None
    """The cameras the value model was trained on (labelling uses the same ones by default)."""
    chosen: str = "latest"
    """Why this step: "named" (a checkpoints/<step> path), "best" (the run kept its best-ranked step,
    `value train --keep-best`) or "latest"."""

    @property
    def step_dir(self) -> Path:
        return self.run_dir / "checkpoints" / str(self.step)

    def content_hash(self) -> str:
        """sha256 of the step's files and the run config: the prediction cache's key."""
        import hashlib

        from recap_core.label.cache import content_hash

        digest = hashlib.sha256(content_hash(self.step_dir).encode())
        digest.update((self.run_dir / "config.json").read_bytes())
        return digest.hexdigest()


def resolve_value_checkpoint(path: Path) -> ValueCheckpoint:
    """Resolve `--checkpoint`; raise CheckpointError unless it is a finished value-model run."""
    from recap_core.config import load_run_config
    from recap_core.errors import ConfigError

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"--checkpoint {path} does not exist",
            fix="pass the run directory of `recap value train` (or its checkpoints/<step>)",
        )
    run = find_run(path)
    try:
        if run is None:
            raise CheckpointError("no config.json there, in its parent or two levels up")
        config = load_run_config(run.config_path)
    except (CheckpointError, ConfigError) as exc:
        raise CheckpointError(
            f"--checkpoint {path} is not a recap value-model run: {exc.message}",
            fix="pass the run directory of `recap value train` (or its checkpoints/<step>)",
        ) from exc
    if config.stage != "value":
        raise CheckpointError(
            f"--checkpoint {path} is a `{config.stage}` run (preset {config.preset}), not a value model",
            fix="pass the run directory of `recap value train`; policies cannot label advantages",
        )
    chosen = "named" if run.step is not None else "latest"
    best = run.best() if run.step is None else None
    if best is not None:
        run, chosen = RunRef(run.dir, int(best["step"])), "best"
    step = run.resolved_step(fix="train the value model until it saves a checkpoint, or pass another run")
    return ValueCheckpoint(run_dir=run.dir, step=step, preset=config.preset,
                           cameras=tuple(config.cameras) if config.cameras else None, chosen=chosen)
