"""Closed-loop evaluation on a gymnasium environment (`recap eval RUN --env MODULE:ID`).

The policy is reached over the openpi websocket protocol, exactly as the built-in task does, so
what is evaluated is what a robot would get. An *adapter* translates between the environment
and the wire format; it is any object with three methods::

    observation(env_obs) -> {"state": float[S], "images": {camera: uint8[H, W, 3]}, ["prompt": str]}
    action(row: float32[D]) -> what env.step takes (one row of the served action chunk)
    success(reward, terminated, info) -> bool

`--env` takes `MODULE:ID` (importing MODULE registers ID), `MODULE:CLASS` (an env class, made
without registering anything) or a registered `ID`. `--adapter MODULE:FUNC` names a function `FUNC(env) -> adapter`. Without it, `DictObsAdapter`
reads Dict observation spaces like gym-aloha's `obs_type="pixels_agent_pos"`: the state from
`agent_pos` (or `state`), the cameras from `pixels` (a dict camera -> image, or one image, then
named "pixels"), actions as float arrays of the env's Box action shape, success from
`info["is_success"]` (or `info["success"]`). Subclass it to change one of the three.

An episode resets with `seed + k`, asks for a chunk, executes its first `replan_steps` actions,
and repeats until success (the episode ends there), `terminated`, `truncated` or `max_steps`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from recap_core.errors import ConfigError
from recap_core.sim.evaluate import success_stats
from recap_core.sim.task import PolicyOutputError

DEFAULT_MAX_STEPS = 500  # when the env has no time limit of its own
STATE_KEYS = ("agent_pos", "state")
SUCCESS_KEYS = ("is_success", "success")
# Hints for env modules that users commonly lack: module prefix -> install command.
INSTALL_HINTS = {"gym_aloha": "pip install 'recap[aloha]'  (or: pip install gym-aloha)"}
RENDER_HINT = "MuJoCo envs render headless with MUJOCO_GL=egl (or osmesa without a GPU)"

# observation dict -> reply {"actions": float32[H, D], ...}, as `sim.remote.remote_policy` yields
PolicyFn = Callable[[dict[str, Any]], Any]


class EnvAdapter(Protocol):
    """Translates between one gymnasium env and the openpi wire format."""

    def observation(self, obs: Any) -> dict[str, Any]: ...

    def action(self, row: np.ndarray) -> Any: ...

    def success(self, reward: float, terminated: bool, info: Mapping[str, Any]) -> bool: ...


@dataclasses.dataclass(frozen=True)
class GymEpisode:
    index: int
    seed: int
    success: bool
    length: int  # env steps taken
    steps_to_success: int | None
    max_reward: float
    total_reward: float
    chunks: int  # policy requests made


@dataclasses.dataclass(frozen=True)
class GymEvalResult:
    env: str
    policy: str
    seed: int
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    replan_steps: int
    max_steps: int
    mean_length: float
    max_reward: float  # the best reward any episode reached
    mean_max_reward: float  # the best reward of each episode, averaged
    mean_steps_to_success: float | None
    outcomes: list[GymEpisode]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_reference(text: str, what: str, example: str) -> tuple[str, str]:
    """`"package.module:NAME"` -> ("package.module", "NAME")."""
    module, sep, name = text.rpartition(":")
    if not sep or not module or not name:
        raise ConfigError(f"{what} {text!r} is not MODULE:NAME", fix=f"e.g. {what} {example}")
    return module, name


def import_module(name: str, what: str) -> Any:
    """Import a user-named module; a missing one (or a missing dependency of it) is a ConfigError."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        hint = next((cmd for prefix, cmd in INSTALL_HINTS.items() if name.split(".")[0] == prefix), None)
        raise ConfigError(
            f"{what}: cannot import {name!r} ({exc})",
            fix=(hint or f"install the package that provides {name!r} into this environment") + f"; {RENDER_HINT}",
        ) from exc


