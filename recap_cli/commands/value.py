"""`recap value ...`: train the value model and label advantages with it."""

from __future__ import annotations

import typer

value_app = typer.Typer(help="Train the value model and label advantages.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(value_app, name="value")
