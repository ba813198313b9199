"""The built-in toy robot task: two planar arms hand a cube over and place it in a target zone.

The scene is a table seen from above. Each arm has a shoulder, an elbow and a gripper; the
state (and the action, absolute joint targets like ALOHA's) is laid out like ALOHA's qpos:
`[left shoulder, left elbow, left gripper, right shoulder, right elbow, right gripper]`, with
the gripper at 1 = open, 0 = closed. The cube starts at a random spot on the source arm's side,
out of the other arm's reach, and the target zone lies out of the source arm's reach, so the
only way to succeed is a hand-over (or a drop in the middle and a re-grasp). Success: the cube
rests (no gripper holds it) inside the zone. Dynamics are kinematic and deterministic: each
joint moves toward its target by at most a fixed step per frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recap_core.errors import RecapError
from recap_core.sim.kinematics import ArmGeometry, forward, inverse

LEFT, RIGHT = 0, 1
ARM_NAMES = ("left", "right")
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
STATE_NAMES = (
    "left_shoulder",
    "left_elbow",
    "left_gripper",
    "right_shoulder",
    "right_elbow",
    "right_gripper",
)
STATE_DIM = len(STATE_NAMES)
ACTION_DIM = STATE_DIM
# Indices of (shoulder, elbow, gripper) per arm in the state / action vector.
ARM_JOINTS = ((0, 1, 2), (3, 4, 5))
GRIPPER_INDICES = (2, 5)
JOINT_INDICES = (0, 1, 3, 4)

ARMS = (
    ArmGeometry(base=(-0.6, 0.0), upper=0.4, fore=0.4, elbow_sign=-1.0),
    ArmGeometry(base=(0.6, 0.0), upper=0.4, fore=0.4, elbow_sign=1.0),
)
HOME_TIPS = (np.array([-0.4, 0.22]), np.array([0.4, 0.22]))
HANDOVER_POINT = np.array([0.0, 0.4])
# Per-frame joint speed limit (rad) and gripper speed (fraction of full opening).
MAX_JOINT_STEP = 0.06
MAX_GRIPPER_STEP = 0.34
MAX_STEP = np.array([MAX_JOINT_STEP, MAX_JOINT_STEP, MAX_GRIPPER_STEP] * 2)
JOINT_LIMIT = np.pi
# The tip must be this close to the cube when the gripper closes: the open gripper's reach (the
# outer radius of its drawn ring), so a cube seen inside the open ring is between the fingers.
GRASP_RADIUS = 0.07
SLIP_RADIUS = 0.1  # a second gripper farther than this from the cube loses its grip
ZONE_RADIUS = 0.09
CUBE_HALF = 0.04


class UnknownTaskError(RecapError):
    """A task name that the built-in simulator does not know."""


class PolicyOutputError(RecapError):
    """A policy returned actions of the wrong shape or with non-finite values."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One language-described version of the task: which arm starts with the cube, where it goes."""

    name: str
    prompt: str
    source_arm: int
    target: tuple[float, float]
    spawn_x: tuple[float, float]
    spawn_y: tuple[float, float]

    @property
    def dest_arm(self) -> int:
        return 1 - self.source_arm


VARIANTS = {
    "left_to_right": Variant(
        name="left_to_right",
        prompt="hand the cube from the left arm to the right arm and put it in the green zone",
        source_arm=LEFT,
        target=(0.42, 0.3),
        spawn_x=(-0.55, -0.3),
        spawn_y=(0.22, 0.55),
    ),
    "right_to_left": Variant(
        name="right_to_left",
        prompt="hand the cube from the right arm to the left arm and put it in the green zone",
        source_arm=RIGHT,
        target=(-0.42, 0.3),
        spawn_x=(0.3, 0.55),
        spawn_y=(0.22, 0.55),
    ),
}


# The same two hand-overs with the cube spawning in a smaller area near the source arm's rest pose.
for _name, _x in (("left_to_right", (-0.47, -0.37)), ("right_to_left", (0.37, 0.47))):
    VARIANTS[f"{_name}_narrow"] = dataclasses.replace(VARIANTS[_name], name=f"{_name}_narrow", spawn_x=_x,
                                                      spawn_y=(0.3, 0.42))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A named task: the variants episodes are drawn from, time limit, frame rate, image size."""

    name: str
    description: str
    variants: tuple[str, ...]
    max_steps: int = 150
    fps: int = 20
    image_size: int = 48
    cameras: tuple[str, ...] = CAMERAS
    grasp_radius: float = GRASP_RADIUS  # the open gripper's reach (its drawn ring scales with it)
    zone_radius: float = ZONE_RADIUS

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(VARIANTS[v].prompt for v in self.variants)


TASKS = {
    "handover": TaskSpec(
        "handover",
        "bimanual cube hand-over; each episode is left->right or right->left",
        ("left_to_right", "right_to_left"),
    ),
    # The demo's default: the hand-over with the cube spawning in a smaller area near the source
    # arm's rest pose and grippers and zone that forgive a tiny policy's few-centimetre errors, so
    # that a policy trained on good demos is competent and the mistakes left are the discrete ones
    # of the operators it imitates (operators.py). "handover" stays as the hard variant.
    "handover-easy": TaskSpec(
        "handover-easy",
        "bimanual cube hand-over with a smaller spawn area and forgiving grippers (the demo's default)",
        ("left_to_right_narrow", "right_to_left_narrow"),
        grasp_radius=0.12,
        zone_radius=0.12,
    ),
    "handover-left-to-right": TaskSpec(
        "handover-left-to-right", "the left arm hands the cube to the right arm", ("left_to_right",)
    ),
    "handover-right-to-left": TaskSpec(
        "handover-right-to-left", "the right arm hands the cube to the left arm", ("right_to_left",)
    ),
}


def list_tasks() -> list[TaskSpec]:
    return list(TASKS.values())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task of that name; a TaskSpec is returned as it is (functions take either)."""
    if isinstance(name, TaskSpec):
        return name
    if name not in TASKS:
        raise UnknownTaskError(
            f"unknown sim task {name!r}; expected one of {sorted(TASKS)}",
            fix=f"pass --task {next(iter(TASKS))} (or another listed name)",
        )
    return TASKS[name]


