"""Does an advantage-conditioned policy respond to its indicator? An open-loop check on toy-task states.

On states the scripted expert visits, the policy's first `steps` actions are sampled from the same
starting noise with "Advantage: positive" and with "negative", and their mean absolute difference
(in the robot's units, radians for the toy arms) is set against two references from the same states:

- sampling spread: "positive" twice with different noise, i.e. how much the sampler alone moves them;
- prompt swap: "positive" with the other task variant's instruction, i.e. how much a change of
  language moves them (a model that reads its prompt at all).

A policy that learned the clause moves its actions with it by a sizeable share of the sampling
spread. One that ignores it moves them about as much as a run that never saw a negative label: the
new token's untrained embedding alone shifts the demo's tiny policy by ~0.02 rad.

Closed-loop success (`recap eval --adv-ind negative`) answers the same question, but needs many
more episodes to tell a small effect from chance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from recap_core.errors import ConfigError
from recap_core.sim.rollout import run_episode
from recap_core.sim.task import VARIANTS, TaskSpec, get_task

STATE_EVERY = 25  # frames between two sampled states of one expert episode (4-5 per episode)


@dataclasses.dataclass(frozen=True)
class IndicatorEffect:
    states: int
    steps: int
    positive_vs_negative: float
    positive_vs_none: float
    sampling_spread: float
    prompt_swap: float

    @property
    def relative(self) -> float:
        """positive_vs_negative as a share of the sampling spread."""
        return self.positive_vs_negative / self.sampling_spread if self.sampling_spread > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "relative": self.relative}


def expert_observations(task: TaskSpec | str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` observations along scripted-expert episodes: every STATE_EVERY frames from an offset
    that shifts with each episode, so the states cover every phase of the task and both variants."""
    spec = get_task(task)
    out: list[dict[str, Any]] = []
    episode = 0
    while len(out) < count:
        played = run_episode(spec, seed, episode)  # the expert throughout
        for t in range((5 + 7 * episode) % STATE_EVERY, played.length, STATE_EVERY):
            images = {cam: frames[t] for cam, frames in played.images.items()}
            out.append({"state": played.qpos[t], "images": images, "prompt": played.prompt})
        episode += 1
    return out[:count]


def _other_prompt(prompt: str) -> str:
    return next(v.prompt for v in VARIANTS.values() if v.prompt != prompt)


def indicator_effect(policy: Any, task: TaskSpec | str, states: int = 32, seed: int = 0, *,
                     steps: int = 5) -> IndicatorEffect:
    """Measure how much `policy` (a `ModelPolicy` of a pi0.6 run) moves its actions with adv_ind."""
    if policy.metadata.get("model") != "pi0.6":
        raise ConfigError(
            f"the indicator effect needs an advantage-conditioned (pi0.6) policy, this one is "
            f"{policy.metadata.get('model', 'unknown')}",
            fix="pass a `recap finetune` run",
        )
    shape = policy.noise_shape
    if shape is None:
        raise ConfigError("this policy's sampler cannot be given fixed noise", fix="pass a recap pi0.6 run")
    if states < 1 or steps < 1:
        raise ConfigError(f"states={states} and steps={steps} must both be >= 1", fix="pass positive counts")
    rng = np.random.default_rng(seed)

    def act(obs: dict[str, Any], adv: str, noise: np.ndarray) -> np.ndarray:
        return np.asarray(policy.infer({**obs, "adv_ind": adv}, noise=noise)["actions"])[:steps]

    diffs: dict[str, list[float]] = {"neg": [], "none": [], "spread": [], "prompt": []}
    for obs in expert_observations(task, states, seed):
        noise, other = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
        positive = act(obs, "positive", noise)
        diffs["neg"].append(float(np.abs(positive - act(obs, "negative", noise)).mean()))
        diffs["none"].append(float(np.abs(positive - act(obs, "none", noise)).mean()))
        diffs["spread"].append(float(np.abs(positive - act(obs, "positive", other)).mean()))
        swapped = {**obs, "prompt": _other_prompt(obs["prompt"])}
        diffs["prompt"].append(float(np.abs(positive - act(swapped, "positive", noise)).mean()))
    mean = {k: float(np.mean(v)) for k, v in diffs.items()}
    return IndicatorEffect(states, steps, mean["neg"], mean["none"], mean["spread"], mean["prompt"])
