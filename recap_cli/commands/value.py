"""`recap value ...`: train the value model and label advantages with it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from recap_cli.commands.train import KeepOptimizerOpt
from recap_cli.output import console, emit, err_console, warn

value_app = typer.Typer(help="Train the value model and label advantages.", no_args_is_help=True)


@value_app.command("label")
def label(
    dataset: Annotated[Path, typer.Argument(help="LeRobot v3.0 dataset with reward_label and intervention.")],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="`recap value train` run dir, or its checkpoints/<step>.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="New labelled dataset (default: <DATASET>_labeled beside it).")
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite DATASET itself, atomically.")] = False,
    top_percent: Annotated[float, typer.Option(help="Share of autonomous frames labelled positive, 0 < p <= 100.")] = 30.0,
    lookahead: Annotated[str, typer.Option(
        help="N of the N-step advantage, in frames; 'episode': Monte Carlo advantages (the realised return-to-go "
        "minus the prediction).")] = "50",
    per_task: Annotated[bool, typer.Option("--per-task", help="One threshold per task instead of one global.")] = False,
    demos: Annotated[
        str,
        typer.Option(
            "--demos", help="How demo episodes (every frame human) are labelled: 'positive' by rule, like corrections, "
            "or 'value': by the value model like autonomous frames (the paper labels all data; use it when demos "
            "mix operators of different skill). Corrections inside rollouts are positive either way.",
        ),
    ] = "positive",
    use_ema: Annotated[bool, typer.Option(
        "--use-ema/--no-ema", help="Predict with the checkpoint's EMA weights when it has them (as `serve` and `eval` "
        "do, and as the seed's labeller did); --no-ema: the raw trained weights.")] = True,
    batch_size: Annotated[int, typer.Option(help="Frames per inference batch (global, all local devices).")] = 8,
    cameras: Annotated[
        list[str] | None, typer.Option("--cameras", help="Camera names to feed the model (repeat; default: the value run's cameras).")
    ] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write PNG plots of values and advantages here, and episodes.html (the `recap data view` "
        "page of the labelled dataset).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output.")] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="i/n: only predict this machine's share of episodes (no output).")
    ] = None,
    merge_shards: Annotated[
        list[Path] | None, typer.Option("--merge-shards", help="Prediction caches of --shard runs to combine (repeat).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Prediction cache folder (default: <DATASET>.value_cache beside it).")
    ] = None,
    no_preflight: Annotated[bool, typer.Option("--no-preflight", help="Skip the doctor's value-label checks.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")] = False,
) -> None:
    """Label every autonomous frame positive/negative from N-step advantages of the value model.

    Writes a new dataset (videos hardlinked) with adv_ind rewritten and audit columns value_pred
    and advantage; predictions are cached, so a crashed run resumes and a rerun is free.
    One process predicts on all its local devices; on several machines, run --shard i/n on each,
    then --merge-shards once (the merged dataset is identical to a one-process run's).

    Example:  recap value label data/vial_rollouts --checkpoint runs/value --top-percent 30 --report report/
    """
    from recap_core.label.advantage import check_lookahead
    from recap_core.label.pipeline import LabelOptions, label_with_checkpoint
    from recap_core.label.predict import parse_shard

    if shard is None and not merge_shards:
        from recap_core.launch import refuse_multi_task_launch

        refuse_multi_task_launch("recap value label")

    options = LabelOptions(
        top_percent=top_percent, lookahead=check_lookahead(lookahead), per_task=per_task, use_ema=use_ema,
        batch_size=batch_size, cameras=tuple(cameras) if cameras else None, output=output, in_place=in_place,
        overwrite=overwrite, cache_dir=cache, shard=parse_shard(shard), merge_from=tuple(merge_shards or ()),
        report_dir=report, demos=demos,
    )
    with _label_progress() as (on_start, on_batch):
        result = label_with_checkpoint(dataset, checkpoint, options, preflight=not no_preflight, warn=warn,
                                       on_start=on_start, on_batch=on_batch)
    emit(result, as_json, _render_label)


@contextlib.contextmanager
def _label_progress() -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A rich progress bar on stderr over the frames that need a prediction."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("predicting values"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task("frames", total=None)
        yield (lambda total: progress.update(task, total=total), lambda n: progress.advance(task, n))


def _render_label(result: dict) -> None:
    if "shard" in result:
        console.print(
            f"shard {result['shard']}: predicted {result['frames_predicted']} frames of "
            f"{result['episodes_in_run']} episodes into [bold]{result['cache']}[/bold]"
        )
        return
    used = result["checkpoint"]
    why = {"best": ", its best held-out ranking", "latest": ", the latest"}.get(used.get("chosen", ""), "")
    console.print(f"value model: {used['run_dir']} step {used['step']}{why} ({'EMA' if used['use_ema'] else 'raw'} weights)")
    thresholds = ", ".join(f"{k}: {v:.4g}" for k, v in result["thresholds"].items()) or "none"
    console.print(
        f"labelled {result['frames_labelled']} autonomous frames, "
        f"{100 * result['positive_fraction']:.1f}% positive (threshold {thresholds}); "
        f"skipped {len(result['skipped_episodes'])} demo episode(s)"
    )
    if result.get("spearman") is not None:
        console.print(f"Spearman(value_pred, value_label) = {result['spearman']:.3f}")
    console.print(f"wrote [bold]{result['output']}[/bold] in {result['seconds']:.1f} s")
    if "report" in result:
        from rich.markup import escape

        pages = [*result["report"]["plots"], result["report"]["episodes_page"]["path"]]
        console.print(f"report: {escape(', '.join(pages))}")


@value_app.command("train")
def train(
    dataset: Annotated[Path, typer.Argument(help="LeRobot v3.0 dataset with the value_label column.")],
    preset: Annotated[str, typer.Option("--preset", help="value | value-tiny")] = "value",
    freeze_mode: Annotated[
        str | None, typer.Option("--freeze-mode", help="all_backbones (default) | siglip_only | none")
    ] = None,
    ema: Annotated[
        bool | None, typer.Option("--ema/--no-ema", help="Keep an EMA of the trained params (default: on, 0.99).")
    ] = None,
    init: Annotated[str, typer.Option("--init", help="base (the VLM bundle) | random | PATH (a value run).")] = "base",
    target: Annotated[
        str | None,
        typer.Option("--target", help="two_hot (C51's projection, default) | hl_gauss (a Gaussian over "
                     "neighbouring bins, sigma 0.75 bins; --set model.hl_gauss_sigma=S)."),
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/value-<preset>).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Total optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --run-dir from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --run-dir.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a run-config key (repeat).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Run config file (TOML or config.json).")] = None,
    fsdp_devices: Annotated[int | None, typer.Option("--fsdp-devices", help="FSDP shard count.")] = None,
    cameras: Annotated[list[str] | None, typer.Option("--cameras", help="Cameras to train on (repeat).")] = None,
    wandb: Annotated[str | None, typer.Option("--wandb", help="online | offline")] = None,
    keep_optimizer: KeepOptimizerOpt = None,
    keep_best: Annotated[bool | None, typer.Option(
        "--keep-best", help="Also keep the step whose held-out frames rank best (per-episode Spearman of predicted "
        "value vs value_label, at each validation); `value label` then uses it (the run's best.json says which).")] = None,
    no_preflight: Annotated[bool, typer.Option("--no-preflight", help="Skip the doctor's checks.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as one JSON document.")] = False,
) -> None:
    """Train the C51 value model on value_label (RECAP stage 4); saves only the unfrozen params + EMA.

    Example:  recap value train data/rollouts --preset value --freeze-mode all_backbones --run-dir runs/value
    """
    from recap_cli.commands.train import run_training

    run_training("value", dataset, preset=preset, init=init, run_dir=run_dir, steps=steps, batch_size=batch_size,
                 resume=resume, overwrite=overwrite,
                 sets=[*(set_ or []), *(["ema_decay=none"] if ema is False else []),
                       *([f"model.target={target}"] if target is not None else [])],
                 config_file=config, fsdp_devices=fsdp_devices, cameras=cameras, wandb=wandb,
                 no_preflight=no_preflight, as_json=as_json,
                 extra_flags={"freeze_mode": freeze_mode, "checkpoint.final_optimizer": keep_optimizer,
                              "checkpoint.keep_best": keep_best})


def register(app: typer.Typer) -> None:
    app.add_typer(value_app, name="value")