def home_qpos() -> np.ndarray:
    """Both arms at their rest pose with open grippers."""
    q = np.zeros(STATE_DIM)
    for arm in (LEFT, RIGHT):
        s, e = inverse(ARMS[arm], HOME_TIPS[arm])
        q[list(ARM_JOINTS[arm])] = (s, e, 1.0)
    return q


class HandoverEnv:
    """One episode of the hand-over task. Deterministic given the generator it is reset with."""

    def __init__(self, task: TaskSpec, rng: np.random.Generator) -> None:
        self.task = task
        self.variant = VARIANTS[task.variants[int(rng.integers(len(task.variants)))]]
        self.target = np.array(self.variant.target)
        self.cube = np.array([rng.uniform(*self.variant.spawn_x), rng.uniform(*self.variant.spawn_y)])
        self.qpos = home_qpos()
        self.qpos[JOINT_INDICES,] += rng.uniform(-0.05, 0.05, size=4)
        self.prev_qpos = self.qpos.copy()
        # Arms holding the cube, first grasp first: the cube moves with holders[0].
        self.holders: list[int] = []
        self.t = 0
        self.success = False

    @property
    def prompt(self) -> str:
        return self.variant.prompt

    @property
    def done(self) -> bool:
        return self.success or self.t >= self.task.max_steps

    @property
    def qvel(self) -> np.ndarray:
        return (self.qpos - self.prev_qpos) * self.task.fps

    def tip(self, arm: int) -> np.ndarray:
        shoulder, elbow, _ = ARM_JOINTS[arm]
        return forward(ARMS[arm], self.qpos[shoulder], self.qpos[elbow])[1]

    def gripper(self, arm: int) -> float:
        return float(self.qpos[GRIPPER_INDICES[arm]])

    def cube_in_zone(self) -> bool:
        return bool(np.linalg.norm(self.cube - self.target) <= self.task.zone_radius)

    def step(self, action: np.ndarray) -> None:
        """Move every joint toward its target (rate-limited), then update grasps and the cube."""
        action = check_action(action)
        target = action.astype(np.float64)
        target[GRIPPER_INDICES,] = np.clip(target[GRIPPER_INDICES,], 0.0, 1.0)
        target[JOINT_INDICES,] = np.clip(target[JOINT_INDICES,], -JOINT_LIMIT, JOINT_LIMIT)
        self.prev_qpos = self.qpos.copy()
        self.qpos = self.qpos + np.clip(target - self.qpos, -MAX_STEP, MAX_STEP)
        self._update_grasps()
        self.t += 1
        self.success = not self.holders and self.cube_in_zone()

    def _update_grasps(self) -> None:
        for arm in (LEFT, RIGHT):
            was_open = self.prev_qpos[GRIPPER_INDICES[arm]] >= 0.5
            is_open = self.gripper(arm) >= 0.5
            if arm in self.holders and is_open:
                self.holders.remove(arm)
            elif (
                arm not in self.holders
                and was_open
                and not is_open
                and np.linalg.norm(self.tip(arm) - self.cube) <= self.task.grasp_radius
            ):
                self.holders.append(arm)
        if self.holders:
            self.cube = self.tip(self.holders[0])
        slip = SLIP_RADIUS + self.task.grasp_radius - GRASP_RADIUS
        if len(self.holders) == 2 and np.linalg.norm(self.tip(self.holders[1]) - self.cube) > slip:
            self.holders.pop()


def check_action(action: np.ndarray) -> np.ndarray:
    """One action vector of ACTION_DIM finite values, or a PolicyOutputError saying what is wrong."""
    arr = np.asarray(action, dtype=np.float32)
    if arr.shape != (ACTION_DIM,):
        raise PolicyOutputError(
            f"an action must have shape ({ACTION_DIM},) = {list(STATE_NAMES)}, got {arr.shape}",
            fix=f"return absolute joint targets of dimension {ACTION_DIM} (slice padded model outputs)",
        )
    if not np.all(np.isfinite(arr)):
        raise PolicyOutputError(
            "the policy returned NaN or infinite actions", fix="check the model and its norm stats"
        )
    return arr
