"""The `recap` command line: a thin Typer app over `recap_core`."""
