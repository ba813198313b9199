"""Run one episode of the toy task with a policy, the scripted expert, or both (DAgger-style).

A policy is any function `policy_fn(obs) -> action chunk` where `obs` is an openpi
ALOHA-style request `{"state": float32[S], "images": {camera: uint8[H, W, 3]}, "prompt": str}`
and the chunk is float32 [H, A] of absolute joint targets (or a response dict holding it under
"actions", as the openpi websocket client returns). The first `replan_steps` actions of each
chunk are executed, then the policy is asked again.

With an `InterventionRule`, the expert watches: when the policy's actions drift from what it
would do, or the task stops making progress, it takes over for a while. Frames the expert
acted on are flagged intervention=1, the policy's own frames 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from recap_core.sim.expert import ScriptedExpert
from recap_core.sim.operators import MISTAKES, Operator, OperatorSpec, mistake_kind
from recap_core.sim.render import render_cameras
from recap_core.sim.task import (
    ACTION_DIM,
    GRIPPER_INDICES,
    JOINT_INDICES,
    HandoverEnv,
    PolicyOutputError,
    TaskSpec,
    check_action,
)

PolicyFn = Callable[[dict[str, Any]], Any]


@dataclasses.dataclass(frozen=True)
class InterventionRule:
    """When the expert takes over from the policy, and for how long."""

    joint_threshold: float = 0.1  # rad between the policy's and the expert's joint target
    gripper_threshold: float = 0.5  # difference in gripper command (0 closed .. 1 open)
    drift_patience: int = 3  # consecutive drifting frames before the expert steps in
    stall_steps: int = 25  # frames without progress (expert's remaining work) before stepping in
    stall_eps: float = 0.01  # how much remaining work must drop to count as progress
    takeover_steps: int = 20  # frames the expert keeps control once it steps in


OPERATOR_RULE = InterventionRule(joint_threshold=0.2, drift_patience=5, stall_steps=25, takeover_steps=20)
"""How the demo's (and `recap sim rollouts`') operator corrects the robot: when it drifts or stalls.
Late enough that most frames stay the policy's own (its mistakes are what the value model must
find), early enough that a stuck policy is helped before the time runs out."""


@dataclasses.dataclass
class Episode:
    """One recorded episode, frame t = the observation at t and the action taken from it."""

    index: int
    variant: str
    prompt: str
    success: bool
    qpos: np.ndarray  # float32 [T, S]
    qvel: np.ndarray  # float32 [T, S]
    action: np.ndarray  # float32 [T, A]
    intervention: np.ndarray  # int64 [T]
    images: dict[str, np.ndarray]  # camera -> uint8 [T, H, W, 3]; empty when not recorded
    takeovers: int  # times the expert stepped in
    milestones: tuple[str, ...] = ()  # the MILESTONES this episode reached, in MILESTONES order
    operator: str = "careful"  # who recorded a demo ("policy" for rollouts and evaluations)
    # Ground truth, never given to training: per frame, the index in operators.MISTAKES of the
    # mistake its action makes ("none", "drop", "idle"); empty when not computed.
    mistake: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int8))

    @property
    def length(self) -> int:
        return len(self.action)


# Phases of the hand-over, for finer evaluation than success alone (a policy that grasps more
# often is better even when both finish rarely): the source arm held the cube, the destination
# arm held it, the episode succeeded.
MILESTONES = ("source_grasp", "dest_holds", "success")


def milestones_now(env: HandoverEnv) -> set[str]:
    """The milestones the scene shows at this frame."""
    now = set()
    if env.variant.source_arm in env.holders:
        now.add("source_grasp")
    if env.variant.dest_arm in env.holders:
        now.add("dest_holds")
    if env.success:
        now.add("success")
    return now


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of episode `index`: the same episode whatever the number of episodes run."""
    return np.random.default_rng([seed, index])


def make_observation(env: HandoverEnv, images: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"state": env.qpos.astype(np.float32), "images": images, "prompt": env.prompt}


