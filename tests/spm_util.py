"""Build real sentencepiece models in tests, at any vocabulary size (no downloads)."""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

TEXTS = ["pick up the cube and hand it over", "Task: hand the cube, State: 1 2 3;\nAction: ", "Value:"] * 20


def _train(n_user: int, vocab_size: int) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=buf, vocab_size=vocab_size, model_type="char",
        user_defined_symbols=[f"<unused{i}>" for i in range(n_user)], hard_vocab_limit=False, minloglevel=2,
    )
    return buf.getvalue()


def make_sentencepiece(path: Path, vocab_size: int) -> Path:
    """Write a character-level sentencepiece model padded with <unusedN> pieces to `vocab_size`."""
    probe = spm.SentencePieceProcessor()
    probe.LoadFromSerializedProto(_train(0, vocab_size))
    path.write_bytes(_train(vocab_size - probe.GetPieceSize(), vocab_size))
    return path
