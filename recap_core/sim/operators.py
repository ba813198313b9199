"""Scripted teleoperators of different skill, and the sim's ground truth about mistakes.

Real robot data mixes operators: a careful one, a sloppy one who sometimes makes a decisive
mistake, a hesitant one who pauses and finishes late. `recap demo` records its demonstrations
from such a mix, so that the data holds discrete mistakes that advantage conditioning can learn
to avoid. Every operator reads the true scene, like the scripted expert it builds on:

- careful:  the scripted expert.
- sloppy:   in `mistake_rate` of its episodes it opens the source gripper on the way to the
            hand-over point, before the other arm holds the cube, and the cube drops out of the
            other arm's reach. Then, in
            `give_up_rate` of those episodes, it stops (every joint still until the time runs
            out: a failed episode); otherwise it recovers, slowly, with the expert's plan from the
            dropped state.
- hesitant: stops for `pause` frames at one or two moments of the episode (before grasping,
            after grasping), then carries on like the expert: it succeeds, late.

The ground truth is computed from the scene and the action alone, the same way for an operator,
a policy or a correction, so rollouts get it too (`mistake_kind`):

- "drop": the only arm holding the cube opens far enough to let go, outside the zone (the frame
  the cube falls);
- "idle": no joint and no gripper is told to move while the expert would move.

It is recorded per frame next to the operator's name, for the checks (label precision and
recall at mistake frames), and never given to training: `recap convert` reads neither.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recap_core.sim.expert import ScriptedExpert
from recap_core.sim.task import GRIPPER_INDICES, JOINT_INDICES, MAX_GRIPPER_STEP, HandoverEnv

MISTAKES = ("none", "drop", "idle")
IDLE_JOINT_EPS = 0.015  # rad: joint targets this close to the state count as "not moving"
EXPERT_MOVES = 0.03  # rad: the expert moves if some joint target is this far from the state
# The sloppy operator lets go this far before the hand-over point: the cube lands out of the other
# arm's reach, so a recovery means picking it up again with the source arm (slow).
RELEASE_DISTANCE = 0.22


@dataclasses.dataclass(frozen=True)
class OperatorSpec:
    """One kind of teleoperator."""

    name: str
    description: str
    mistake_rate: float = 0.0  # sloppy: share of episodes with a premature release
    give_up_rate: float = 0.0  # sloppy: share of those in which it then stops
    pauses: tuple[int, int] = (0, 0)  # hesitant: how many pauses (min, max)
    pause_frames: tuple[int, int] = (0, 0)  # hesitant: frames per pause (min, max)


OPERATORS = {
    "careful": OperatorSpec("careful", "the scripted expert"),
    "sloppy": OperatorSpec(
        "sloppy",
        "lets the cube go on the way to the hand-over point in 2/3 of its episodes, "
        "then gives up in 3/4 of those (else recovers slowly)",
        mistake_rate=2 / 3,
        give_up_rate=0.75,
    ),
    "hesitant": OperatorSpec(
        "hesitant",
        "stops 1-2 times for 15-30 frames (before and after grasping), then finishes like the expert",
        pauses=(1, 2),
        pause_frames=(15, 30),
    ),
}


def mistake_kind(env: HandoverEnv, action: np.ndarray, expert: ScriptedExpert) -> str:
    """Which mistake (MISTAKES) this action is in this scene; "none" for a sound action."""
    action = np.asarray(action, np.float64)
    if len(env.holders) == 1 and not env.cube_in_zone():
        g = GRIPPER_INDICES[env.holders[0]]
        opened = env.qpos[g] + np.clip(np.clip(action[g], 0.0, 1.0) - env.qpos[g], -MAX_GRIPPER_STEP, MAX_GRIPPER_STEP)
        if opened >= 0.5:  # the only holder opens far enough this frame: the cube falls
            return "drop"
    still = np.abs(action[list(JOINT_INDICES)] - env.qpos[list(JOINT_INDICES)]).max() <= IDLE_JOINT_EPS
    grips = [GRIPPER_INDICES[0], GRIPPER_INDICES[1]]
    same_grip = np.array_equal(action[grips] >= 0.5, env.qpos[grips] >= 0.5)
    if still and same_grip and not env.success:
        wanted = expert.action(env)
        moves = np.abs(wanted[list(JOINT_INDICES)] - env.qpos[list(JOINT_INDICES)]).max() >= EXPERT_MOVES
        if moves or not np.array_equal(wanted[grips] >= 0.5, env.qpos[grips] >= 0.5):
            return "idle"
    return "none"


class Operator:
    """One operator for one episode: decides its mistakes from the episode's generator up front."""

    def __init__(self, spec: OperatorSpec, expert: ScriptedExpert, rng: np.random.Generator) -> None:
        self.spec = spec
        self.expert = expert
        # Draw every random choice now, so the expert's own noise draws are the same for each kind.
        draws = rng.uniform(size=4)
        self.will_drop = draws[0] < spec.mistake_rate
        self.will_give_up = self.will_drop and draws[1] < spec.give_up_rate
        n_pauses = int(rng.integers(spec.pauses[0], spec.pauses[1] + 1)) if spec.pauses[1] else 0
        lo, hi = spec.pause_frames
        lengths = rng.integers(lo, hi + 1, size=2) if hi else np.zeros(2, int)
        # Pause moments: "before the grasp" (first approach) and "after the grasp" (carrying).
        moments = ["approach", "carry"] if n_pauses == 2 else (["approach"] if draws[2] < 0.5 else ["carry"])
        self.pauses = {m: int(n) for m, n in zip(moments[:n_pauses], lengths, strict=False)}
        self.pausing = 0
        self.dropped = False

    def _phase(self, env: HandoverEnv) -> str:
        src = env.variant.source_arm
        if not env.holders:
            return "approach" if not self.dropped else "dropped"
        return "carry" if env.holders == [src] else "other"

    def action(self, env: HandoverEnv, rng: np.random.Generator) -> np.ndarray:
        if self.dropped and self.will_give_up:
            return self._still(env)
        phase = self._phase(env)
        if phase in self.pauses and self.pausing == 0:
            near_cube = np.linalg.norm(env.tip(env.variant.source_arm) - env.cube) < 0.15
            if phase == "carry" or near_cube:  # approach pauses happen close to the cube
                self.pausing = self.pauses.pop(phase)
        if self.pausing > 0:
            self.pausing -= 1
            return self._still(env)
        action = self.expert.action(env, rng)
        if self.will_drop and not self.dropped and phase == "carry":
            point = np.asarray(self.expert.handover_point)
            src = env.variant.source_arm
            if np.linalg.norm(env.tip(src) - point) <= RELEASE_DISTANCE:
                action[GRIPPER_INDICES[src]] = 1.0  # let go before the other arm holds it
                if env.gripper(src) + MAX_GRIPPER_STEP >= 0.5:  # the gripper opens far enough this frame
                    self.dropped = True
        return action

    @staticmethod
    def _still(env: HandoverEnv) -> np.ndarray:
        return env.qpos.astype(np.float32).copy()


