"""`recap sft` and `recap finetune` (and, via `run_training`, `recap value train`).

All three parse the same flags into a run config and call `recap_core.train`; this module only
renders progress and the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from recap_cli.output import emit, err_console, info, warn

DatasetArg = Annotated[Path, typer.Argument(help="LeRobot v3.0 dataset directory.")]
InitOpt = Annotated[str, typer.Option("--init", help="base (published weights) | random | PATH (a recap run or run/checkpoints/STEP).")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<command>-<preset>).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Total optimiser steps.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Global batch size (all devices and hosts).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its last checkpoint.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --run-dir.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a run-config key, e.g. --set optim.peak_lr=1e-5 (repeat).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Run config file (TOML, or a run's config.json).")]
FsdpOpt = Annotated[int | None, typer.Option("--fsdp-devices", help="Devices each param is sharded over (1 = data parallel).")]
CamerasOpt = Annotated[list[str] | None, typer.Option("--cameras", help="Dataset cameras to train on (repeat; default: all).")]
WandbOpt = Annotated[str | None, typer.Option("--wandb", help="Also log to Weights & Biases: online | offline.")]
NoPreflightOpt = Annotated[bool, typer.Option("--no-preflight", help="Skip the doctor's checks for this stage.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the final summary as one JSON document.")]
DeltaOpt = Annotated[bool | None, typer.Option(
    "--delta-actions/--absolute-actions",
    help="Train on joint deltas w.r.t. the current state, grippers absolute (openpi's ALOHA recipe; "
         "serving adds the state back). Default: the --init run's choice, else absolute.")]

KeepOptimizerOpt = Annotated[bool | None, typer.Option(
    "--keep-optimizer/--no-keep-optimizer",
    help="Keep the optimiser state in the last checkpoint (default). --no-keep-optimizer writes the last step "
         "params-only: it serves, exports and --inits new runs at a third of the bytes or less, but cannot be resumed.")]

SuccessOnlyOpt = Annotated[bool, typer.Option(
    "--success-only",
    help="Train only on the episodes that succeeded (filtered behaviour cloning, the usual baseline for RECAP).")]



def run_training(
    stage: str,
    dataset: Path,
    *,
    preset: str,
    init: str,
    run_dir: Path | None,
    steps: int | None,
    batch_size: int | None,
    resume: bool,
    overwrite: bool,
    sets: list[str] | None,
    config_file: Path | None,
    fsdp_devices: int | None,
    cameras: list[str] | None,
    wandb: str | None,
    no_preflight: bool,
    as_json: bool,
    extra_flags: dict[str, Any] | None = None,
) -> None:
    """Resolve the config, check the dataset, train with a progress bar, print the summary."""
    from recap_core.config import load_run_config, resolve_run_config
    from recap_core.errors import ConfigError
    from recap_core.settings import get_settings
    from recap_core.train.jobs import build_job, check_dataset, preset_model

    run_dir = run_dir or get_settings().runs_dir / f"{'value' if stage == 'value' else stage}-{preset}"
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", fix="pass only one of them")
    resuming = resume and (run_dir / "config.json").is_file()
    if resuming:
        # The run's own config wins; only --steps may extend it.
        config = load_run_config(run_dir / "config.json")
        if steps is not None:
            config.steps = steps
        if config.stage != stage:
            raise ConfigError(f"{run_dir} is a `{config.stage}` run, not `{stage}`",
                              fix="resume it with the command that started it")
        config = _follow_moves(config, run_dir, Path(dataset))
        from recap_core.stack import version_changes

        changes = version_changes(config.versions)
        if changes:
            warn(f"{run_dir} was started under other versions: {', '.join(changes)}; "
                 "results may not match an uninterrupted run")
    else:
        flags = {"init": init, "steps": steps, "batch_size": batch_size, "fsdp_devices": fsdp_devices,
                 "cameras": cameras or None, "wandb": wandb, **(extra_flags or {})}
        config = resolve_run_config(stage, preset, dataset, config_file=config_file, flags=flags,
                                    sets=sets or [], model=preset_model(stage, preset))
    from recap_core.train.sharding import maybe_initialize_distributed

    if config.distributed.requested:
        from recap_cli.output import keep_stdout_for_results

        keep_stdout_for_results()  # gloo prints to fd 1
    # Before anything can start JAX's backend (the preflight's device check, the data loaders).
    maybe_initialize_distributed(config.distributed)
    if not no_preflight:
        try:
            from recap_core.doctor import preflight
            from recap_core.stages import for_run
        except ImportError:
            preflight = None
        if preflight is not None:
            preflight(for_run(stage).name, warn=warn, preset=config.preset, dataset=Path(config.dataset),
                      output_dir=run_dir, init=config.init, cameras=config.cameras)
    check_dataset(config)  # before anything compiles: say which stage's data is missing
    if not resuming:
        from recap_core.train.init import init_run
        from recap_core.train.loop import check_run_dir

        init_run(config)  # a bad --init fails now, not after the norm stats and the model are built
        check_run_dir(run_dir, config, overwrite=overwrite)
    job = build_job(config, run_dir, resuming=resuming)
    for note in job.notes:
        info(f"note: {note}")
    result = _train_with_progress(job, config, run_dir, resume=resuming, overwrite=overwrite and not resuming,
                                  quiet=as_json)
    emit(_summary(result), as_json, _render)


def _follow_moves(config: Any, run_dir: Path, dataset: Path) -> Any:
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


def _train_with_progress(job: Any, config: Any, run_dir: Path, *, resume: bool, overwrite: bool, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from recap_core.train.loop import StepEvent, train

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[sps]} steps/s"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=quiet, transient=False) as progress:
        bar = progress.add_task(f"{config.stage} {config.preset}", total=config.steps, loss="-", lr="-", sps="-")

        def on_event(event: StepEvent) -> None:
            if event.kind == "val":
                text = "  ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
                progress.console.print(f"[cyan]val @ {event.step}[/cyan]  {text}")
                return
            progress.update(bar, completed=event.step, loss=f"{event.metrics['loss']:.4f}",
                            lr=f"{event.metrics['lr']:.2e}", sps=f"{event.steps_per_s:.2f}")

        return train(job, config, run_dir, resume=resume, overwrite=overwrite, on_event=on_event)


def _summary(result: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(result)
    out["run_dir"] = str(result.run_dir)
    return out


def _render(summary: dict[str, Any]) -> None:
    info(f"[green]done[/green] {summary['stage']} {summary['preset']}: steps {summary['start_step']} -> "
         f"{summary['final_step']}, loss {summary['first_loss']} -> {summary['final_loss']}")
    if summary["checkpoint_step"] is not None:
        mb = (summary["checkpoint_bytes"] or 0) / 2**20
        info(f"checkpoint {summary['run_dir']}/checkpoints/{summary['checkpoint_step']} ({mb:.1f} MiB; "
             f"{summary['trainable_params']:,} trainable / {summary['frozen_params']:,} frozen params)")
    if summary["val"]:
        info("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["val"].items()))
    fit = summary.get("fit") or {}
    if fit.get("overfit"):
        warn(f"{fit['message']} (fix: {fit['fix']})")


def sft(
    dataset: DatasetArg,
    preset: Annotated[str, typer.Option("--preset", help="pi05 | pi05-lora | pi05-tiny")] = "pi05",
    init: InitOpt = "base",
    run_dir: RunDirOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    fsdp_devices: FsdpOpt = None,
    cameras: CamerasOpt = None,
    wandb: WandbOpt = None,
    delta_actions: DeltaOpt = None,
    success_only: SuccessOnlyOpt = False,
    keep_optimizer: KeepOptimizerOpt = None,
    no_preflight: NoPreflightOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Supervised fine-tuning of a pi0.5 policy on demonstrations (RECAP stage 2).

    Example:  recap sft data/demos --preset pi05-lora --run-dir runs/sft --steps 20000
    """
    run_training("sft", dataset, preset=preset, init=init, run_dir=run_dir, steps=steps, batch_size=batch_size,
                 resume=resume, overwrite=overwrite, sets=set_, config_file=config, fsdp_devices=fsdp_devices,
                 cameras=cameras, wandb=wandb, no_preflight=no_preflight, as_json=as_json,
                 extra_flags={"data.delta_actions": delta_actions, "data.success_only": success_only or None,
                              "checkpoint.final_optimizer": keep_optimizer})


