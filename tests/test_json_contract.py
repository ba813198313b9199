"""`recap <any command> --json` prints exactly one JSON document on stdout, for success and for every
user error (`{"error", "fix", "exit_code"}`), and never NaN/Infinity (which `jq` rejects)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer

from tests.data.test_output_safety import invoke

MISSING = "/nonexistent/recap-test"

# One user error per command that has --json (the test below checks the table covers them all).
ERRORS: dict[str, tuple[str, ...]] = {
    "demo": ("demo", "--plan", "nope"),
    "doctor": ("doctor", "--stage", "nope"),
    "eval": ("eval", MISSING, "--task", "handover-easy"),
    "presets": ("presets", "--kind", "nope"),
    "serve": ("serve", "--max-message-mb", "-1"),
    "sft": ("sft", MISSING, "--preset", "pi05-tiny"),
    "finetune": ("finetune", MISSING, "--preset", "pi06-tiny"),
    "config show": ("config", "show"),
    "convert aloha-hdf5": ("convert", "aloha-hdf5", MISSING, "out", "--fps", "50", "--task", "t"),
    "convert lerobot": ("convert", "lerobot", MISSING, "out"),
    "convert v30-to-v21": ("convert", "v30-to-v21", MISSING, "out"),
    "convert v21-to-v30": ("convert", "v21-to-v30", MISSING, "out"),
    "data stats": ("data", "stats", MISSING),
    "data inspect": ("data", "inspect", MISSING),
    "data merge": ("data", "merge", MISSING, MISSING + "2", "--output", "out"),
    "data view": ("data", "view", MISSING),
    "export openpi": ("export", "openpi", MISSING, "out"),
    "import openpi": ("import", "openpi", MISSING, "out"),
    "value label": ("value", "label", MISSING, "--checkpoint", MISSING),
    "value train": ("value", "train", MISSING, "--preset", "value-tiny"),
    "sim demos": ("sim", "demos", "out", "--operators", "nobody"),
    "sim rollouts": ("sim", "rollouts", "out", "--policy", MISSING),
}


def _json_commands() -> set[str]:
    from recap_cli.main import app

    found: set[str] = set()

    def walk(command, prefix: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            if hasattr(sub, "commands"):
                walk(sub, path)
            elif any("--json" in getattr(p, "opts", ()) for p in sub.params):
                found.add(path)

    walk(typer.main.get_command(app), "")
    return found


def test_every_json_command_is_in_the_table():
    assert _json_commands() == set(ERRORS)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_user_errors_give_one_json_document(name: str, tmp_path: Path):
    env = {"RECAP_CONFIG": str(tmp_path / "bad.toml")} if name == "config show" else None
    if env:
        (tmp_path / "bad.toml").write_text("not toml [")
    code, out, err = invoke(*ERRORS[name], "--json", env=env)
    assert code in (1, 2), (code, err)
    doc = json.loads(out)  # exactly one document: json.loads refuses trailing text
    assert doc["exit_code"] == code and doc["error"], doc
    assert "Traceback" not in err


def test_usage_errors_give_one_json_document():
    code, out, _ = invoke("data", "stats", "--json", "--no-such-flag")
    assert code == 2 and json.loads(out)["exit_code"] == 2


def test_nan_is_written_as_null(capsys: pytest.CaptureFixture[str]):
    from recap_cli.output import print_json

    print_json({"rank_corr": math.nan, "nested": [math.inf, 1.5], "ok": 1})
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rank_corr": None, "nested": [None, 1.5], "ok": 1}


def test_version_lists_the_stack():
    from recap_core.stack import STACK, version_changes

    code, out, _ = invoke("--version")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("recap ") and len(lines) == 1 + len(STACK)
    assert version_changes({"jax": "0.0.1", "gone": "1"}, {"jax": "0.10.2"}) == ["jax 0.0.1 -> 0.10.2"]
    assert version_changes({}, {"jax": "0.10.2"}) == [] and version_changes(None) == []
