"""`recap presets`: the named model presets with parameter counts and a training-memory estimate."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from recap_cli.output import console, emit


def presets(
    name: Annotated[str | None, typer.Argument(help="Show only this preset (e.g. pi06-lora).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: a list of {name, kind, total_params, trainable_params, ...}.")
    ] = False,
) -> None:
    """List model presets with total / trainable parameters and estimated training memory.

    Counts come from abstract shapes (jax.eval_shape): nothing is allocated. Memory counts
    params + grads + Adam moments of the trainable set in f32 and frozen params in bf16;
    activations and EMA are extra.

    Example:  recap presets --json
    """
    from recap_core import presets as presets_lib

    chosen = [presets_lib.get_preset(name)] if name else presets_lib.list_presets()
    rows = [presets_lib.describe(p) for p in chosen]

    def render(data: list[dict]) -> None:
        table = Table(title="recap presets")
        table.add_column("preset", no_wrap=True)
        table.add_column("kind", no_wrap=True)
        for col in ("total params", "trainable", "train memory"):
            table.add_column(col, justify="right", no_wrap=True)
        for row in data:
            table.add_row(row["name"], row["kind"], f"{row['total_params']:,}", f"{row['trainable_params']:,}",
                          f"{row['train_memory_gib']:.2f} GiB")
        console.print(table)
        if len(data) == 1:
            console.print(data[0]["description"])
        console.print("[dim]memory = 16 B x trainable + 2 B x frozen (params, grads, Adam); activations and EMA "
                      "not included. Details: recap presets NAME --json[/dim]")

    emit(rows, as_json, render)


def register(app: typer.Typer) -> None:
    app.command("presets")(presets)
