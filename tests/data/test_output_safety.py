"""The one output-safety rule (`fsutil.check_output`) from the command line: an output that is, holds
or lies inside an input is refused before any work, with or without --overwrite, and the input stays
byte-identical; killed writers' temp siblings are cleaned; errors render as one panel whatever the
user typed. Commands run in this process (`invoke`) to keep the suite fast."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from recap_core.errors import OutputExistsError, RecapError
from recap_core.fsutil import atomic_output_dir, atomic_write_text, check_output, remove_stale_temps
from tests.conftest import panel_text
from tests.data.conftest import copy_dataset, tree_digest


def invoke(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `recap ARGS` in this process: (exit code, stdout, stderr)."""
    from recap_cli import main as cli
    from recap_cli import output

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    saved_widths = output.console._width, output.err_console._width
    sys.argv = ["recap", *map(str, args)]
    os.environ.update({"COLUMNS": "400", "HF_HUB_OFFLINE": "1", **(env or {})})
    output.console.width = output.err_console.width = 400  # fixed when they were made: no wrapped paths
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        output.console._width, output.err_console._width = saved_widths
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return code, out.getvalue(), err.getvalue()


def refused(code: int, err: str, *words: str) -> None:
    flat = panel_text(err)
    assert code == 2, err
    assert "Traceback" not in err and flat.count("Fix:") == 1, err
    for word in words:
        assert word in flat, (word, flat)


@pytest.fixture
def project(tmp_path: Path, tiny_dataset: Path, tiny_aloha_raw: Path) -> Path:
    """proj/{data/a, data/b, raw}: a user's project with two datasets and raw episodes."""
    copy_dataset(tiny_dataset, tmp_path / "proj" / "data" / "a")
    copy_dataset(tiny_dataset, tmp_path / "proj" / "data" / "b")
    copy_dataset(tiny_aloha_raw, tmp_path / "proj" / "raw")
    return tmp_path / "proj"


def test_outputs_that_would_destroy_or_change_an_input_are_refused(project: Path):
    before = tree_digest(project)
    a, b, raw = project / "data" / "a", project / "data" / "b", project / "raw"
    cases = [
        # output holds the inputs: --overwrite used to delete them
        (("data", "merge", a, b, "--output", project / "data", "--overwrite"), "contains the input"),
        (("convert", "aloha-hdf5", raw, project, "--fps", 50, "--task", "move the cube", "--overwrite"), "contains the input"),
        (("sft", a, "--preset", "pi05-tiny", "--init", "random", "--run-dir", project, "--overwrite", "--no-preflight"),
         "contains the input"),
        # output inside an input: writing would change it
        (("data", "merge", a, b, "--output", a / "merged"), "lies inside the input"),
        (("convert", "aloha-hdf5", raw, raw / "ds", "--fps", 50, "--task", "move the cube"), "lies inside the input"),
        (("data", "stats", a, "--output", a / "meta" / "norm_stats.json"), "lies inside the input"),
        (("sft", a, "--preset", "pi05-tiny", "--init", "random", "--run-dir", a / "run", "--no-preflight"),
         "lies inside the input"),
        # output is the input
        (("data", "merge", a, b, "--output", b, "--overwrite"), "is the same as the input"),
    ]
    for args, words in cases:
        code, _, err = invoke(*args)
        refused(code, err, words)
        assert tree_digest(project) == before, args


def test_fine_tuning_into_its_own_init_run_is_refused(tmp_path: Path, tiny_dataset: Path):
    run = tmp_path / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    code, _, err = invoke("finetune", tiny_dataset, "--preset", "pi06-tiny", "--init", run, "--run-dir", run,
                          "--overwrite", "--no-preflight")
    refused(code, err, "is the same as the input")
    assert (run / "config.json").read_text() == "{}"


def test_output_under_a_file_and_markup_in_paths_give_one_panel(tmp_path: Path, tiny_aloha_raw: Path):
    (tmp_path / "afile").write_text("x")
    code, _, err = invoke("convert", "aloha-hdf5", tiny_aloha_raw, tmp_path / "afile" / "ds", "--fps", 50, "--task", "move the cube")
    refused(code, err, "is a file, not a directory")
    # A path with rich markup is shown as typed and cannot break the error renderer.
    weird = tmp_path / "[/bold]raw[red]"
    code, _, err = invoke("convert", "aloha-hdf5", weird, tmp_path / "out", "--fps", 50, "--task", "move the cube")
    refused(code, err, "[/bold]raw[red]")


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe not utf-8", "not valid TOML (UTF-8)"),
    (b'recap = "x"\n', "must be a table"),
    (b"[recap]\nnot_a_setting = 1\n", "unknown setting"),
])
def test_bad_settings_files_are_panels(tmp_path: Path, content: bytes, words: str):
    path = tmp_path / "recap.toml"
    path.write_bytes(content)
    code, _, err = invoke("config", "show", env={"RECAP_CONFIG": str(path)})
    refused(code, err, words)
    assert path.read_bytes() == content


