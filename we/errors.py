"""One error family for everything a user can get wrong: each message is one line naming the key or file.

This module imports nothing, so every layer of the suite may raise these.
"""
from __future__ import annotations


class SuiteError(ValueError):
    """Bad input to the suite (config, CLI, grid, profile, data, checkpoint, model): one line, no traceback."""


class ConfigError(SuiteError):
    """A bad configuration key or value (the message is one line and names the key)."""


class InputError(SuiteError):
    """A malformed file or option: one line naming the file (or option) and the key."""

    def __init__(self, file: object, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        super().__init__(f"{self.file}: {key}: {message}")


class CheckpointError(SuiteError):
    """A checkpoint refused: it does not load without executing code, or does not load at all (names the file)."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing (or corrupted) and could not be downloaded."""
