"""The sim's raw episodes go through the real converter into a LeRobot dataset with RECAP columns."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recap_core.data.convert_aloha import convert_aloha_hdf5
from recap_core.sim.collect import collect, collect_demos
from recap_core.sim.rollout import InterventionRule
from recap_core.sim.task import ACTION_DIM, CAMERAS, get_task


def test_demos_and_rollouts_convert_to_a_recap_dataset(tmp_path):
    task = get_task("handover")
    demos = collect_demos(task, 1, 0, tmp_path / "raw_demos")
    rollouts = collect(
        lambda obs: np.zeros((4, ACTION_DIM)), task, 1, 1, tmp_path / "raw_rollouts", rule=InterventionRule()
    )
    for raw, result in (("raw_demos", demos), ("raw_rollouts", rollouts)):
        out = tmp_path / f"{raw}_ds"
        summary = convert_aloha_hdf5(tmp_path / raw, out, fps=task.fps, task="fallback prompt")
        assert summary["episodes"] == 1 and summary["frames"] == result.frames
        assert summary["cameras"] == list(CAMERAS)
        # The prompt recorded in each file wins over the --task fallback.
        assert len(summary["tasks"]) == 1 and summary["tasks"][0] in task.prompts
        assert summary["success_rate"] == result.success_rate
        table = pq.read_table(next((out / "data").rglob("*.parquet")))
        flags = np.asarray(table.column("intervention"))
        assert len(flags) == result.frames and int(flags.sum()) == result.intervention_frames
