"""User-facing errors.

Anything raised as :class:`SpapError` is a problem with the user's input (a missing file,
a bad config key, a wrong checkpoint kind ...). The command line prints it as a single line
and exits non-zero, without a traceback.
"""

from __future__ import annotations


class SpapError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(SpapError, ValueError):
    """An invalid configuration: unknown key, wrong type or impossible value."""


class DataError(SpapError):
    """A dataset that cannot be used (missing, empty, nothing readable)."""


class CheckpointError(SpapError):
    """A checkpoint that cannot be read (missing, truncated, untrusted, wrong kind)."""


class WriteError(SpapError):
    """A file could not be written (full disk, quota, file-size limit, permissions); the
    message names the file and the reason, and nothing half-written is left under its name."""


class NonFiniteLossError(SpapError):
    """A loss, a gradient or the weights became NaN or Inf during training."""


class Preempted(SpapError):
    """The run was stopped by SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
