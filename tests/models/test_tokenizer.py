"""Tokenizers and prompt formats, with a real sentencepiece model trained inside the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recap_core.errors import ConfigError, DatasetError, TokenizerError
from recap_core.models import tokenizer as tok


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sentencepiece model (Gemma special ids) trained on prompt-like text; reusable."""
    return tok.build_toy_tokenizer(tmp_path_factory.mktemp("spm") / "toy.model")


@pytest.fixture(scope="module")
def policy(toy_model: Path) -> tok.PolicyTokenizer:
    return tok.PolicyTokenizer(toy_model, max_len=64, expected_vocab_size=tok.TOY_VOCAB_SIZE)


STATE = np.asarray([-1.0, -0.5, 0.0, 0.99, 1.0])


def test_state_discretisation_matches_openpi() -> None:
    # 256 bins of width 1/128 over [-1, 1]; no clipping below -1; 1.0 lands in bin 255
    assert tok.discretize_state(STATE).tolist() == [0, 64, 128, 254, 255]
    assert tok.discretize_state(np.asarray([-1.5, 0.9921875, 3.0])).tolist() == [-1, 255, 255]


@pytest.mark.parametrize(("adv_ind", "clause"), [
    ("positive", ", Advantage: positive"), ("negative", ", Advantage: negative"), ("none", ""), (None, ""),
])
def test_prompt_text_is_openpi_pi05_plus_the_indicator(adv_ind: str | None, clause: str) -> None:
    text = tok.policy_prompt("  pick_up the\ncube ", STATE, adv_ind)
    assert text == f"Task: pick up the cube, State: 0 64 128 254 255{clause};\nAction: "


@pytest.mark.parametrize("adv_ind", ["positive", "negative", "none"])
def test_token_sequences_for_each_indicator(policy: tok.PolicyTokenizer, adv_ind: str) -> None:
    tokens, mask = policy.tokenize("pick up the cube", STATE, adv_ind)
    clause = "" if adv_ind == "none" else f", Advantage: {adv_ind}"
    expected = [2, *policy.processor.EncodeAsIds(f"Task: pick up the cube, State: 0 64 128 254 255{clause};\nAction: ")]
    assert tokens[: mask.sum()].tolist() == expected
    assert tokens.dtype == np.int32 and tokens.shape == mask.shape == (64,)
    assert mask[: len(expected)].all() and not mask[len(expected):].any() and not tokens[len(expected):].any()
    decoded = policy.processor.DecodeIds(tokens[1: mask.sum()].tolist())
    assert decoded.endswith(f"255{clause};\nAction: ")


def test_positive_and_negative_differ_only_in_the_indicator(policy: tok.PolicyTokenizer) -> None:
    pos = policy.tokenize("stack cups", STATE, "positive")[0].tolist()
    neg = policy.tokenize("stack cups", STATE, "negative")[0].tolist()
    none = policy.tokenize("stack cups", STATE, "none")[0].tolist()
    assert pos != neg
    common = next(i for i, (a, b) in enumerate(zip(pos, neg, strict=True)) if a != b)
    assert policy.processor.DecodeIds(pos[1:common]).startswith("Task: stack cups, State: 0 64 128 254 255, Advantage:")
    assert sum(t != 0 for t in none) < sum(t != 0 for t in neg)


def test_indicator_dropout_rate_and_serve_mode(policy: tok.PolicyTokenizer) -> None:
    full = policy.tokenize("open drawer", STATE, "positive")[0].tolist()
    dropped = policy.tokenize("open drawer", STATE, "none")[0].tolist()
    rng = np.random.default_rng(0)
    n = 3000
    drops = 0
    for _ in range(n):
        tokens = policy.tokenize("open drawer", STATE, "positive", rng=rng)[0].tolist()
        assert tokens in (full, dropped)
        drops += tokens == dropped
    # binomial(3000, 0.3): sd ~ 0.0084; 4 sd
    assert abs(drops / n - 0.3) < 0.034
    # seeded: the same generator seed gives the same drops
    a = [policy.tokenize("x", STATE, "positive", rng=r)[0].tolist() for r in [np.random.default_rng(5)] * 20]
    b = [policy.tokenize("x", STATE, "positive", rng=r)[0].tolist() for r in [np.random.default_rng(5)] * 20]
    assert a == b
    # serve mode (no generator): never dropped, even with dropout 1.0
    always = tok.PolicyTokenizer(policy.path, max_len=64, indicator_dropout=1.0,
                                 expected_vocab_size=tok.TOY_VOCAB_SIZE)
    assert all(always.tokenize("open drawer", STATE, "positive")[0].tolist() == full for _ in range(50))
    assert always.tokenize("open drawer", STATE, "positive", rng=rng)[0].tolist() == dropped


def test_truncation_and_batch_with_unconditional(policy: tok.PolicyTokenizer) -> None:
    short = tok.PolicyTokenizer(policy.path, max_len=8, expected_vocab_size=tok.TOY_VOCAB_SIZE)
    tokens, mask = short.tokenize("pick up the red cube and place it in the bin", STATE, "positive")
    assert tokens.shape == (8,) and mask.all()
    batch = policy.tokenize_batch(["a", "b"], np.stack([STATE, STATE]), ["positive", "none"],
                                  with_unconditional=True)
    assert batch["tokens"].shape == batch["uncond_tokens"].shape == (2, 64)
    assert batch["token_mask"][0].sum() > batch["uncond_token_mask"][0].sum()  # indicator removed
    np.testing.assert_array_equal(batch["tokens"][1], batch["uncond_tokens"][1])  # none == unconditional


def test_value_prompt_and_tokens(toy_model: Path) -> None:
    value = tok.ValueTokenizer(toy_model, expected_vocab_size=tok.TOY_VOCAB_SIZE)
    assert tok.value_prompt("fold towel  \n") == "fold towel\nValue:"
    tokens, mask = value.tokenize("fold towel  ")
    assert tokens.shape == (48,)
    assert tokens[: mask.sum()].tolist() == [2, *value.processor.EncodeAsIds("fold towel\nValue:")]
    assert not tokens[mask.sum():].any()


def test_bad_indicator_value_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="adv_ind") as info:
        tok.policy_prompt("x", STATE, "good")
    assert info.value.fix


def test_missing_and_wrong_tokenizer_files(tmp_path: Path, toy_model: Path) -> None:
    with pytest.raises(TokenizerError, match=r"missing\.model.*257,152") as info:
        tok.PolicyTokenizer(tmp_path / "missing.model")
    assert info.value.fix
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match=r"garbage\.model"):
        tok.ValueTokenizer(garbage)
    # a valid sentencepiece file of the wrong vocabulary (e.g. Gemma3's given for the policy)
    with pytest.raises(TokenizerError, match=r"512.*expected 262,144"):
        tok.ValueTokenizer(toy_model)
    with pytest.raises(ConfigError, match="probability"):
        tok.PolicyTokenizer(toy_model, indicator_dropout=1.5, expected_vocab_size=None)
