"""Presets: names, abstract sizes equal to the sum of their parts (checked against transformers), CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import SiglipVisionConfig, SiglipVisionModel

from recap_core import presets
from recap_core.errors import ConfigError
from recap_core.models import gemma
from recap_core.models.siglip import Siglip

EXPECTED = ["pi05", "pi05-lora", "pi06", "pi06-lora", "pi05-tiny", "pi06-tiny", "value", "value-tiny"]


def _hf_siglip_so400m_without_pooling_head() -> int:
    """transformers' So400m/14 vision tower at 224 px, counted on the meta device (no memory)."""
    with torch.device("meta"):
        hf = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
            patch_size=14, image_size=224, vision_use_head=False))
    return sum(p.numel() for p in hf.parameters())


def _abstract_count(build) -> int:
    model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_names_and_unknown_preset() -> None:
    assert presets.preset_names() == EXPECTED
    assert {p.kind for p in presets.list_presets()} == {"policy", "value"}
    with pytest.raises(ConfigError, match="pi06-lora") as info:
        presets.get_preset("pi07")
    assert info.value.fix
    assert presets.get_preset("pi06").model.pi06 and not presets.get_preset("pi05").model.pi06


@pytest.mark.parametrize("name", ["pi05", "pi06"])
def test_policy_size_is_the_sum_of_backbones_and_heads(name: str) -> None:
    config = presets.get_preset(name).model
    siglip = _hf_siglip_so400m_without_pooling_head() + 1152 * 2048 + 2048  # + linear head to the Gemma width
    assert _abstract_count(lambda r: Siglip(config.siglip, rngs=r)) == siglip
    llm = gemma.count_params(gemma.get_config("gemma_2b"), 257_152) + gemma.count_params(
        gemma.get_config("gemma_300m"), None, adaptive=True)
    heads = (32 * 1024 + 1024) + (1024 * 32 + 32) + 2 * (1024 * 1024 + 1024)  # action in/out, time MLP
    size = presets.preset_size(name)
    assert size.total_params == siglip + llm + heads == 3_353_433_872
    assert size.trainable_params == size.total_params  # full fine-tune
    assert size.train_memory_bytes == 16 * size.total_params


def test_lora_presets_train_adapters_and_heads_only() -> None:
    import dataclasses

    base, lora = presets.preset_size("pi05"), presets.preset_size("pi06-lora")
    assert presets.preset_size("pi05-lora") == lora
    adapters = (gemma.count_params(gemma.get_config("gemma_2b_lora"), None)
                - gemma.count_params(gemma.get_config("gemma_2b"), None)
                + gemma.count_params(gemma.get_config("gemma_300m_lora"), None)
                - gemma.count_params(gemma.get_config("gemma_300m"), None))
    assert lora.total_params == base.total_params + adapters
    llm_base = gemma.count_params(gemma.get_config("gemma_2b"), 257_152) + gemma.count_params(
        gemma.get_config("gemma_300m"), None, adaptive=True)
    siglip = _hf_siglip_so400m_without_pooling_head() + 1152 * 2048 + 2048  # + linear head to the Gemma width
    heads = (32 * 1024 + 1024) + (1024 * 32 + 32) + 2 * (1024 * 1024 + 1024)  # action in/out, time MLP
    # recap's LoRA presets freeze SigLIP as well as the base LLM: only adapters and heads train
    assert lora.frozen_params == llm_base + siglip
    assert lora.trainable_params == adapters + heads == 52_153_376
    assert lora.train_memory_bytes == 16 * lora.trainable_params + 2 * lora.frozen_params
    # train_vision=True is openpi's LoRA freeze filter: the LLM only, so SigLIP trains too
    config = dataclasses.replace(presets.get_preset("pi06-lora").model, train_vision=True)
    openpi_like = presets.Preset("openpi-lora", "policy", "", config)
    model = nnx.eval_shape(lambda: presets.build_model(openpi_like, nnx.Rngs(0)))
    trainable = nnx.state(model, nnx.All(nnx.Param, nnx.Not(presets.frozen_filter(openpi_like))))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable)) == adapters + heads + siglip


