"""`recap export openpi`: a recap policy run as an openpi checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recap_cli.output import console, emit, err_console

export_app = typer.Typer(help="Write recap checkpoints in other tools' formats.", no_args_is_help=True)


@export_app.command("openpi")
def openpi(
    run_or_ckpt: Annotated[Path, typer.Argument(help="A recap policy run dir, its checkpoints/ or checkpoints/<step>.")],
    out: Annotated[Path, typer.Argument(help="New openpi checkpoint directory (params/ + assets/).")],
    merge_lora: Annotated[bool, typer.Option("--merge-lora", help="Fold LoRA adapters into the base weights.")] = False,
    asset_id: Annotated[
        str | None, typer.Option("--asset-id", help="assets/<ID>/norm_stats.json (default: dataset dir name).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")] = False,
) -> None:
    """Export a trained policy so openpi's own server and tools can load it (EMA weights when present).

    Example:  recap export openpi runs/pi06-lora ~/ckpts/pi06_openpi --merge-lora --asset-id trossen
    """
    from recap_core.interop.export import export_openpi

    with err_console.status("exporting to openpi layout"):
        result = export_openpi(run_or_ckpt, out, merge_lora=merge_lora, asset_id=asset_id, overwrite=overwrite)

    def render(r: dict) -> None:
        lora = " (LoRA merged)" if r["merged_lora"] else (" (with LoRA adapters)" if r["lora"] else "")
        console.print(f"[green]wrote[/green] {r['output']}: {r['params']} arrays from step {r['step']}{lora}, "
                      f"norm stats in assets/{r['asset_id']}/")

    emit(result, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
