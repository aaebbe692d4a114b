"""Errors that are the user's to fix: the CLI prints them as one ``error:`` line."""
from profilers.registry import UnknownName


class UserError(Exception):
    """Bad input: the message names the problem and what to do."""


class BelowSmallestError(UserError):
    """A latency budget below the smallest network the constraints allow;
    ``smallest_ms`` is that network as measured on ``device``."""

    def __init__(self, message: str, device: str, smallest_ms: float):
        super().__init__(message)
        self.device, self.smallest_ms = device, smallest_ms


class UnknownNameError(UserError, UnknownName):
    """A name no entry of one of hwprune's registries has (importance,
    selector, zoo model); also a ``KeyError``. The message lists the known names."""
