"""What the server serves: the `Policy` protocol, the zeros policy and the model-backed policy.

A policy is anything with a `metadata` dict (sent to each client on connect) and
`infer(obs) -> {"actions": float32[H, D], ...}`. `ModelPolicy` is the one a checkpoint becomes:
it maps the wire observation to the batch contract (`observation.prepare_observation`),
normalises the state, calls the model's sampler and un-normalises the actions. The model
itself is one callable, so plugging a new model in means writing one `sample_actions` function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recap_core.serve.observation import (
    ObservationSpec,
    RequestError,
    example_observation,
    prepare_observation,
)

# batch (see docs/internals.md, leading dim 1) -> actions float[1, H, A_model] or [H, A_model]
SampleActions = Callable[[dict[str, Any]], np.ndarray]
# normalise the raw state / un-normalise model actions (openpi norm_stats.json semantics)
ArrayTransform = Callable[[np.ndarray], np.ndarray]
# (model actions [H, A], the request's raw state [S]) -> robot actions (unnormalised, absolute).
ActionTransform = Callable[[np.ndarray, np.ndarray], np.ndarray]


@runtime_checkable
class Policy(Protocol):
    """Anything the websocket server can serve."""

    metadata: dict[str, Any]

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


def warm_up(policy: Policy) -> None:
    """Run one inference so compilation happens before the port opens, not on a robot's first step."""
    make_example = getattr(policy, "example_observation", None)
    if callable(make_example):
        policy.infer(make_example())


class ZerosPolicy:
    """Answers every observation with zero actions of a fixed shape.

    For wiring up a robot (ports, message shapes, control loop timing) before any checkpoint
    exists. It accepts any observation dict.
    """

    def __init__(self, action_horizon: int, action_dim: int) -> None:
        if action_horizon < 1 or action_dim < 1:
            raise RequestError(
                f"action shape must be positive, got {action_horizon},{action_dim}",
                fix="pass --action-shape H,D, e.g. --action-shape 50,14",
            )
        self._actions = np.zeros((action_horizon, action_dim), np.float32)
        self._actions.setflags(write=False)
        self.metadata: dict[str, Any] = {
            "policy": "zeros",
            "action_horizon": action_horizon,
            "action_dim": action_dim,
        }

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(obs, Mapping):
            raise RequestError(f"an observation must be a dict, got {type(obs).__name__}")
        return {"actions": self._actions}

    def example_observation(self) -> dict[str, Any]:
        return {}


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _actions_as_is(actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    return actions


class ModelPolicy:
    """A trained model behind the wire format: validate + map the request, sample, post-process."""

    def __init__(
        self,
        spec: ObservationSpec,
        sample_actions: SampleActions,
        *,
        action_horizon: int,
        action_dim: int,
        normalize_state: ArrayTransform | None = None,
        unnormalize_actions: ActionTransform | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self._sample_actions = sample_actions
        self._normalize_state = normalize_state or _identity
        self._unnormalize_actions = unnormalize_actions or _actions_as_is
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self.metadata = {
            "action_horizon": action_horizon,
            "action_dim": action_dim,
            **spec.describe(),
            **(metadata or {}),
        }

    def example_observation(self) -> dict[str, Any]:
        return example_observation(self.spec)

    @property
    def noise_shape(self) -> tuple[int, ...] | None:
        """Shape of the sampler's starting noise, where it takes fixed noise (see `infer`)."""
        return getattr(self._sample_actions, "noise_shape", None)

    def infer(self, obs: dict[str, Any], *, noise: np.ndarray | None = None) -> dict[str, Any]:
        """Actions for one observation. `noise` fixes the sampler's starting noise (diagnostics that
        compare prompts on equal terms); None draws fresh noise, as serving does."""
        start = time.perf_counter()
        batch = prepare_observation(obs, self.spec)
        raw_state = np.asarray(batch["state"], np.float32)
        batch["state"] = np.asarray(self._normalize_state(batch["state"]), np.float32)
        if noise is None:
            actions = np.asarray(self._sample_actions(batch))
        elif callable(getattr(self._sample_actions, "sample", None)):
            actions = np.asarray(self._sample_actions.sample(batch, noise))  # type: ignore[attr-defined]
        else:
            raise TypeError(f"{type(self._sample_actions).__name__} does not take fixed noise")
        if actions.ndim == 3:
            actions = actions[0]
        actions = np.asarray(self._unnormalize_actions(actions, raw_state[0] if raw_state.ndim == 2 else raw_state),
                             np.float32)
        if actions.ndim != 2 or actions.shape[0] != self.action_horizon or actions.shape[1] < self.action_dim:
            # The model broke its own contract: a bug, not a user mistake, so no RequestError.
            raise ValueError(
                f"model returned actions of shape {list(actions.shape)}, "
                f"expected [{self.action_horizon}, >={self.action_dim}]"
            )
        # Models pad the action dim (e.g. 32); the robot gets its own D, as openpi's AlohaOutputs does.
        return {
            "actions": np.ascontiguousarray(actions[:, : self.action_dim]),
            "policy_timing": {"infer_ms": (time.perf_counter() - start) * 1000.0},
        }
