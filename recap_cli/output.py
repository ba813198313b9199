"""Shared output conventions for every subcommand.

- People get rich tables and progress bars on stderr/stdout.
- Scripts pass `--json` and get exactly one JSON document on stdout (nothing else there).
- User mistakes (`RecapError`) become one red panel on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

# Set by the global `-v/--verbose` flag (see main.py).
state: dict[str, Any] = {"verbose": False, "json_written": False}


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def print_json(result: Any) -> None:
    """Write one JSON document to stdout (the `--json` contract). NaN and infinities are not JSON
    (`jq` rejects them): they are written as null."""
    text = json.dumps(result, default=_jsonable)
    clean = json.loads(text, parse_constant=lambda _: None)
    sys.stdout.write(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()
    state["json_written"] = True


def keep_stdout_for_results() -> None:
    """From now on, whatever native code prints to file descriptor 1 (gloo's "[Gloo] Rank 0 is
    connected ..." in a multi-process run) goes to stderr; `print_json` and the stdout console
    keep the real stdout, so `--json` stays one document."""
    import os

    sys.stdout.flush()
    results = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(results, "w", buffering=1, closefd=True)


def json_error(message: str, fix: str | None, exit_code: int) -> None:
    """The `--json` document of a failed command (stdout stays one parseable document)."""
    print_json({"error": message, "fix": fix, "exit_code": exit_code})


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `result` as JSON when asked, else with the human renderer."""
    if as_json:
        print_json(result)
    else:
        render(result)


def error_panel(message: str, fix: str | None = None, title: str = "error") -> None:
    """One red panel. The message and fix are plain text: paths and values from the user may hold
    rich markup (`[/bold]`), which must be shown as typed, not parsed (and cannot break the panel)."""
    body = Text(message)
    if fix:
        body.append("\n\nFix: ", style="bold").append(fix)
    err_console.print(Panel(body, title=f"[bold red]{title}[/bold red]", border_style="red", expand=False))


def warn(message: str) -> None:
    err_console.print(Text("warning: ", style="yellow").append(message))


def info(message: str) -> None:
    err_console.print(message)
