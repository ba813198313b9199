"""`recap sft` and `recap finetune` (and, via `run_training`, `recap value train`).

All three parse the same flags into a run config and call `recap_core.train`; this module only
renders progress and the result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
    """Train one stage with `recap_core.launch` behind a progress bar; print the summary."""
    from recap_core.launch import prepare_stage, result_summary, run_prepared

    flags = {"batch_size": batch_size, "fsdp_devices": fsdp_devices, "cameras": cameras or None, "wandb": wandb,
             **(extra_flags or {})}
    run = prepare_stage(stage, dataset, preset=preset, init=init, run_dir=run_dir, resume=resume, overwrite=overwrite,
                        steps=steps, flags=flags, sets=sets or [], config_file=config_file, warn=warn)
    if run.config.distributed.requested:
        from recap_cli.output import keep_stdout_for_results

        keep_stdout_for_results()  # gloo prints to fd 1
    result = run_prepared(run, overwrite=overwrite, preflight=not no_preflight, warn=warn, info=info,
                          progress=lambda: _progress(run.config, quiet=as_json))
    emit(result_summary(result), as_json, _render)


@contextlib.contextmanager
def _progress(config: Any, *, quiet: bool) -> Iterator[Callable[[Any], None]]:
    """A rich progress bar on stderr over the run's steps, fed by the train loop's step events."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[sps]} steps/s"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=quiet, transient=False) as progress:
        bar = progress.add_task(f"{config.stage} {config.preset}", total=config.steps, loss="-", lr="-", sps="-")

        def on_event(event: Any) -> None:
            if event.kind == "val":
                text = "  ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
                progress.console.print(f"[cyan]val @ {event.step}[/cyan]  {text}")
                return
            progress.update(bar, completed=event.step, loss=f"{event.metrics['loss']:.4f}",
                            lr=f"{event.metrics['lr']:.2e}", sps=f"{event.steps_per_s:.2f}")

        yield on_event


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
