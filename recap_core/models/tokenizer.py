"""Tokenizers and prompt formats for the policy (PaliGemma vocab) and the value model (Gemma3 vocab).

Policy prompt (pi0.5, openpi `PaligemmaTokenizer.tokenize` with a state):
    "Task: {cleaned task}, State: {256-bin state};\\nAction: "   encoded with BOS, no EOS
pi0.6 adds the advantage indicator as text before ";\\nAction: " (pi0.6 paper; pistar fork):
    "Task: ..., State: ..., Advantage: positive;\\nAction: "     (or "negative"; "none" omits it)
During training the clause is dropped with probability `indicator_dropout` (paper: 30%; the seed
fork also uses 0.3, but draws from numpy's global RNG; we take an explicit seeded generator).
Without a generator (serving) it is never dropped. The indicator tokens are prompt tokens: flow
matching puts its loss on the action suffix only, so no loss mask over the prompt is needed.

Value prompt (pistar `GemmaValueTokenizer`): f"{task.rstrip()}\\nValue:" with BOS, 48 tokens.

Only sentencepiece and numpy are imported here, so data pipelines can tokenize without jax.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.errors import ConfigError, DatasetError, TokenizerError

log = logging.getLogger(__name__)

PALIGEMMA_VOCAB_SIZE = 257_152  # gs://big_vision/paligemma_tokenizer.model (openpi gemma.py)
GEMMA3_VOCAB_SIZE = 262_144  # Gemma3 tokenizer.model (gemma lib Gemma3_270M num_embed)
TOY_VOCAB_SIZE = 512  # the tokenizer `build_toy_tokenizer` trains for the tiny presets

POLICY_MAX_LEN = 200  # openpi Pi0Config.max_token_len for pi05
INDICATOR_EXTRA_LEN = 3  # pistar: room for ", Advantage: positive" -> 203
VALUE_MAX_LEN = 48  # pistar ValueModelConfig.max_token_len
STATE_BINS = 256
ADVANTAGE_VALUES = ("positive", "negative", "none")


def load_sentencepiece(path: str | Path, expected_vocab_size: int | None, *, what: str) -> Any:
    """Load a sentencepiece model file and check its vocabulary size.

    `expected_vocab_size=None` skips the check (only for tests and toy tokenizers).
    """
    import sentencepiece

    path = Path(path).expanduser()
    expected = f"{expected_vocab_size:,}" if expected_vocab_size else "any"
    if not path.is_file():
        raise TokenizerError(
            f"{what} tokenizer file {path} does not exist (expected a sentencepiece model with "
            f"vocabulary size {expected})",
            fix="point to the tokenizer.model file (see `recap doctor`), or download it as described in the README",
        )
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except Exception as exc:  # sentencepiece raises RuntimeError / OSError with C++ messages
        raise TokenizerError(
            f"{what} tokenizer file {path} is not a sentencepiece model ({exc})",
            fix=f"use the {what} tokenizer.model (vocabulary size {expected})",
        ) from exc
    size = processor.GetPieceSize()
    if expected_vocab_size is not None and size != expected_vocab_size:
        raise TokenizerError(
            f"{what} tokenizer {path} has vocabulary size {size:,}, expected {expected_vocab_size:,}",
            fix=f"use the {what} tokenizer.model; a tokenizer from another model family gives wrong token ids",
        )
    return processor


def discretize_state(state: np.ndarray) -> np.ndarray:
    """openpi's pi0.5 state text: 256 equal bins over [-1, 1] -> ints 0..255 (no clipping below -1)."""
    bins = np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state), bins=bins) - 1


def clean_task(task: str) -> str:
    return task.strip().replace("_", " ").replace("\n", " ")


def policy_prompt(task: str, state: np.ndarray | None, adv_ind: str | None = None) -> str:
    """The pi0.5 prompt text; with `adv_ind` positive/negative, the pi0.6 indicator clause."""
    if adv_ind is not None and adv_ind not in ADVANTAGE_VALUES:
        raise DatasetError(
            f"column `adv_ind` has value {adv_ind!r}; expected one of {', '.join(ADVANTAGE_VALUES)}",
            fix="relabel the dataset with `recap value label`, or set adv_ind to 'none' for unlabelled frames",
        )
    state_text = "" if state is None else ", State: " + " ".join(map(str, discretize_state(state)))
    clause = f", Advantage: {adv_ind}" if adv_ind in ("positive", "negative") else ""
    return f"Task: {clean_task(task)}{state_text}{clause};\nAction: "


def drop_indicator(rng: np.random.Generator | None, probability: float) -> bool:
    """Whether to drop the indicator for one sample; never without a generator (serve mode)."""
    return rng is not None and probability > 0 and bool(rng.random() < probability)


