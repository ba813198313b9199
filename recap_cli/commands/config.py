"""`recap config show`: the resolved settings and where each value came from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from recap_cli.output import console, emit

config_app = typer.Typer(help="Inspect recap's settings (env RECAP_*, config file, defaults).", no_args_is_help=True)


@config_app.command("show")
def show(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings file (default: ~/.config/recap/config.toml).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: {config_file, values: {name: {value, source}}}.")] = False,
) -> None:
    """Print every setting, its resolved value and its source (default, file, env, flag).

    Example:  RECAP_VLM_BUNDLE_DIR=/data/vlm_ckpt recap config show --json
    """
    from recap_core.settings import resolve_settings

    resolved = resolve_settings(config)

    def render(data: dict) -> None:
        table = Table(title=f"recap settings (file: {data['config_file'] or 'none'})")
        table.add_column("setting")
        table.add_column("value")
        table.add_column("source")
        for name, entry in data["values"].items():
            table.add_row(name, str(entry["value"]), entry["source"])
        console.print(table)

    emit(resolved.as_dict(), as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
