"""`recap sim demos|rollouts` from the command line: summaries, raw episodes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from tests.conftest import run_recap, run_recap_json
from tests.data.conftest import tree_digest


def test_sim_demos_records_raw_episodes_and_refuses_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    code, summary = run_recap_json("sim", "demos", out, "--episodes", "2", "--operators", "careful", "--json")
    assert code == 0, summary
    assert summary["episodes"] == 2 and summary["fps"] == 20 and summary["intervention_fraction"] == 1.0
    assert sorted(p.name for p in out.iterdir()) == ["episode_0.hdf5", "episode_1.hdf5"]
    with h5py.File(out / "episode_0.hdf5") as f:
        assert f.attrs["operator"] == "careful" and f["/action"].shape[0] == f["/intervention"].shape[0]
    before = tree_digest(out)

    cases = [
        (("sim", "demos", out, "--episodes", "1"), "already exists"),
        (("sim", "demos", tmp_path / "new", "--operators", "clumsy=1"), "unknown operator 'clumsy'"),
        (("sim", "rollouts", tmp_path / "new"), "exactly one policy"),
        (("sim", "rollouts", tmp_path / "new", "--policy", tmp_path / "nope", "--server", "ws://127.0.0.1:1"),
         "exactly one policy"),
    ]
    for args, words in cases:
        proc = run_recap(*args, "--json")
        assert proc.returncode == 2, proc.stderr
        assert words in json.loads(proc.stdout)["error"], proc.stdout
    assert tree_digest(out) == before and not (tmp_path / "new").exists()
