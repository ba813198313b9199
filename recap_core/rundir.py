"""Where a run and its checkpoint steps are: read in one place for every command that takes a run.

A recap run is a directory holding `config.json`, `assets/` and `checkpoints/<step>/`. `--init`,
`serve`, `eval`, `export`, `value label --checkpoint` and `import` accept the run itself (its latest
step), its `checkpoints/` folder, or one `checkpoints/<step>/`. A step directory exists only once
it is complete (orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when done), so the
digit-named folders are the finished steps. What is in a step, and how to load it, is the
business of the loaders (`train/checkpoint.py`, `serve/loading.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recap_core.errors import CheckpointError

CONFIG = "config.json"
NORM_STATS = Path("assets") / "norm_stats.json"
BEST = "best.json"
"""Written by a `--keep-best` run: the step whose held-out ranking was best (`step`, `metric`, `value`)."""


@dataclass(frozen=True)
class RunRef:
    """A run directory and the step a path named in it (None: the latest)."""

    dir: Path
    step: int | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def norm_stats(self) -> Path | None:
        path = self.dir / NORM_STATS
        return path if path.is_file() else None

    def best(self) -> dict[str, Any] | None:
        """The run's `best.json` (a `--keep-best` value run), or None."""
        path = self.dir / BEST
        return json.loads(path.read_text()) if path.is_file() else None

    def steps(self) -> list[int]:
        """The finished checkpoint steps, oldest first."""
        ckpts = self.checkpoints_dir
        if not ckpts.is_dir():
            return []
        return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit())

    def resolved_step(self, *, fix: str = "train the run until it saves a checkpoint, or pass another run") -> int:
        """The step named, if the run has it, else (none named) its latest; a CheckpointError otherwise."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"{self.dir} has no checkpoints (expected {self.checkpoints_dir}/<step>/)", fix=fix)
        if self.step is None:
            return steps[-1]
        if self.step not in steps:
            raise CheckpointError(f"{self.dir} has no checkpoint at step {self.step} (it has {steps})",
                                  fix="pick one of those steps, or pass the run directory for its latest")
        return self.step

    def step_dir(self, step: int) -> Path:
        return self.checkpoints_dir / str(step)


def find_run(path: Path) -> RunRef | None:
    """`run/`, `run/checkpoints/` or `run/checkpoints/<step>/` -> the run (and step); None when the
    path is none of these (no `config.json` where a run keeps it)."""
    path = Path(path).expanduser().absolute()
    if (path / CONFIG).is_file():
        return RunRef(path)
    if path.name == "checkpoints" and (path.parent / CONFIG).is_file():
        return RunRef(path.parent)
    if path.name.isdigit() and path.parent.name == "checkpoints" and (path.parent.parent / CONFIG).is_file():
        return RunRef(path.parent.parent, int(path.name))
    return None