def test_train_vision_freezes_only_the_vision_tower_without_lora() -> None:
    import dataclasses

    from recap_core.models.lora import path_string

    tiny = presets.get_preset("pi05-tiny").model
    assert tiny.train_vision and presets.frozen_filter(presets.get_preset("pi05-tiny")) is nnx.Nothing
    frozen_vision = presets.Preset("x", "policy", "", dataclasses.replace(tiny, train_vision=False))
    model = nnx.eval_shape(lambda: presets.build_model(frozen_vision, nnx.Rngs(0)))
    frozen = {path_string(p) for p, _ in nnx.state(model, nnx.All(nnx.Param, presets.frozen_filter(frozen_vision)))
              .flat_state()}
    everything = {path_string(p) for p, _ in nnx.state(model, nnx.Param).flat_state()}
    assert frozen == {p for p in everything if p.startswith("PaliGemma/img/")} and frozen
    with pytest.raises(ConfigError, match="train_vision"):
        dataclasses.replace(tiny, train_vision="True")


def test_value_presets_freeze_their_backbones() -> None:
    from recap_core.models.gemma3 import Gemma3

    for name in ("value", "value-tiny"):
        config = presets.get_preset(name).model
        size = presets.preset_size(name)
        backbones = (_abstract_count(lambda r, c=config: Siglip(c.siglip, rngs=r))
                     + _abstract_count(lambda r, c=config: Gemma3(c.gemma3, rngs=r)))
        assert config.freeze == "all_backbones"
        assert size.frozen_params == backbones
        assert 0 < size.trainable_params < size.total_params


def test_tiny_presets_are_tiny_and_build() -> None:
    for name in ("pi05-tiny", "pi06-tiny", "value-tiny"):
        assert presets.preset_size(name).total_params < 10_000_000



def test_tiny_prompts_fit_with_the_advantage_clause(tmp_path) -> None:
    """The toy tasks' longest prompt, with the indicator, must fit: truncation would drop the clause."""
    import numpy as np

    from recap_core.models.tokenizer import PolicyTokenizer, build_toy_tokenizer, policy_prompt
    from recap_core.sim.task import TASKS

    path = build_toy_tokenizer(tmp_path / "toy.model")
    prompts = {p for task in TASKS.values() for p in task.prompts}
    state = np.full(6, 0.999, np.float32)  # three-digit bins everywhere: the longest state text
    for name in ("pi05-tiny", "pi06-tiny"):
        model = presets.get_preset(name).model
        tok = PolicyTokenizer(path, model.max_token_len, indicator_dropout=0.0, expected_vocab_size=None)
        for prompt in prompts:
            n = len(tok.encode(policy_prompt(prompt, state, "negative" if model.pi06 else None)))
            assert n <= model.max_token_len, (name, prompt, n)


def _recap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recap_cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_lists_presets_as_json_and_rejects_unknown_names() -> None:
    result = _recap("presets", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == EXPECTED
    pi05 = rows[0]
    assert pi05["total_params"] == 3_353_433_872 and pi05["trainable_params"] == pi05["total_params"]
    assert pi05["model"]["max_token_len"] == 200 and rows[2]["model"]["max_token_len"] == 203
    one = _recap("presets", "pi06-lora")
    assert one.returncode == 0 and "pi06-lora" in one.stdout and "pi05 " not in one.stdout
    bad = _recap("presets", "pi07")
    assert bad.returncode == 2 and "unknown preset" in bad.stderr and not bad.stdout


def test_a_stage_takes_only_its_familys_presets():
    """The registry's `kind` decides: a value preset cannot train a policy and the reverse, and sft
    refuses a pi0.6 preset; each error lists what the stage does take."""
    from recap_core.errors import ConfigError
    from recap_core.train.jobs import preset_model

    assert preset_model("value", "value-tiny") == {"kind": "value", "name": "value-tiny"}
    assert preset_model("finetune", "pi06-tiny")["pi06"] is True
    with pytest.raises(ConfigError, match="is a value preset, not a policy one") as info:
        preset_model("sft", "value-tiny")
    assert "pi05-tiny" in info.value.fix and "pi06" not in info.value.fix
    with pytest.raises(ConfigError, match="is a policy preset, not a value one") as info:
        preset_model("value", "pi05-tiny")
    assert info.value.fix.endswith("value, value-tiny")
    with pytest.raises(ConfigError, match=r"pi0\.6 policy"):
        preset_model("sft", "pi06-tiny")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset_model("finetune", "nope")
