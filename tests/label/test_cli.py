"""`recap value label` through the installed CLI: help and every bad-input path (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.label.conftest import tree_hashes

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def recap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recap_cli.main", *map(str, args)], capture_output=True, text=True,
        env={**ENV, **(env or {})}, timeout=120
    )


def test_help_has_example():
    res = recap("value", "label", "--help")
    assert res.returncode == 0
    assert "Example:" in res.stdout and "--top-percent" in res.stdout and "--shard" in res.stdout


@pytest.fixture(scope="module")
def plain_dataset(tmp_path_factory) -> Path:
    from recap_core.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("plain") / "ds", episodes=1, frames=4, cameras=("cam_high",),
                        image_size=8, state_dim=2, action_dim=2, with_recap=False)


def _bad_cases(src, run, policy, plain, tmp):
    exists = tmp / "exists"
    exists.mkdir(exist_ok=True)
    return [
        ([src, "--checkpoint", policy], "not a value model"),
        ([plain, "--checkpoint", run], "reward_label"),
        ([src, "--checkpoint", run, "--top-percent", "0"], "--top-percent"),
        ([src, "--checkpoint", run, "--top-percent", "150"], "--top-percent"),
        ([src, "--checkpoint", run, "--lookahead", "0"], "--lookahead"),
        ([src, "--checkpoint", run, "--cameras", "cam_nope"], "cam_nope"),
        ([src, "--checkpoint", run, "--output", exists], "already exists"),
        ([src, "--checkpoint", run, "--shard", "3/2"], "--shard"),
        ([src, "--checkpoint", run, "--output", tmp / "new", "--report", tmp / "new" / "report"], "lies inside --output"),
    ]


def test_bad_input_exits_2_and_writes_nothing(src_dataset, toy_value_run, toy_policy_run, plain_dataset, tmp_path):
    before = tree_hashes(src_dataset)
    siblings = sorted(p.name for p in src_dataset.parent.iterdir())
    for args, needle in _bad_cases(src_dataset, toy_value_run, toy_policy_run, plain_dataset, tmp_path):
        res = recap("value", "label", *args, "--no-preflight", "--cache", tmp_path / "cache")
        text = " ".join(res.stderr.split())
        assert res.returncode == 2, (args, res.stderr)
        assert needle in text, (needle, res.stderr)
        assert "Traceback" not in res.stderr
        assert res.stdout == ""
    assert tree_hashes(src_dataset) == before
    assert sorted(p.name for p in src_dataset.parent.iterdir()) == siblings
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "new").exists()
    assert list((tmp_path / "exists").iterdir()) == []


def test_merge_shards_of_another_checkpoint_is_refused(src_dataset, toy_value_run, tmp_path):
    stray = tmp_path / "stray" / "0123456789abcdef"
    stray.mkdir(parents=True)
    (stray / "identity.json").write_text(json.dumps({"checkpoint": "other"}))
    res = recap("value", "label", src_dataset, "--checkpoint", toy_value_run, "--no-preflight",
                "--cache", tmp_path / "cache", "--merge-shards", stray, "--output", tmp_path / "out")
    assert res.returncode == 2, res.stderr
    assert "different" in " ".join(res.stderr.split())
    assert not (tmp_path / "out").exists()



def test_label_started_by_a_launcher_several_times_is_refused(src_dataset, toy_value_run, tmp_path):
    """Under `srun -n 4` every copy would label the whole dataset into the same output: refused,
    with the --shard/--merge-shards recipe; one task (or no launcher) runs."""
    from recap_core.errors import ConfigError
    from recap_core.launch import refuse_multi_task_launch

    siblings = sorted(p.name for p in src_dataset.parent.iterdir())
    res = recap("value", "label", src_dataset, "--checkpoint", toy_value_run, "--no-preflight",
                "--cache", tmp_path / "cache", env={"SLURM_NTASKS": "4", "SLURM_PROCID": "1"})
    text = " ".join(res.stderr.split())
    assert res.returncode == 2 and "SLURM_NTASKS=4" in text, res.stderr
    assert "--shard $SLURM_PROCID/$SLURM_NTASKS" in text and "--merge-shards" in text
    assert not (tmp_path / "cache").exists() and sorted(p.name for p in src_dataset.parent.iterdir()) == siblings
    refuse_multi_task_launch("x", {"SLURM_NTASKS": "1", "WORLD_SIZE": "1"})  # one task: fine
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        refuse_multi_task_launch("x", {"WORLD_SIZE": "2"})
