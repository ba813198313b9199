"""The open-loop indicator check (`recap eval --indicator-effect`) measures what it says.

Stub samplers with a known dependence on adv_ind stand in for a model: one that shifts its
actions by a fixed amount when asked for "negative", one that ignores the indicator. The real
pi0.6 path is exercised end to end by `recap demo --fast` (tests/test_demo.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recap_core.errors import ConfigError
from recap_core.serve.observation import ObservationSpec
from recap_core.serve.policy import ModelPolicy
from recap_core.sim.indicator import expert_observations, indicator_effect
from recap_core.sim.task import ACTION_DIM, CAMERAS, STATE_DIM, VARIANTS

HORIZON = 6


class StubSampler:
    """Actions = 0.1 * noise, + `shift` when asked for "negative", + `prompt_shift` on the second variant."""

    noise_shape = (1, HORIZON, ACTION_DIM)

    def __init__(self, shift: float, prompt_shift: float = 0.0) -> None:
        self.shift, self.prompt_shift = shift, prompt_shift
        self.second_prompt = VARIANTS["right_to_left"].prompt

    def sample(self, batch: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        out = 0.1 * np.asarray(noise, np.float32)
        if str(batch["adv_ind"][0]) == "negative":
            out = out + self.shift
        if str(batch["prompt"][0]) == self.second_prompt:
            out = out + self.prompt_shift
        return out

    def __call__(self, batch: dict[str, Any]) -> np.ndarray:
        raise AssertionError("the indicator check must sample from fixed noise")


def _policy(sampler: Any, model: str = "pi0.6") -> ModelPolicy:
    spec = ObservationSpec(state_dim=STATE_DIM, cameras=CAMERAS, image_size=(48, 48))
    return ModelPolicy(spec, sampler, action_horizon=HORIZON, action_dim=ACTION_DIM, metadata={"model": model})


def test_a_policy_that_follows_the_indicator_moves_by_its_shift() -> None:
    effect = indicator_effect(_policy(StubSampler(shift=0.5, prompt_shift=0.3)), "handover", states=6, seed=1)
    assert effect.positive_vs_negative == pytest.approx(0.5, abs=1e-6)
    assert effect.positive_vs_none == pytest.approx(0.0, abs=1e-7)  # "none" is not "negative"
    assert effect.prompt_swap == pytest.approx(0.3, abs=1e-6)
    # Two standard normals: E|0.1 (z1 - z2)| = 0.1 * 2 / sqrt(pi) ~ 0.113.
    assert 0.08 < effect.sampling_spread < 0.15
    assert effect.relative == pytest.approx(0.5 / effect.sampling_spread)
    assert effect.as_dict()["states"] == 6 and effect.steps == 5


def test_a_policy_that_ignores_the_indicator_shows_none() -> None:
    effect = indicator_effect(_policy(StubSampler(shift=0.0)), "handover", states=4, seed=0, steps=2)
    assert effect.positive_vs_negative == 0.0 and effect.relative == 0.0 and effect.prompt_swap == 0.0


def test_same_seed_same_numbers() -> None:
    policy = _policy(StubSampler(shift=0.2))
    assert indicator_effect(policy, "handover", 3, seed=4) == indicator_effect(policy, "handover", 3, seed=4)


def test_states_come_from_both_variants_and_all_phases() -> None:
    obs = expert_observations("handover", 32, seed=0)
    assert len(obs) == 32
    assert {o["prompt"] for o in obs} == {v.prompt for v in VARIANTS.values()}
    assert len({round(float(o["state"][0]), 4) for o in obs}) > 16  # the arms move between samples


def test_a_pi05_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pi0\.6") as err:
        indicator_effect(_policy(StubSampler(0.0), model="pi0.5"), "handover", 2)
    assert "recap finetune" in err.value.fix


def test_cli_refuses_the_check_without_a_run(tmp_path) -> None:
    from tests.conftest import run_recap

    proc = run_recap("eval", "--expert", "--episodes", "1", "--indicator-effect", "4")
    assert proc.returncode == 2 and "--indicator-effect needs the run's weights" in proc.stderr
