"""One place resolves a run path and its steps (recap_core.rundir): every command that takes a run uses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from recap_core.errors import CheckpointError
from recap_core.rundir import RunRef, find_run


def _run(root: Path, steps: tuple[str, ...] = ("100", "20", "300.orbax-checkpoint-tmp-1")) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    for step in steps:
        (root / "checkpoints" / step).mkdir(parents=True)
    return root


def test_a_run_its_checkpoints_folder_and_a_step_folder_all_name_the_run(tmp_path: Path, monkeypatch):
    run = _run(tmp_path / "run")
    assert find_run(run) == RunRef(run)
    assert find_run(run / "checkpoints") == RunRef(run)
    assert find_run(run / "checkpoints" / "20") == RunRef(run, 20)
    # Relative paths come back absolute, so a run found here works from anywhere.
    monkeypatch.chdir(tmp_path)
    assert find_run(Path("run/checkpoints/100")) == RunRef(run, 100)
    for other in (tmp_path, tmp_path / "missing", run / "assets", run / "other" / "20"):
        assert find_run(other) is None, other


def test_finished_steps_only_and_the_step_a_path_names(tmp_path: Path):
    run = find_run(_run(tmp_path / "run"))
    assert run.steps() == [20, 100]  # an unfinished orbax write (tmp suffix) is not a step
    assert run.resolved_step() == 100
    assert RunRef(run.dir, 20).resolved_step() == 20
    assert run.step_dir(20) == run.dir / "checkpoints" / "20" and run.norm_stats is None
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 300 \(it has \[20, 100\]\)"):
        RunRef(run.dir, 300).resolved_step()
    empty = find_run(_run(tmp_path / "empty", steps=()))
    with pytest.raises(CheckpointError, match="has no checkpoints") as info:
        empty.resolved_step(fix="train it")
    assert info.value.fix == "train it"
