"""Tiny models shared by the weights tests (built abstractly: no parameter memory)."""

from __future__ import annotations

import dataclasses

import pytest
from flax import nnx

from recap_core.models.pi0 import Pi0, Pi0Config

TINY = Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy_expert", siglip_variant="tiny",
                 image_size=32, image_keys=("base_0_rgb",), action_dim=4, action_horizon=3, vocab_size=64,
                 dtype="float32", remat=False)
TINY_LORA = dataclasses.replace(TINY, paligemma_variant="dummy_lora", action_expert_variant="dummy_expert_lora")


def abstract_policy(config: Pi0Config) -> Pi0:
    return nnx.eval_shape(lambda: Pi0(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="session")
def tiny_full() -> Pi0:
    return abstract_policy(TINY)


@pytest.fixture(scope="session")
def tiny_lora() -> Pi0:
    return abstract_policy(TINY_LORA)
