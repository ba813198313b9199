"""Which tokenizer a run uses: the one place that decides it (training, serving, labelling)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from recap_core.config import RunConfig
from recap_core.errors import ConfigError
from recap_core.stages import is_tiny

TOKENIZER_ASSET = "tokenizer.model"
"""The copy of the tokenizer a run trained with, under `<run>/assets/`: the run needs nothing else."""


def tokenizer_path(config: RunConfig, run_dir: Path | None = None) -> Path:
    """The tokenizer file of a run; the one place that decides it (training, serving, labelling).

    A run that stores its own copy (`<run>/assets/tokenizer.model`, written when training starts)
    uses that, so a moved or deleted original does not matter. Otherwise: the config's
    `tokenizer`, a toy tokenizer for -tiny presets, else the file configured in settings.
    """
    if run_dir is not None:
        stored = Path(run_dir) / "assets" / TOKENIZER_ASSET
        if stored.is_file():
            return stored
    if config.tokenizer:
        return Path(config.tokenizer).expanduser()
    from recap_core.settings import get_settings

    settings = get_settings()
    if is_tiny(config.preset):
        from recap_core.models.tokenizer import build_toy_tokenizer, toy_corpus

        digest = hashlib.sha256("\n".join(toy_corpus(())).encode()).hexdigest()[:12]
        path = settings.cache_dir / f"toy_tokenizer-{digest}.model"
        if not path.is_file():
            build_toy_tokenizer(path)
        return path
    if config.stage == "value":
        return settings.vlm_bundle_dir / "tokenizer.model"
    if settings.paligemma_tokenizer is None:
        raise ConfigError(
            "no PaliGemma tokenizer configured for a real-size policy preset",
            fix="set RECAP_PALIGEMMA_TOKENIZER=/path/paligemma_tokenizer.model (or --set tokenizer=PATH)",
        )
    return settings.paligemma_tokenizer
