"""User-facing errors.

Every mistake a user can make (a wrong path, a missing column, a checkpoint of the wrong kind)
raises a `RecapError` subclass. The message names the thing, says what was expected, and
`fix` says what to do. The CLI renders it as one red panel and exits with code 2; the library
simply raises it.
"""

from __future__ import annotations


class RecapError(Exception):
    """Base class for errors caused by user input or environment, not by bugs."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\nFix: {self.fix}"


class ConfigError(RecapError):
    """A setting, preset, override or config file is invalid."""


class DatasetError(RecapError):
    """A dataset is missing, malformed, of the wrong version or lacks what a stage needs."""


class CheckpointError(RecapError):
    """A checkpoint or weight file is missing, corrupt, or of the wrong kind or size."""


class BundleError(CheckpointError):
    """The VLM bundle (Gemma3 + SigLIP2 + tokenizer) is missing or incomplete."""


class TokenizerError(RecapError):
    """A tokenizer file is missing or is not the expected tokenizer."""


class OutputExistsError(RecapError):
    """An output path exists and neither --overwrite nor --resume was given."""


class PreflightError(RecapError):
    """A doctor check failed before a long run."""


class ServeError(RecapError):
    """The policy server cannot start as asked."""


class ModelInputError(ConfigError):
    """A model received inputs of the wrong shape or kind (usually a config/data mismatch)."""
