"""`recap import openpi`: an openpi checkpoint as a recap run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recap_cli.output import console, emit, err_console, info

import_app = typer.Typer(help="Turn checkpoints from other tools into recap runs.", no_args_is_help=True)


@import_app.command("openpi")
def openpi(
    ckpt: Annotated[Path, typer.Argument(help="openpi checkpoint dir (holding params/ and assets/), or its params/.")],
    out: Annotated[Path, typer.Argument(help="New recap run directory.")],
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="Policy preset the checkpoint fits (pi05, pi05-lora, pi06, pi06-lora, "
                     "*-tiny); default pi05, or pi05-lora for a LoRA checkpoint."),
    ] = None,
    norm_stats: Annotated[
        Path | None, typer.Option("--norm-stats", help="norm_stats.json to use (default: CKPT/assets/*/norm_stats.json).")
    ] = None,
    asset_id: Annotated[
        str | None, typer.Option("--asset-id", help="Which CKPT/assets/<ID>/ to read when there are several.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset recorded in config.json (default: the asset id).")
    ] = None,
    cameras: Annotated[
        list[str] | None, typer.Option("--cameras", help="Camera names the policy reads, in slot order (repeat).")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a run-config key, e.g. --set model.action_dim=14 (repeat).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")] = False,
) -> None:
    """Import an openpi policy checkpoint so `recap serve`, `--init` and `recap export` can use it.

    Example:  recap import openpi ~/ckpts/pi05_base runs/pi05-base --preset pi05
    """
    from recap_core.interop.import_openpi import import_openpi

    with err_console.status("importing openpi checkpoint"):
        result = import_openpi(ckpt, out, preset=preset, norm_stats=norm_stats, asset_id=asset_id,
                               dataset=dataset, cameras=cameras, sets=sets or (),
                               overwrite=overwrite)

    def render(r: dict) -> None:
        if r.get("note"):
            info(f"note: {r['note']}")
        console.print(f"[green]wrote[/green] {r['output']}: {r['stage']} run, preset {r['preset']}, step {r['step']} "
                      f"({r['trainable_params']:,} trainable, {r['frozen_params']:,} frozen params; "
                      f"base: {r['base']})")

    emit(result, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
