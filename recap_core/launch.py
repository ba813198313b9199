"""Run one training stage as `recap sft`, `recap finetune` and `recap value train` do:
`prepare_stage` resolves the config (or reopens a run to resume), `run_prepared` runs the doctor's
preflight, checks the dataset, `--init` and the run directory, then trains. The CLI adds only
progress bars and printing; the demo and library users call the same two functions:

    run = prepare_stage("sft", Path("data/demos"), preset="pi05-tiny", init="random", steps=100)
    result = run_prepared(run)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recap_core.config import RunConfig
from recap_core.errors import ConfigError
from recap_core.train.loop import StepEvent, TrainResult

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class PreparedRun:
    """A stage ready to train: its config, its run directory, and whether it continues that run."""

    config: RunConfig
    run_dir: Path
    resuming: bool


def default_run_dir(stage: str, preset: str) -> Path:
    from recap_core.settings import get_settings

    return get_settings().runs_dir / f"{stage}-{preset}"


def prepare_stage(
    stage: str,
    dataset: Path,
    *,
    preset: str,
    init: str = "base",
    run_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    steps: int | None = None,
    flags: dict[str, Any] | None = None,
    sets: Sequence[str] = (),
    config_file: Path | None = None,
    warn: Say = _quiet,
) -> PreparedRun:
    """The run config of a new run (preset < config file < flags < --set), or, with `resume` and an
    existing run, the run's own config (only `steps` may extend it)."""
    from recap_core.config import load_run_config, resolve_run_config
    from recap_core.train.jobs import preset_model

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(stage, preset)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", fix="pass only one of them")
    if resume and (run_dir / "config.json").is_file():
        config = load_run_config(run_dir / "config.json")
        if steps is not None:
            config.steps = steps
        # How this launch joins a multi-process job is the launch's, not the run's: the recorded
        # section is process 0's (its process_id, an old coordinator port).
        config.distributed = resolve_run_config(
            stage, config.preset, dataset, config_file=config_file,
            sets=[s for s in sets if s.startswith("distributed.")], model=preset_model(stage, config.preset)).distributed
        if config.stage != stage:
            raise ConfigError(f"{run_dir} is a `{config.stage}` run, not `{stage}`",
                              fix="resume it with the command that started it")
        config = _follow_moves(config, run_dir, Path(dataset), warn)
        from recap_core.stack import version_changes

        changes = version_changes(config.versions)
        if changes:
            warn(f"{run_dir} was started under other versions: {', '.join(changes)}; "
                 "results may not match an uninterrupted run")
        return PreparedRun(config, run_dir, resuming=True)
    config = resolve_run_config(stage, preset, dataset, config_file=config_file,
                                flags={"init": init, "steps": steps, **(flags or {})}, sets=list(sets),
                                model=preset_model(stage, preset))
    return PreparedRun(config, run_dir, resuming=False)


def _follow_moves(config: RunConfig, run_dir: Path, dataset: Path, warn: Say) -> RunConfig:
    """A resumed run whose dataset or --init run moved: the dataset typed now replaces a recorded one
    that is gone, and the --init run is looked for relative to the run (`locate_init`)."""
    from recap_core.train.init import locate_init

    recorded = Path(config.dataset)
    if not recorded.exists() and dataset.exists():
        warn(f"{run_dir} was trained on {recorded}, which is gone; resuming on {dataset.absolute()}")
        config = config.model_copy(update={"dataset": str(dataset.absolute())})
    elif recorded.exists() and dataset.exists() and recorded.resolve() != dataset.resolve():
        warn(f"--resume uses the run's own dataset {recorded}, not {dataset}")
    return locate_init(config, run_dir)


LAUNCHER_TASKS = {  # a launcher's variable for the number of tasks it started, and for this task's index
    "SLURM_NTASKS": "SLURM_PROCID",
    "OMPI_COMM_WORLD_SIZE": "OMPI_COMM_WORLD_RANK",
    "PMI_SIZE": "PMI_RANK",
    "WORLD_SIZE": "RANK",  # torchrun
    "RECAP_RUN__DISTRIBUTED__NUM_PROCESSES": "RECAP_RUN__DISTRIBUTED__PROCESS_ID",
}


def refuse_multi_task_launch(command: str, environ: Mapping[str, str] | None = None) -> None:
    """`command` runs as one process on its local devices: started N times by a cluster launcher,
    each copy would do the whole job and write the same output. Refuse, naming the variable and the
    two ways that work."""
    environ = os.environ if environ is None else environ
    for size, rank in LAUNCHER_TASKS.items():
        value = environ.get(size, "")
        if value.isdigit() and int(value) > 1:
            raise ConfigError(
                f"{command} runs as one process on all its local devices, but {size}={value}: a launcher "
                f"started {value} copies, and each would label the whole dataset into the same output",
                fix=f"run it once (e.g. srun -n 1), or give each copy its share and merge: --shard ${rank}/${size} "
                    f"--cache DIR_${rank}, then once: --merge-shards DIR_0 ... --output OUT")


def run_prepared(
    run: PreparedRun,
    *,
    overwrite: bool = False,
    preflight: bool = True,
    warn: Say = _quiet,
    info: Say = _quiet,
    on_event: Callable[[StepEvent], None] | None = None,
    progress: Callable[[], AbstractContextManager[Callable[[StepEvent], None]]] | None = None,
) -> TrainResult:
    """Check everything that can fail cheaply (doctor, dataset columns, --init, the run directory),
    build the job and train. Starts `jax.distributed` first when the config asks for it.

    Step events go to `on_event`, or to the callback a `progress` context yields; that context is
    entered only once the checks passed, so a refused run shows no progress bar."""
    from recap_core.stages import for_run
    from recap_core.train.jobs import build_job, check_dataset
    from recap_core.train.loop import train
    from recap_core.train.sharding import maybe_initialize_distributed

    config, run_dir = run.config, run.run_dir
    # Before anything can start JAX's backend (the preflight's device check, the data loaders).
    maybe_initialize_distributed(config.distributed)
    if preflight:
        from recap_core.doctor import preflight as doctor_preflight

        doctor_preflight(for_run(config.stage).name, warn=warn, preset=config.preset, dataset=Path(config.dataset),
                         output_dir=run_dir, init=config.init, cameras=config.cameras)
    check_dataset(config)  # before anything compiles: say which stage's data is missing
    if not run.resuming:
        from recap_core.train.init import init_run
        from recap_core.train.loop import check_run_dir

        init_run(config)  # a bad --init fails now, not after the norm stats and the model are built
        check_run_dir(run_dir, config, overwrite=overwrite)
    job = build_job(config, run_dir, resuming=run.resuming)
    for note in job.notes:
        info(f"note: {note}")
    with progress() if progress is not None else contextlib.nullcontext(on_event) as events:
        return train(job, config, run_dir, resume=run.resuming, overwrite=overwrite and not run.resuming,
                     on_event=events)


def result_summary(result: TrainResult) -> dict[str, Any]:
    """A training result as the JSON document `--json` prints."""
    from dataclasses import asdict

    out = asdict(result)
    out["run_dir"] = str(result.run_dir)
    return out