def make_env(env: str, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """A gymnasium env from `MODULE:ID` (importing MODULE registers ID, as gym-aloha does), `MODULE:CLASS`
    (an env class or factory in MODULE, made without registering anything) or a registered `ID`."""
    try:
        import gymnasium
        from gymnasium.envs.registration import EnvSpec
    except ImportError as exc:
        raise ConfigError("--env needs gymnasium", fix="pip install gymnasium") from exc
    target: str | EnvSpec = env
    if ":" in env:
        module_name, name = split_reference(env, "--env", "gym_aloha:gym_aloha/AlohaTransferCube-v0")
        module = import_module(module_name, f"--env {env}")
        target = name
        if name not in gymnasium.registry and callable(getattr(module, name, None)):
            target = EnvSpec(id=name, entry_point=getattr(module, name))
    try:
        return gymnasium.make(target, **dict(env_kwargs or {}))
    except gymnasium.error.Error as exc:
        raise ConfigError(
            f"--env {env}: gymnasium cannot make it ({exc})",
            fix="give MODULE:ID where importing MODULE registers ID (e.g. gym_aloha:gym_aloha/AlohaTransferCube-v0), "
            "or MODULE:CLASS for an env class in MODULE",
        ) from exc
    except TypeError as exc:  # a keyword the env's constructor does not take
        if not env_kwargs:
            raise
        raise ConfigError(f"--env-kwargs do not fit {env}: {exc}", fix="check the env's constructor arguments") from exc


def load_adapter(reference: str | None, env: Any) -> EnvAdapter:
    """`FUNC(env)` for `--adapter MODULE:FUNC`, else the default `DictObsAdapter(env)`."""
    if reference is None:
        return DictObsAdapter(env)
    module_name, name = split_reference(reference, "--adapter", "my_envs.aloha:make_adapter")
    factory = getattr(import_module(module_name, f"--adapter {reference}"), name, None)
    if not callable(factory):
        raise ConfigError(f"--adapter {reference}: {module_name} has no function {name!r}",
                          fix="name a function FUNC(env) -> adapter (see `recap eval --help`)")
    adapter = factory(env)
    missing = [m for m in ("observation", "action", "success") if not callable(getattr(adapter, m, None))]
    if missing:
        raise ConfigError(f"--adapter {reference} returned a {type(adapter).__name__} without {', '.join(missing)}",
                          fix="return an object with observation(obs), action(row) and success(reward, terminated, info)")
    return adapter


class DictObsAdapter:
    """The default adapter: Dict observations {agent_pos|state, pixels}, a Box action space."""

    def __init__(self, env: Any) -> None:
        from gymnasium import spaces

        name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        obs_space, act_space = env.observation_space, env.action_space
        keys = list(obs_space.spaces) if isinstance(obs_space, spaces.Dict) else []
        self.state_key = next((k for k in STATE_KEYS if k in keys), None)
        if self.state_key is None or "pixels" not in keys:
            raise ConfigError(
                f"{name} observes {_describe_space(obs_space)}; the default adapter reads a Dict with "
                f"{' or '.join(STATE_KEYS)} and 'pixels'",
                fix="for gym-aloha add --env-kwargs '{\"obs_type\": \"pixels_agent_pos\"}'; for other envs write an "
                "adapter and pass --adapter MODULE:FUNC (see `recap eval --help`)",
            )
        if not isinstance(act_space, spaces.Box):
            raise ConfigError(f"{name} takes {_describe_space(act_space)} actions; the default adapter sends float arrays",
                              fix="write an adapter whose action(row) builds the env's action (--adapter MODULE:FUNC)")
        self.action_shape = tuple(act_space.shape)
        self.action_dtype = act_space.dtype

    def observation(self, obs: Any) -> dict[str, Any]:
        pixels = obs["pixels"]
        images = dict(pixels) if isinstance(pixels, Mapping) else {"pixels": pixels}
        return {"state": np.asarray(obs[self.state_key], np.float32).reshape(-1), "images": images}

    def action(self, row: np.ndarray) -> np.ndarray:
        if row.size != math.prod(self.action_shape):
            raise PolicyOutputError(
                f"the policy sends {row.size} action values per step; the env takes {list(self.action_shape)}",
                fix="evaluate a policy trained on this env's action space",
            )
        return np.asarray(row, self.action_dtype).reshape(self.action_shape)

    def success(self, reward: float, terminated: bool, info: Mapping[str, Any]) -> bool:
        return any(bool(info.get(key, False)) for key in SUCCESS_KEYS)


def _describe_space(space: Any) -> str:
    spaces = getattr(space, "spaces", None)
    return f"Dict with keys {sorted(spaces)}" if isinstance(spaces, Mapping) else type(space).__name__


def check_gym_policy(metadata: Mapping[str, Any], url: str, first_obs: Mapping[str, Any]) -> None:
    """Refuse a served policy whose announced state size or cameras cannot read the env's observations."""
    state_dim = metadata.get("state_dim")
    state = np.asarray(first_obs.get("state"))
    if state_dim is not None and state.size != int(state_dim):
        raise PolicyOutputError(
            f"the env's state has {state.size} values; the policy at {url} reads state_dim={state_dim}",
            fix="evaluate a policy trained on this env, or write an adapter that builds its state (--adapter)",
        )
    cameras = metadata.get("cameras")
    sent = sorted(first_obs.get("images") or {})
    if cameras is None:
        return
    unknown = sorted(set(sent) - set(cameras) - set(metadata.get("ignored_cameras") or ()))
    if unknown or not set(sent) & set(cameras):
        example = f"{cameras[0]}={unknown[0] if unknown else 'CLIENT'}" if cameras else "MODEL=CLIENT"
        raise PolicyOutputError(
            f"the env renders cameras {sent}; the policy at {url} reads {list(cameras)}",
            fix=f"map the names when serving the run, e.g. --camera {example} "
            "(recap eval RUN --camera ... or recap serve RUN --camera ...)",
        )


def run_gym_episode(
    env: Any,
    adapter: EnvAdapter,
    policy_fn: PolicyFn,
    *,
    index: int,
    seed: int,
    replan_steps: int,
    max_steps: int,
    prompt: str | None = None,
) -> GymEpisode:
    """One episode from `env.reset(seed=seed)`; ends at success, termination, truncation or max_steps."""
    raw, _ = env.reset(seed=seed)
    length, chunks, best, total, won = 0, 0, -math.inf, 0.0, False
    done = False
    while not done and length < max_steps:
        chunk = _actions(policy_fn(_wire_observation(adapter, raw, prompt)))
        chunks += 1
        for row in chunk[:replan_steps]:
            raw, reward, terminated, truncated, info = env.step(adapter.action(row))
            length += 1
            best, total = max(best, float(reward)), total + float(reward)
            won = bool(adapter.success(float(reward), bool(terminated), info))
            done = won or bool(terminated) or bool(truncated) or length >= max_steps
            if done:
                break
    return GymEpisode(index, seed, won, length, length if won else None, best if length else 0.0, total, chunks)


def _wire_observation(adapter: EnvAdapter, raw: Any, prompt: str | None) -> dict[str, Any]:
    obs = adapter.observation(raw)
    return {**obs, "prompt": prompt} if prompt is not None else obs


def _actions(reply: Any) -> np.ndarray:
    actions = np.asarray(reply.get("actions") if isinstance(reply, Mapping) else None)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.dtype.kind not in "biuf":
        raise PolicyOutputError(f"the policy answered actions of shape {list(actions.shape)}, expected [H, D]",
                                fix="serve a policy that returns an action chunk")
    if not np.all(np.isfinite(actions)):
        raise PolicyOutputError("the policy answered NaN or inf actions", fix="check the served run")
    return actions


def episode_limit(env: Any, max_steps: int | None) -> int:
    """`--max-steps`, else the env's own time limit, else DEFAULT_MAX_STEPS."""
    if max_steps is not None:
        if max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {max_steps}", fix="e.g. --max-steps 400")
        return max_steps
    spec_limit = env.spec.max_episode_steps if env.spec is not None else None
    return int(spec_limit) if spec_limit else DEFAULT_MAX_STEPS


def evaluate_gym(
    policy_fn: PolicyFn,
    env: Any,
    adapter: EnvAdapter,
    episodes: int,
    seed: int,
    *,
    env_name: str,
    policy_name: str,
    replan_steps: int = 5,
    max_steps: int | None = None,
    prompt: str | None = None,
    progress: Callable[[GymEpisode], None] | None = None,
) -> GymEvalResult:
    """Run `episodes` episodes (episode k resets with seed + k) and summarise them."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}", fix="e.g. --episodes 50")
    if replan_steps < 1:
        raise ConfigError(f"--replan-steps must be >= 1, got {replan_steps}", fix="e.g. --replan-steps 10")
    limit = episode_limit(env, max_steps)
    outcomes = []
    for k in range(episodes):
        episode = run_gym_episode(env, adapter, policy_fn, index=k, seed=seed + k, replan_steps=replan_steps,
                                  max_steps=limit, prompt=prompt)
        outcomes.append(episode)
        if progress is not None:
            progress(episode)
    return summarize_gym(env_name, policy_name, seed, replan_steps, limit, outcomes)


def summarize_gym(env: str, policy: str, seed: int, replan_steps: int, max_steps: int,
                  outcomes: list[GymEpisode]) -> GymEvalResult:
    won = [o.steps_to_success for o in outcomes if o.steps_to_success is not None]
    return GymEvalResult(
        env=env,
        policy=policy,
        seed=seed,
        **success_stats(outcomes),
        replan_steps=replan_steps,
        max_steps=max_steps,
        max_reward=max(o.max_reward for o in outcomes),
        mean_max_reward=float(np.mean([o.max_reward for o in outcomes])),
        mean_steps_to_success=float(np.mean(won)) if won else None,
        outcomes=outcomes,
    )
