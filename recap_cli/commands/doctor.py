"""`recap doctor`: preflight checks before a long run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from recap_cli.output import console, emit, err_console
from recap_core.stages import STAGES

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    stage: Annotated[
        str, typer.Option("--stage", help=" | ".join((*STAGES, "all")))
    ] = "all",
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Also check this dataset.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Preset the run will use (sizes RAM/disk).")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where checkpoints will go.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Predict the training step's device memory at this global batch (compiles the "
        "real step on abstract inputs: a minute or more for real presets).")] = None,
    devices: Annotated[int | None, typer.Option(
        "--devices", min=1, help="...on a mesh of this many devices (default: those here; others are simulated "
        "with fake CPU devices).")] = None,
    fsdp: Annotated[int | None, typer.Option("--fsdp", min=1, help="...with params sharded over this many of them.")] = None,
    device_memory: Annotated[str | None, typer.Option(
        "--device-memory", help="...against this much memory per device, e.g. 24GB or 80GiB (default: the local "
        "GPU's).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: {ok, exit_code, counts, checks: [{name, status, message, fix, details}]}.")
    ] = False,
) -> None:
    """Check this machine before a long run: host RAM, GPU/arch, protobuf, VLM bundle, weights, disk, dataset.

    Any of --batch-size, --devices, --fsdp, --device-memory adds `step_memory`: the stage's real
    training step compiled for that mesh, with XLA's per-device bytes (params, EMA, optimiser state,
    frozen base, batch, temporaries) and a fits / does-not-fit verdict with the fix.

    Exit code 0 when nothing failed, 1 when a check failed (--strict: warnings too).

    Examples:
      recap doctor --stage value-train --dataset data/rollouts_v1
      recap doctor --stage finetune --preset pi06-lora --batch-size 32 --devices 8 --fsdp 8 --device-memory 80GB
    """
    from recap_core.doctor import check_step_memory, run_checks, summarize
    from recap_core.errors import ConfigError
    from recap_core.settings import get_settings
    from recap_core.train.memory import parse_bytes

    memory_bytes = parse_bytes(device_memory) if device_memory is not None else None
    results = run_checks(stage, preset=preset, dataset=dataset, output_dir=output_dir, settings=get_settings(config))
    if any(v is not None for v in (batch_size, devices, fsdp, device_memory)):
        import jax

        from recap_core.stages import get_stage

        if stage == "all" or get_stage(stage).run_stage is None:
            raise ConfigError(f"--batch-size/--devices/--fsdp/--device-memory size a training step; --stage {stage} "
                              "trains nothing", fix="add --stage sft, finetune or value-train")
        with err_console.status("compiling the training step to size its memory ..."):
            results.append(check_step_memory(get_stage(stage).name, preset,
                                             batch_size=batch_size, devices=devices, fsdp=fsdp,
                                             device_memory=memory_bytes, local_devices=jax.devices()))
    summary = summarize(results, strict=strict)
    summary["stage"] = stage

    def render(data: dict) -> None:
        table = Table(title=f"recap doctor (stage: {stage})")
        table.add_column("check")
        table.add_column("status")
        table.add_column("message", overflow="fold")
        table.add_column("fix", overflow="fold")
        for c in data["checks"]:
            table.add_row(c["name"], f"[{STYLE[c['status']]}]{c['status']}[/]", escape(c["message"]), escape(c["fix"] or ""))
        console.print(table)
        counts = data["counts"]
        console.print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed, {counts['skip']} skipped")

    emit(summary, as_json, render)
    raise typer.Exit(summary["exit_code"])


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
