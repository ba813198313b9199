"""Do the advantage labels point at the better actions? An audit of a labelled toy-task dataset.

The toy task is deterministic: a rollout episode replays exactly from its seed, its index and the
actions it recorded. At every autonomous frame of the replay the scripted expert says what it would
have done there, so each of the policy's actions gets a deviation from the expert (the largest joint
difference, radians, and whether the gripper command was on the wrong side of 0.5). A value model
whose advantages rank actions well gives the positive frames clearly smaller deviations, and a
negative Spearman correlation between advantage and deviation. Expert frames (interventions,
demos) are skipped: they are labelled positive by rule, not by the value model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.errors import DatasetError
from recap_core.sim.expert import ScriptedExpert
from recap_core.sim.rollout import episode_rng
from recap_core.sim.task import GRIPPER_INDICES, JOINT_INDICES, HandoverEnv, TaskSpec, get_task

REPLAY_ATOL = 1e-4  # recorded float32 states vs the replay's float64 ones


@dataclasses.dataclass(frozen=True)
class LabelAudit:
    frames: int  # autonomous frames audited
    spearman: float | None  # advantage vs joint deviation; good labels: clearly negative
    joint_deviation: dict[str, float | None]  # mean per label ("positive", "negative")
    gripper_wrong: dict[str, float | None]  # share of frames per label (None: no such frame)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expert_deviation(task: TaskSpec | str, seed: int, index: int, states: np.ndarray, actions: np.ndarray,
                     intervention: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replay episode `index` of `seed` with its recorded actions: per frame, the largest joint
    deviation from the expert's action and whether the gripper command was on the wrong side (NaN /
    False on expert frames). A replay that leaves the recorded states is a DatasetError."""
    spec = get_task(task)
    rng = episode_rng(seed, index)
    env = HandoverEnv(spec, rng)
    expert = ScriptedExpert.for_episode(rng)
    joints = np.full(len(actions), np.nan)
    gripper = np.zeros(len(actions), dtype=bool)
    for t, action in enumerate(np.asarray(actions, np.float64)):
        if not np.allclose(states[t], env.qpos, atol=REPLAY_ATOL):
            raise DatasetError(
                f"episode {index} of seed {seed} does not replay: frame {t} recorded state {np.round(states[t], 4)}, "
                f"the sim gives {np.round(env.qpos, 4)}",
                fix="audit rollouts with the seed and episode order they were collected with",
            )
        if not intervention[t]:
            wanted = expert.action(env)
            joints[t] = np.abs(action - wanted)[list(JOINT_INDICES)].max()
            gripper[t] = bool(np.any((action[list(GRIPPER_INDICES)] >= 0.5) != (wanted[list(GRIPPER_INDICES)] >= 0.5)))
        env.step(action)
    return joints, gripper


def label_audit(root: Path, task: TaskSpec | str, seed: int, first_episode: int) -> LabelAudit:
    """Audit the autonomous frames of episodes `first_episode`, ... of a labelled dataset, which are
    rollouts 0, 1, ... collected with `seed` (as `recap demo` merges them after its demos)."""
    from recap_core.data.dataset import column_array, open_dataset, read_table
    from recap_core.label.advantage import episode_groups
    from recap_core.label.report import spearman

    columns = ["observation.state", "action", "intervention", "adv_ind", "advantage", "frame_index"]
    table = read_table(open_dataset(Path(root)), columns)
    data = {c: column_array(table, c) for c in [*columns, "episode_index"]}
    joints, gripper, labels, advantage = [], [], [], []
    for sel in episode_groups(data["episode_index"], data["frame_index"]):  # by (episode, frame), validated
        episode = int(data["episode_index"][sel[0]])
        if episode < first_episode:
            continue
        flags = np.asarray(data["intervention"][sel]).reshape(-1).astype(bool)
        j, g = expert_deviation(task, seed, episode - first_episode, data["observation.state"][sel],
                                data["action"][sel], flags)
        auto = ~flags
        joints.append(j[auto])
        gripper.append(g[auto])
        labels.append(data["adv_ind"][sel][auto].astype(str))
        advantage.append(np.asarray(data["advantage"][sel], np.float64).reshape(-1)[auto])
    if not joints:
        raise DatasetError(f"{root} has no episodes from index {first_episode} on", fix="pass the first rollout's index")
    j, g, lab, adv = (np.concatenate(x) for x in (joints, gripper, labels, advantage))
    by = {name: lab == name for name in ("positive", "negative")}
    return LabelAudit(
        frames=int(j.size),
        spearman=spearman(adv, j),
        joint_deviation={k: float(j[m].mean()) if m.any() else None for k, m in by.items()},
        gripper_wrong={k: float(g[m].mean()) if m.any() else None for k, m in by.items()},
    )
