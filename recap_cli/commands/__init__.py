"""One module per command group. Each defines `register(app: typer.Typer) -> None`.

Keep imports of `recap_core` submodules that pull in jax / lerobot / torch inside the command
functions, so that `recap --help` does not pay for them.
"""