def finetune(
    dataset: DatasetArg,
    preset: Annotated[str, typer.Option("--preset", help="pi06 | pi06-lora | pi06-tiny")] = "pi06",
    init: InitOpt = "base",
    run_dir: RunDirOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    fsdp_devices: FsdpOpt = None,
    cameras: CamerasOpt = None,
    wandb: WandbOpt = None,
    delta_actions: DeltaOpt = None,
    keep_optimizer: KeepOptimizerOpt = None,
    no_preflight: NoPreflightOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a pi0.6 policy conditioned on adv_ind, with indicator dropout (RECAP stages 3 and 6).

    Example:  recap finetune data/rollouts_labeled --preset pi06-lora --init runs/sft --run-dir runs/pi06
    """
    run_training("finetune", dataset, preset=preset, init=init, run_dir=run_dir, steps=steps,
                 batch_size=batch_size, resume=resume, overwrite=overwrite, sets=set_, config_file=config,
                 fsdp_devices=fsdp_devices, cameras=cameras, wandb=wandb, no_preflight=no_preflight,
                 as_json=as_json, extra_flags={"data.delta_actions": delta_actions,
                                               "checkpoint.final_optimizer": keep_optimizer})


def register(app: typer.Typer) -> None:
    app.command("sft")(sft)
    app.command("finetune")(finetune)
