"""`recap`: one command for the whole RECAP loop.

Subcommands live one module per noun in `recap_cli/commands/`; each module exposes
`register(app)`. They import `recap_core` (and through it jax, lerobot, torch) lazily inside
the command bodies, so `recap --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from typing import Annotated

import typer

from recap_cli import commands, output
from recap_core import __version__
from recap_core.errors import RecapError
from recap_core.runtime import enable_compilation_cache

HELP_WIDTH = 120
"""Columns of `--help` when it is piped or captured and COLUMNS is not set."""

app = typer.Typer(
    name="recap",
    help=(
        "The RECAP loop (pi0.6 offline RL) for VLA policies, on JAX.\n\n"
        "Convert robot episodes, train pi0.5/pi0.6 policies and a value model, relabel advantages, "
        "serve to robots over the openpi websocket protocol.\n\n"
        "Start with:  recap doctor"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    """`recap 0.1.0` on the first line (scripts read it), then the stack a run records, each marked
    where it is not the version this release was tested with (its lock)."""
    if value:
        from recap_core.stack import stack_versions, tested_versions

        typer.echo(f"recap {__version__}")
        tested = tested_versions()
        for name, version in stack_versions().items():
            if name != "recap":
                note = "" if tested.get(name) in (None, version) else f"  (tested with {tested[name]})"
                typer.echo(f"  {name} {version or 'not installed'}{note}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="More detail; full tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    output.state["verbose"] = verbose


def _register_commands() -> None:
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"recap_cli.commands.{mod.name}")
        module.register(app)


_register_commands()


def main() -> None:
    """Console entry point: runs the app and turns user mistakes into a red panel + exit 2."""
    if "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]:
        output.state["verbose"] = True
    as_json = "--json" in sys.argv[1:]
    output.state["json_written"] = False
    if not output.state["verbose"]:
        import logging

        # Orbax warns through absl on every read-only checkpoint open ("Given directory is read only"):
        # noise for a user who only loads a run. -v shows it.
        logging.getLogger("absl").setLevel(logging.ERROR)
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS") and not os.environ.get("TERMINAL_WIDTH"):
        import typer.rich_utils

        typer.rich_utils.MAX_WIDTH = HELP_WIDTH  # piped `--help`: examples stay on one line (rich says 80)
    try:
        enable_compilation_cache()
        app()
    except RecapError as exc:
        if output.state["verbose"]:
            traceback.print_exc()
        output.error_panel(exc.message, exc.fix)
        if as_json and not output.state["json_written"]:
            output.json_error(exc.message, exc.fix, exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        output.err_console.print("[red]interrupted[/red]")
        if as_json and not output.state["json_written"]:
            output.json_error("interrupted", None, 130)
        sys.exit(130)
    except SystemExit as exc:  # a usage error (2, reason printed on stderr by typer) or a failed check (1)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if as_json and code != 0 and not output.state["json_written"]:
            output.json_error("the command line is not valid (the reason is on stderr)" if code == 2
                              else f"the command failed with exit code {code} (details on stderr)",
                              "run the command with --help" if code == 2 else None, code)
        raise
    except Exception as exc:  # a bug: the traceback goes to stderr; scripts still get a document
        if as_json and not output.state["json_written"]:
            output.json_error(f"internal error: {type(exc).__name__}: {exc}", "rerun with -v and report it", 1)
        raise


if __name__ == "__main__":
    main()
