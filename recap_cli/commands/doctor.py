"""`recap doctor`: preflight checks before a long run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from recap_cli.output import console, emit
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: {ok, exit_code, counts, checks: [{name, status, message, fix, details}]}.")
    ] = False,
) -> None:
    """Check this machine before a long run: host RAM, GPU/arch, protobuf, VLM bundle, weights, disk, dataset.

    Exit code 0 when nothing failed, 1 when a check failed (--strict: warnings too).

    Example:  recap doctor --stage value-train --dataset data/rollouts_v1
    """
    from recap_core.doctor import run_checks, summarize
    from recap_core.settings import get_settings

    results = run_checks(stage, preset=preset, dataset=dataset, output_dir=output_dir, settings=get_settings(config))
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
