"""Small deterministic policies for the serving tests (real policies, tiny and predictable)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from recap_core.serve.observation import ObservationSpec
from recap_core.serve.policy import ModelPolicy

HORIZON, ACTION_DIM, STATE_DIM = 4, 3, 5
ADV_OFFSET = {"positive": 1000.0, "negative": -1000.0, "none": 0.0}


def expected_actions(state: np.ndarray, adv_ind: str = "positive", horizon: int = HORIZON) -> np.ndarray:
    """What `state_echo_policy` answers: action[h, d] = state[d] + h + offset(adv_ind)."""
    base = np.asarray(state, np.float32)[:ACTION_DIM]
    steps = np.arange(horizon, dtype=np.float32)[:, None]
    return base[None, :] + steps + np.float32(ADV_OFFSET[adv_ind])


def _echo_sampler(batch: dict[str, Any]) -> np.ndarray:
    # Output depends on state and adv_ind, so answers from concurrent clients cannot be mixed up.
    # A model pads its action dim; return 2 extra columns that the policy must cut off.
    actions = expected_actions(batch["state"][0], batch["adv_ind"][0])
    return np.concatenate([actions, np.full((HORIZON, 2), -7.0, np.float32)], axis=1)[None]


def state_echo_policy(spec: ObservationSpec | None = None, **hooks: Any) -> ModelPolicy:
    spec = spec or ObservationSpec(state_dim=STATE_DIM, image_size=(8, 8), default_prompt="test task")
    return ModelPolicy(spec, _echo_sampler, action_horizon=HORIZON, action_dim=ACTION_DIM, **hooks)


def echo_observation(value: float, **extra: Any) -> dict[str, Any]:
    return {
        "state": np.full(STATE_DIM, value, np.float32),
        "images": {"cam_high": np.zeros((3, 8, 8), np.uint8)},
        **extra,
    }


class GatedPolicy:
    """Blocks in `infer` until the test opens the gate (bounded), so tests control 'slow' inference."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.metadata: dict[str, Any] = {"policy": "gated"}
        self.started = threading.Event()
        self.gate = threading.Event()
        self.finished = threading.Event()
        self._timeout_s = timeout_s

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        self.gate.wait(self._timeout_s)
        self.finished.set()
        return {"actions": np.full((2, 2), float(np.asarray(obs.get("x", 0))), np.float32)}


class BuggyPolicy:
    """Raises a non-user error when asked to, like a policy with a bug."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {"policy": "buggy"}

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if obs.get("boom"):
            raise ZeroDivisionError("policy bug")
        return {"actions": np.ones((2, 2), np.float32)}