def pad_tokens(tokens: Sequence[int], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with 0 (or truncate) to `max_len`; mask is True on real tokens."""
    if len(tokens) > max_len:
        log.warning("prompt has %d tokens, more than max_token_len=%d; truncating", len(tokens), max_len)
        tokens = tokens[:max_len]
    ids = np.zeros(max_len, dtype=np.int32)
    ids[: len(tokens)] = tokens
    mask = np.zeros(max_len, dtype=bool)
    mask[: len(tokens)] = True
    return ids, mask


class PolicyTokenizer:
    """PaliGemma sentencepiece + the pi0.5 / pi0.6 prompt, padded to `max_len` with a mask."""

    def __init__(
        self,
        path: str | Path,
        max_len: int = POLICY_MAX_LEN + INDICATOR_EXTRA_LEN,
        *,
        indicator_dropout: float = 0.3,
        expected_vocab_size: int | None = PALIGEMMA_VOCAB_SIZE,
    ) -> None:
        if not 0.0 <= indicator_dropout <= 1.0:
            raise ConfigError(f"indicator_dropout={indicator_dropout} is not a probability",
                                 fix="use a value in [0, 1] (paper: 0.3)")
        self.processor = load_sentencepiece(path, expected_vocab_size, what="PaliGemma")
        self.path = Path(path)
        self.max_len = max_len
        self.indicator_dropout = indicator_dropout

    @property
    def vocab_size(self) -> int:
        return int(self.processor.GetPieceSize())

    def encode(self, text: str) -> list[int]:
        return list(self.processor.EncodeAsIds(text))

    def tokenize(
        self, task: str, state: np.ndarray | None, adv_ind: str | None = None,
        *, rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokens int32 [max_len] and mask bool [max_len]. `rng` given = training (dropout on)."""
        if drop_indicator(rng, self.indicator_dropout):
            adv_ind = None
        text = policy_prompt(task, state, adv_ind)
        return pad_tokens([self.processor.bos_id(), *self.encode(text)], self.max_len)

    def tokenize_batch(
        self, tasks: Iterable[str], states: np.ndarray | None, adv_inds: Iterable[str | None] | None = None,
        *, rng: np.random.Generator | None = None, with_unconditional: bool = False,
    ) -> dict[str, np.ndarray]:
        """Batch form: `tokens`, `token_mask` [B, L]; with `with_unconditional`, also the prompts
        without the indicator (`uncond_tokens`, `uncond_token_mask`) for classifier-free guidance."""
        tasks = list(tasks)
        inds = list(adv_inds) if adv_inds is not None else [None] * len(tasks)
        rows = [self.tokenize(t, None if states is None else states[i], inds[i], rng=rng)
                for i, t in enumerate(tasks)]
        out = {"tokens": np.stack([r[0] for r in rows]), "token_mask": np.stack([r[1] for r in rows])}
        if with_unconditional:
            rows = [self.tokenize(t, None if states is None else states[i]) for i, t in enumerate(tasks)]
            out["uncond_tokens"] = np.stack([r[0] for r in rows])
            out["uncond_token_mask"] = np.stack([r[1] for r in rows])
        return out


def value_prompt(task: str) -> str:
    return f"{task.rstrip()}\nValue:"


class ValueTokenizer:
    """Gemma3 sentencepiece + the value prompt, padded with 0 to `max_len` with a mask."""

    def __init__(
        self, path: str | Path, max_len: int = VALUE_MAX_LEN, *, expected_vocab_size: int | None = GEMMA3_VOCAB_SIZE
    ) -> None:
        self.processor = load_sentencepiece(path, expected_vocab_size, what="Gemma3")
        self.path = Path(path)
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return int(self.processor.GetPieceSize())

    def tokenize(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.processor.bos_id(), *self.processor.EncodeAsIds(value_prompt(task))]
        return pad_tokens(ids, self.max_len)

    def tokenize_batch(self, tasks: Iterable[str]) -> dict[str, np.ndarray]:
        rows = [self.tokenize(t) for t in tasks]
        return {"tokens": np.stack([r[0] for r in rows]), "token_mask": np.stack([r[1] for r in rows])}


def toy_corpus(extra_texts: Iterable[str]) -> list[str]:
    """Text covering the prompt templates, every state bin and common task words."""
    text = ("pick up the red cube and place it in the bin push the block to the goal open drawer "
            "close lid stack cups fold towel pour water move arm left right gripper")
    words = text.split(" ")
    lines = [f"Task: {' '.join(words[i:i + 6])}, State: {' '.join(str((i * 7 + j) % 256) for j in range(8))}"
             f", Advantage: {('positive', 'negative')[i % 2]};\nAction: " for i in range(len(words))]
    lines += [" ".join(str(n) for n in range(s, s + 16)) for s in range(0, 256, 16)]
    lines += [f"{' '.join(words[i:i + 4])}\nValue:" for i in range(len(words))]
    lines += list(extra_texts)
    return lines * 4


def build_toy_tokenizer(path: str | Path, extra_texts: Iterable[str] = (), vocab_size: int = TOY_VOCAB_SIZE) -> Path:
    """Train a small sentencepiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3).

    For the tiny presets, the toy demo and tests: no download, byte fallback so any text encodes.
    """
    import sentencepiece

    path = Path(path)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(toy_corpus(extra_texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path