def action_chunk(output: Any) -> np.ndarray:
    """A policy's output as float32 [H, A]; a single action [A] counts as a chunk of one."""
    if isinstance(output, Mapping):
        if "actions" not in output:
            raise PolicyOutputError(
                f"the policy's response has keys {sorted(map(str, output))}, expected 'actions'",
                fix="return {'actions': float[H, A]} (the openpi response format) or the array itself",
            )
        output = output["actions"]
    try:
        chunk = np.asarray(output, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PolicyOutputError(
            f"the policy returned {type(output).__name__}, expected an array float[H, {ACTION_DIM}]",
            fix="return a numpy array of absolute joint targets",
        ) from exc
    if chunk.ndim == 1:
        chunk = chunk[None]
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != ACTION_DIM:
        raise PolicyOutputError(
            f"the policy returned actions of shape {chunk.shape}, expected [H, {ACTION_DIM}] with H >= 1",
            fix=f"return absolute joint targets of dimension {ACTION_DIM} (slice padded model outputs)",
        )
    for action in chunk:
        check_action(action)
    return chunk


class _Watcher:
    """Decides, frame by frame, whether the expert should take over from the policy."""

    def __init__(self, rule: InterventionRule, expert: ScriptedExpert) -> None:
        self.rule = rule
        self.expert = expert
        self.drifting = 0
        self.best = np.inf
        self.best_at = 0

    def restart(self, env: HandoverEnv) -> None:
        self.drifting = 0
        self.best = self.expert.remaining_work(env)
        self.best_at = env.t

    def should_take_over(self, env: HandoverEnv, action: np.ndarray) -> bool:
        work = self.expert.remaining_work(env)
        if work < self.best - self.rule.stall_eps:
            self.best, self.best_at = work, env.t
        wanted = self.expert.action(env)
        diff = np.abs(action.astype(np.float64) - wanted)
        drift = bool(
            np.any(diff[JOINT_INDICES,] > self.rule.joint_threshold)
            or np.any(diff[GRIPPER_INDICES,] > self.rule.gripper_threshold)
        )
        self.drifting = self.drifting + 1 if drift else 0
        return self.drifting >= self.rule.drift_patience or env.t - self.best_at >= self.rule.stall_steps


def run_episode(
    task: TaskSpec,
    seed: int,
    index: int,
    policy_fn: PolicyFn | None = None,
    *,
    rule: InterventionRule | None = None,
    replan_steps: int = 5,
    record_images: bool = True,
    expert_noise: float = 0.01,
    operator: OperatorSpec | None = None,
) -> Episode:
    """Play one episode. `policy_fn=None`: the expert acts throughout (every frame flagged), or
    `operator` (a careful, sloppy or hesitant teleoperator, operators.OPERATORS) when given.

    `rule=None` with a policy: the policy acts alone (evaluation). Deterministic for
    (task, seed, index) given a deterministic policy. Every frame's ground-truth mistake is
    recorded (`Episode.mistake`).
    """
    if replan_steps < 1:
        raise ValueError("replan_steps must be >= 1")
    rng = episode_rng(seed, index)
    env = HandoverEnv(task, rng)
    expert = ScriptedExpert.for_episode(rng, noise_std=expert_noise)
    # The operator draws its choices from a generator of its own: the scene and the expert's noise
    # are the same whichever operator records the episode.
    teleop = Operator(operator, expert, np.random.default_rng([seed, index, 1])) if operator is not None else None
    watcher = _Watcher(rule, expert) if rule is not None and policy_fn is not None else None
    if watcher is not None:
        watcher.restart(env)
    qpos, qvel, actions, flags, mistakes = [], [], [], [], []
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in task.cameras} if record_images else {}
    pending: list[np.ndarray] = []  # the rest of the current chunk
    takeover_left = 0
    takeovers = 0
    reached: set[str] = set()
    while not env.done:
        images = render_cameras(env) if record_images else None
        by_expert = policy_fn is None or takeover_left > 0
        if not by_expert:
            if not pending:
                obs = make_observation(env, images if images is not None else render_cameras(env))
                pending = list(action_chunk(policy_fn(obs))[:replan_steps])
            action = pending.pop(0)
            if watcher is not None and watcher.should_take_over(env, action):
                takeover_left, takeovers, pending, by_expert = rule.takeover_steps, takeovers + 1, [], True
        if by_expert:
            action = teleop.action(env, rng) if teleop is not None and policy_fn is None else expert.action(env, rng)
            if takeover_left > 0:
                takeover_left -= 1
                if takeover_left == 0:
                    # Hand back with a fresh chunk and fresh drift/stall memory.
                    pending = []
                    watcher.restart(env)
        qpos.append(env.qpos.astype(np.float32))
        qvel.append(env.qvel.astype(np.float32))
        actions.append(np.asarray(action, np.float32))
        flags.append(1 if by_expert else 0)
        mistakes.append(MISTAKES.index(mistake_kind(env, action, expert)))
        if images is not None:
            for cam in task.cameras:
                frames[cam].append(images[cam])
        env.step(action)
        reached |= milestones_now(env)
    return Episode(
        index=index,
        variant=env.variant.name,
        prompt=env.prompt,
        success=env.success,
        qpos=np.stack(qpos),
        qvel=np.stack(qvel),
        action=np.stack(actions),
        intervention=np.asarray(flags, np.int64),
        images={cam: np.stack(f) for cam, f in frames.items()},
        takeovers=takeovers,
        milestones=tuple(m for m in MILESTONES if m in reached),
        operator="policy" if policy_fn is not None else (operator.name if operator is not None else "careful"),
        mistake=np.asarray(mistakes, np.int8),
    )
