"""`recap eval` without the printing: pick the policy (a run served on a loopback port for the
evaluation, a policy already served elsewhere, or the scripted expert), optionally measure a pi0.6
run's indicator effect, and run closed-loop episodes on the same scenes any other policy gets:
the built-in toy task (`evaluate_source`) or a gymnasium environment (`evaluate_gym_source`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recap_core.errors import ConfigError
from recap_core.sim.rollout import Episode


@dataclass(frozen=True)
class PolicySource:
    """Exactly one of: a run directory (or one of its checkpoints), a served policy's URL, the expert."""

    run: Path | None = None
    server: str | None = None
    expert: bool = False
    adv_ind: str | None = None
    """adv_ind sent with each observation (None: the server's default)."""
    cfg_beta: float = 1.0
    api_key: str | None = None
    connect_timeout_s: float = 30.0
    camera_map: Mapping[str, str] = field(default_factory=dict)
    """Client camera name -> the run's camera, for a run served here (`--camera MODEL=CLIENT`)."""

    def check(self, *, indicator_states: int = 0) -> None:
        given = [name for name, on in (("RUN_OR_CKPT", self.run), ("--server", self.server), ("--expert", self.expert))
                 if on]
        if len(given) != 1:
            raise ConfigError(
                f"give exactly one policy to evaluate (a run directory, --server or --expert), got {given or 'none'}",
                fix="recap eval runs/pi06 --task handover  |  recap eval --server ws://127.0.0.1:8000 --task handover"
                "  |  recap eval --expert --task handover",
            )
        if self.run is not None and not Path(self.run).exists():
            raise ConfigError(
                f"run directory or checkpoint {self.run} does not exist",
                fix="pass a recap run directory (with config.json) or <run>/checkpoints/<step>",
            )
        if indicator_states and self.run is None:
            raise ConfigError(
                "--indicator-effect needs the run's weights (it samples from fixed noise), not --server or --expert",
                fix="pass the run directory: recap eval runs/stage6 --task handover --indicator-effect 32",
            )
        if self.cfg_beta != 1.0 and self.run is None:
            raise ConfigError("--cfg-beta needs the run's weights (guidance happens inside the sampler), not "
                              "--server or --expert", fix="pass the run directory, or start `recap serve RUN --cfg-beta B`")
        if self.camera_map and self.run is None:
            raise ConfigError("--camera renames the cameras of a run served here, not of --server or --expert",
                              fix="pass the run directory, or start `recap serve RUN --camera MODEL=CLIENT`")

    @property
    def name(self) -> str:
        return "expert" if self.expert else str(self.run if self.run is not None else self.server)


def evaluate_source(
    source: PolicySource,
    task: str,
    episodes: int,
    seed: int,
    *,
    replan_steps: int = 5,
    indicator_states: int = 0,
    video_dir: Path | None = None,
    video_episodes: int = 3,
    overwrite: bool = False,
    progress: Callable[[], contextlib.AbstractContextManager[Callable[[Episode], None]]] | None = None,
    status: Callable[[str], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Closed-loop success of one policy (`EvalResult.as_dict()`, plus `indicator_effect` when asked).

    A run is loaded, served on 127.0.0.1 and reached through the openpi websocket protocol like any
    served policy. `status(text)` wraps the slow steps before the episodes (a spinner in the CLI);
    `progress()` is entered for the episodes and yields the callback each finished episode goes to."""
    from recap_core.fsutil import check_output
    from recap_core.sim.evaluate import evaluate
    from recap_core.sim.task import get_task

    spec = get_task(task)
    source.check(indicator_states=indicator_states)
    if video_dir is not None:
        check_output(video_dir, overwrite, inputs=(source.run,) if source.run is not None else ())
    effect = None
    with contextlib.ExitStack() as stack:
        policy_fn = None
        if not source.expert:
            url, effect = stack.enter_context(_served(source, spec, indicator_states, seed, status))
            from recap_core.sim.remote import remote_policy

            policy_fn = stack.enter_context(remote_policy(url, adv_ind=source.adv_ind, api_key=source.api_key,
                                                          connect_timeout_s=source.connect_timeout_s))
        on_episode = stack.enter_context(progress() if progress is not None else contextlib.nullcontext(None))
        result = evaluate(policy_fn, spec, episodes, seed, replan_steps=replan_steps, video_dir=video_dir,
                          video_episodes=video_episodes, overwrite=overwrite, policy_name=source.name,
                          progress=on_episode)
    out = result.as_dict()
    if effect is not None:
        out["indicator_effect"] = effect.as_dict()
    return out


@contextlib.contextmanager
def _served(source: PolicySource, spec: Any, indicator_states: int, seed: int,
            status: Callable[[str], contextlib.AbstractContextManager[Any]]) -> Iterator[tuple[str, Any]]:
    """The URL to reach the policy at (a run is served for the block) and the run's indicator effect."""
    if source.run is None:
        yield str(source.server), None
        return
    from recap_core.serve.loading import ServeOptions, load_policy
    from recap_core.sim.indicator import indicator_effect
    from recap_core.sim.remote import serve_policy

    with status(f"loading {source.run}"):
        policy = load_policy(Path(source.run), ServeOptions(default_adv_ind=source.adv_ind or "positive",
                                                            cfg_beta=source.cfg_beta, camera_map=source.camera_map))
    effect = None
    if indicator_states:
        with status(f"indicator effect on {indicator_states} states"):
            effect = indicator_effect(policy, spec, indicator_states, seed)
    with serve_policy(policy) as url:
        yield url, effect


def evaluate_gym_source(
    source: PolicySource,
    env: str,
    episodes: int,
    seed: int,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    adapter: str | None = None,
    replan_steps: int = 5,
    max_steps: int | None = None,
    prompt: str | None = None,
    progress: Callable[[], contextlib.AbstractContextManager[Callable[[Any], None]]] | None = None,
    status: Callable[[str], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Closed-loop success of one served policy on the gymnasium env `MODULE:ID` (`GymEvalResult.as_dict()`).

    The env and its adapter (see `sim.gym_env`) are made first, so a missing env package fails
    before a run loads; the run is then served on 127.0.0.1 as in `evaluate_source`."""
    from recap_core.sim import gym_env

    if source.expert:
        raise ConfigError("--expert is the built-in task's scripted expert; it cannot act in --env",
                          fix="evaluate a run (RUN_OR_CKPT) or a served policy (--server ws://HOST:PORT)")
    source.check()
    made = gym_env.make_env(env, env_kwargs)
    try:
        limit = gym_env.episode_limit(made, max_steps)
        env_adapter = gym_env.load_adapter(adapter, made)
        first, _ = made.reset(seed=seed)
        first_obs = env_adapter.observation(first)
        with contextlib.ExitStack() as stack:
            url, _ = stack.enter_context(_served(source, None, 0, seed, status))
            from recap_core.sim.remote import remote_policy

            policy_fn = stack.enter_context(remote_policy(
                url, adv_ind=source.adv_ind, api_key=source.api_key, connect_timeout_s=source.connect_timeout_s,
                check=lambda metadata, where: gym_env.check_gym_policy(metadata, where, first_obs)))
            on_episode = stack.enter_context(progress() if progress is not None else contextlib.nullcontext(None))
            result = gym_env.evaluate_gym(policy_fn, made, env_adapter, episodes, seed, env_name=env,
                                          policy_name=source.name, replan_steps=replan_steps, max_steps=limit,
                                          prompt=prompt, progress=on_episode)
    finally:
        made.close()
    return result.as_dict()
