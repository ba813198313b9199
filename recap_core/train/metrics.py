"""Training metrics: `<run>/metrics.jsonl` always, wandb only when asked (`--wandb online|offline`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from recap_core.config import RunConfig
from recap_core.errors import ConfigError


class MetricsLog:
    """Appends one JSON object per logged step; mirrors it to wandb when enabled."""

    def __init__(self, run_dir: Path, config: RunConfig, *, enabled: bool = True):
        self.enabled = enabled
        self._file = (Path(run_dir) / "metrics.jsonl").open("a") if enabled else None
        self._wandb: Any = None
        if enabled and config.wandb != "disabled":
            self._wandb = _start_wandb(run_dir, config)

    def write(self, step: int, values: dict[str, float], *, split: str = "train", **extra: float) -> None:
        if not self.enabled or self._file is None:
            return
        record = {"step": step, "split": split, "time": round(time.time(), 3), **values, **extra}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in {**values, **extra}.items()}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, config: RunConfig) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError(
            f"--wandb {config.wandb} needs the wandb package, which is not installed",
            fix="pip install 'recap[wandb]', or drop --wandb (metrics.jsonl is always written)",
        ) from exc
    from recap_core.settings import get_settings

    return wandb.init(
        project=get_settings().wandb_project,
        mode=config.wandb,
        dir=str(run_dir),
        name=Path(run_dir).name,
        config=config.model_dump(mode="json"),
        resume="allow",
        id=Path(run_dir).name,
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
