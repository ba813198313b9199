"""A tiny pure-Python gymnasium env for the `recap eval --env` tests (made as
`tests.sim.tiny_env:TinyReach`, so nothing is registered): move a point to a target.

Observation `{"agent_pos": float32[dim + 1], "pixels": {"top": uint8[8, 8, 3]}}`: the position, then
the elapsed share of the time limit; the image shows the target (row i holds (target_i + 1) / 2 * 255).
Action float32[dim]: where to go; the point moves at most SPEED per coordinate and step.
Reward 4 and `info["is_success"]` (the episode terminates) once every coordinate is within TOLERANCE
of the target; 1 within 0.5; else 0 (gym-aloha's TransferCube also rewards success with 4). The
episode is truncated after `time_limit` steps.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from recap_core.sim.gym_env import DictObsAdapter

SPEED, TOLERANCE, IMAGE = 0.1, 0.05, 8


class TinyReach(gymnasium.Env):
    def __init__(self, dim: int = 2, time_limit: int = 100) -> None:
        self.dim, self.time_limit = dim, time_limit
        self.observation_space = spaces.Dict({
            "agent_pos": spaces.Box(-2.0, 2.0, (dim + 1,), np.float32),
            "pixels": spaces.Dict({"top": spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8)}),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.target = np.zeros(dim)
        self.pos = np.zeros(dim)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.target = self.np_random.uniform(-0.9, 0.9, self.dim)
        self.pos, self.t = np.zeros(self.dim), 0
        return self._obs(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.pos = self.pos + np.clip(np.asarray(action, np.float64) - self.pos, -SPEED, SPEED)
        self.t += 1
        gap = float(np.max(np.abs(self.pos - self.target)))
        success = gap <= TOLERANCE
        reward = 4.0 if success else 1.0 if gap <= 0.5 else 0.0
        return self._obs(), reward, success, self.t >= self.time_limit, {"is_success": success}

    def _obs(self) -> dict[str, Any]:
        image = np.zeros((IMAGE, IMAGE, 3), np.uint8)
        image[: self.dim] = np.round((self.target + 1) / 2 * 255).astype(np.uint8)[:, None, None]
        state = np.append(self.pos, self.t / self.time_limit).astype(np.float32)
        return {"agent_pos": state, "pixels": {"top": image}}


def target_from_image(image: np.ndarray, dim: int) -> np.ndarray:
    """What the expert reads: the target, to 1/255 of the [-1, 1] range."""
    return image[:dim, 0, 0].astype(np.float32) / 255 * 2 - 1


def expert_steps(target: np.ndarray) -> int:
    """Steps the expert needs: the farthest coordinate closes SPEED a step until within TOLERANCE."""
    return max(1, math.ceil((float(np.max(np.abs(target))) - TOLERANCE) / SPEED))


class ReachExpert:
    """A served policy that reads the target off the image and heads straight there. `asked_at` records the
    state's time feature of every request (the env step it came at, as a share of the time limit)."""

    def __init__(self, dim: int = 2, horizon: int = 8, camera: str = "top") -> None:
        self.dim, self.horizon, self.camera = dim, horizon, camera
        self.asked_at: list[float] = []
        self.metadata = {"policy": "reach-expert", "action_horizon": horizon, "action_dim": dim,
                         "state_dim": dim + 1, "cameras": [camera]}

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self.asked_at.append(float(obs["state"][-1]))
        target = target_from_image(np.asarray(obs["images"][self.camera]), self.dim)
        return {"actions": np.tile(target, (self.horizon, 1)).astype(np.float32)}


class LooseAdapter(DictObsAdapter):
    """An `--adapter` example: the image goes out as cam_high, and within 0.5 of the target counts as success."""

    def observation(self, obs: Any) -> dict[str, Any]:
        return {"state": np.asarray(obs["agent_pos"], np.float32), "images": {"cam_high": obs["pixels"]["top"]}}

    def success(self, reward: float, terminated: bool, info: Any) -> bool:
        return reward >= 1.0


def loose_adapter(env: gymnasium.Env) -> LooseAdapter:
    return LooseAdapter(env)