@dataclasses.dataclass(frozen=True)
class OperatorMix:
    """Which operator records each demonstration: shares per operator name (they sum to 1)."""

    shares: tuple[tuple[str, float], ...] = (("careful", 1.0),)

    def pick(self, rng: np.random.Generator) -> OperatorSpec:
        names = [n for n, _ in self.shares]
        weights = np.array([w for _, w in self.shares], np.float64)
        return OPERATORS[names[int(rng.choice(len(names), p=weights / weights.sum()))]]

    @classmethod
    def parse(cls, text: str) -> OperatorMix:
        """'careful=0.4,sloppy=0.3,hesitant=0.3' (or one name) -> OperatorMix."""
        from recap_core.errors import ConfigError

        shares = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, share = part.partition("=")
            if name not in OPERATORS:
                raise ConfigError(f"unknown operator {name!r} in {text!r}; expected one of {sorted(OPERATORS)}",
                                  fix="e.g. careful=0.4,sloppy=0.3,hesitant=0.3")
            try:
                value = float(share) if share else 1.0
            except ValueError as exc:
                raise ConfigError(f"operator share {share!r} in {text!r} is not a number",
                                  fix="e.g. careful=0.4,sloppy=0.3,hesitant=0.3") from exc
            if not (value > 0 and np.isfinite(value)):
                raise ConfigError(f"operator share {share!r} in {text!r} must be a positive number",
                                  fix="e.g. careful=0.4,sloppy=0.3,hesitant=0.3")
            shares.append((name, value))
        if not shares:
            raise ConfigError(f"no operator in {text!r}", fix="e.g. careful=0.4,sloppy=0.3,hesitant=0.3")
        return cls(tuple(shares))