@pytest.mark.parametrize("content, words", [
    (b'run = "x"\n', "expected a table"),
    (b"\xff bad", "cannot be parsed"),
])
def test_bad_run_config_files_are_panels(tmp_path: Path, tiny_dataset: Path, content: bytes, words: str):
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    code, _, err = invoke("sft", tiny_dataset, "--preset", "pi05-tiny", "--config", path,
                          "--run-dir", tmp_path / "run", "--no-preflight")
    refused(code, err, words)
    assert not (tmp_path / "run").exists()


def test_json_config_that_is_not_an_object_is_a_panel(tmp_path: Path, tiny_dataset: Path):
    path = tmp_path / "run.json"
    path.write_text("[1, 2]")
    code, _, err = invoke("sft", tiny_dataset, "--preset", "pi05-tiny", "--config", path,
                          "--run-dir", tmp_path / "run", "--no-preflight")
    refused(code, err, "expected a table")


def test_check_output_rule(tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    for out, words in [(src, "same as"), (src / "x", "inside"), (tmp_path, "contains")]:
        with pytest.raises(RecapError, match=words):
            check_output(out, True, inputs=(src,))
    with pytest.raises(OutputExistsError):
        check_output(src, False)
    check_output(tmp_path / "sibling", False, inputs=(src,))  # a sibling is fine


def test_killed_writers_temps_are_removed_by_the_next_run(tmp_path: Path):
    out = tmp_path / "ds"
    dead = tmp_path / f".ds.tmp-{2 ** 22 + 7}-abc"  # beyond pid_max: never a live process
    dead.mkdir()
    (dead / "part").write_text("half-written")
    legacy = tmp_path / ".ds.tmp-k3j2h1"  # before temps carried a pid
    legacy.mkdir()
    live = tmp_path / f".ds.tmp-{os.getppid()}-xyz"  # a running writer's temp stays
    live.mkdir()
    other = tmp_path / ".dsx.tmp-1-abc"  # another output's temp stays
    other.mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "f").write_text("ok")
    assert not dead.exists() and not legacy.exists()
    assert live.exists() and other.exists() and (out / "f").read_text() == "ok"
    assert remove_stale_temps(out) == []


def test_atomic_files_follow_the_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "stats.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "stats.json").stat().st_mode) == 0o644


def test_sft_refuses_a_pi06_preset(tmp_path: Path, tiny_dataset: Path):
    code, _, err = invoke("sft", tiny_dataset, "--preset", "pi06-tiny", "--run-dir", tmp_path / "run", "--no-preflight")
    refused(code, err, "pi0.6 policy", "pi05-tiny")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra_s", [0.0, 0.5])
def test_kill_9_during_convert_loses_nothing_and_the_next_run_cleans_up(tmp_path: Path, tiny_aloha_raw: Path,
                                                                       extra_s: float):
    """kill -9 once the output's temp sibling exists (mid-write), then rerun: input intact throughout,
    no half-written output under the name, and the rerun removes the dead writer's temp."""
    import signal
    import subprocess
    import time

    raw = copy_dataset(tiny_aloha_raw, tmp_path / "raw")
    before = tree_digest(raw)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "recap_cli.main", "convert", "aloha-hdf5", str(raw), str(out), "--fps", "50",
           "--task", "move the cube"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    # Its own process group: the kill takes the writer's video-encoding workers too (left alive, the
    # orphans held 0.5 GB each and could still write into the temp while the rerun removed it).
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".ds.tmp-*")):
        time.sleep(0.01)  # bounded: the writer finishes, the temp appears or the deadline passes
    time.sleep(extra_s)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert killed, "the writer finished before it could be killed: the trial proved nothing"
    assert tree_digest(raw) == before
    if out.exists():  # killed after the rename (the commit point): the output is whole, no temp is left
        assert (out / "meta" / "info.json").is_file() and not list(tmp_path.glob(".ds.tmp-*"))
        shutil.rmtree(out)
        shutil.copytree(raw, tmp_path / f".ds.tmp-{proc.pid}-0")  # what it would have left
    assert list(tmp_path.glob(".ds.tmp-*"))  # the dead writer's temp is there ...
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "meta" / "info.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.")] == []  # ... and now gone
    assert tree_digest(raw) == before


def test_init_base_with_a_tiny_preset_fails_at_once(tmp_path: Path, tiny_dataset: Path):
    code, _, err = invoke("sft", tiny_dataset, "--preset", "pi05-tiny", "--init", "base",
                          "--run-dir", tmp_path / "run", "--no-preflight")
    refused(code, err, "no published base weights", "--init random")
    assert not (tmp_path / "run").exists()
