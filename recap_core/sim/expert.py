"""The scripted expert: the "human" that records demos and takes over with corrections.

It reads the true scene (cube position, which gripper holds it) rather than images, and it
decides from the current scene alone, so it can take over from any state a policy left it
in: a cube dropped mid-way is picked up again, a wrong grasp is released, and so on. Its
action is the next joint position along a straight joint-space move toward the current
sub-goal (exactly one speed-limited step), so recorded actions look like a leader arm's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recap_core.sim.kinematics import inverse
from recap_core.sim.task import (
    ARM_JOINTS,
    ARMS,
    GRIPPER_INDICES,
    HANDOVER_POINT,
    HOME_TIPS,
    JOINT_INDICES,
    JOINT_LIMIT,
    MAX_STEP,
    HandoverEnv,
)

CLOSE_TOLERANCE = 0.02  # close the gripper once the tip is this close to the cube
HANDOVER_TOLERANCE = 0.04  # the receiving arm grasps only once the cube is near the hand-over point
PLACE_TOLERANCE = 0.03  # open over the target zone this close to its centre
PICK_REACH = 0.76  # the destination arm picks a loose cube itself when it is this close to its base
EVENT_COST = 0.25  # remaining_work() weight of each grasp / release still to do


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclasses.dataclass(frozen=True)
class ScriptedExpert:
    """Scene-reading controller. `handover_point` varies a little per episode for diverse demos."""

    handover_point: tuple[float, float] = (float(HANDOVER_POINT[0]), float(HANDOVER_POINT[1]))
    noise_std: float = 0.01  # joint noise (rad) added to recorded actions when a generator is given

    @classmethod
    def for_episode(cls, rng: np.random.Generator, noise_std: float = 0.01) -> ScriptedExpert:
        jitter = rng.uniform(-0.04, 0.04, size=2)
        point = HANDOVER_POINT + jitter
        return cls(handover_point=(float(point[0]), float(point[1])), noise_std=noise_std)

    def action(self, env: HandoverEnv, rng: np.random.Generator | None = None) -> np.ndarray:
        """The next absolute joint target; with `rng`, small joint noise is added (demo diversity)."""
        goals, grips = self._plan(env)
        target = env.qpos.copy()
        for arm in (0, 1):
            shoulder, elbow, gripper = ARM_JOINTS[arm]
            s, e = inverse(ARMS[arm], goals[arm])
            # Move the short way round so a wrapped IK angle never sends a joint the long way.
            target[shoulder] = env.qpos[shoulder] + _wrap(s - env.qpos[shoulder])
            target[elbow] = env.qpos[elbow] + _wrap(e - env.qpos[elbow])
            target[gripper] = grips[arm]
        action = env.qpos + np.clip(target - env.qpos, -MAX_STEP, MAX_STEP)
        if rng is not None and self.noise_std > 0:
            action[JOINT_INDICES,] += rng.normal(0.0, self.noise_std, size=len(JOINT_INDICES))
        action[JOINT_INDICES,] = np.clip(action[JOINT_INDICES,], -JOINT_LIMIT, JOINT_LIMIT)
        return action.astype(np.float32)

    def remaining_work(self, env: HandoverEnv) -> float:
        """How far the scene is from done (distances the cube and grippers still travel, plus
        a fixed cost per grasp/release left). Stall detection watches it decrease."""
        if env.success:
            return 0.0
        src, dst = env.variant.source_arm, env.variant.dest_arm
        cube, target, point = env.cube, env.target, np.array(self.handover_point)
        to_target = float(np.linalg.norm(cube - target))
        if not env.holders:
            if self._picker(env) == dst:
                return float(np.linalg.norm(env.tip(dst) - cube)) + to_target + 2 * EVENT_COST
            via_point = float(np.linalg.norm(cube - point) + np.linalg.norm(point - target))
            return float(np.linalg.norm(env.tip(src) - cube)) + via_point + 4 * EVENT_COST
        if env.holders == [src]:
            return float(
                np.linalg.norm(cube - point)
                + np.linalg.norm(env.tip(dst) - cube)
                + np.linalg.norm(point - target)
                + 3 * EVENT_COST
            )
        if len(env.holders) == 2:
            return to_target + 2 * EVENT_COST
        return to_target + EVENT_COST  # only the destination arm holds it: carry and release

    def _picker(self, env: HandoverEnv) -> int:
        dst = env.variant.dest_arm
        near_dst = np.linalg.norm(env.cube - np.asarray(ARMS[dst].base)) <= PICK_REACH
        return dst if near_dst else env.variant.source_arm

    def _grasp_command(self, env: HandoverEnv, arm: int, allowed: bool = True) -> float:
        """Gripper command for an arm going for the cube: open while approaching, close when on it."""
        near = np.linalg.norm(env.tip(arm) - env.cube) <= CLOSE_TOLERANCE
        grip = env.gripper(arm)
        if not (near and allowed):
            return 1.0
        if grip >= 0.95:
            return 0.0
        if grip < 0.5:  # closed on nothing: a missed grasp, open again
            return 1.0
        closing = env.qvel[GRIPPER_INDICES[arm]] < 0
        return 0.0 if closing else 1.0

    def _plan(self, env: HandoverEnv) -> tuple[list[np.ndarray], list[float]]:
        """Tip goal and gripper command per arm for the current scene."""
        src, dst = env.variant.source_arm, env.variant.dest_arm
        point = np.array(self.handover_point)
        goals: list[np.ndarray] = [HOME_TIPS[0], HOME_TIPS[1]]
        grips = [1.0, 1.0]
        holders = env.holders
        if not holders:
            if env.cube_in_zone():
                return goals, grips
            picker = self._picker(env)
            goals[picker] = env.cube
            grips[picker] = self._grasp_command(env, picker)
            if picker == src:
                goals[dst] = point  # wait at the hand-over point
        elif holders[0] == src and dst not in holders:
            goals[src], grips[src] = point, 0.0
            src_at_point = np.linalg.norm(env.tip(src) - point) <= HANDOVER_TOLERANCE
            goals[dst] = env.cube
            grips[dst] = self._grasp_command(env, dst, allowed=bool(src_at_point))
        elif len(holders) == 2:
            # Both hold it: whoever is the destination keeps it, the other lets go; nobody moves.
            goals[src], goals[dst] = env.tip(src), env.tip(dst)
            grips[src], grips[dst] = 1.0, 0.0
        elif holders[0] == dst:
            near_target = np.linalg.norm(env.cube - env.target) <= PLACE_TOLERANCE
            goals[dst], grips[dst] = env.target, 1.0 if near_target else 0.0
        return goals, grips
