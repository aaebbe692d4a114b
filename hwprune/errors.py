"""Errors that are the user's to fix: the CLI prints them as one ``error:`` line."""
from profilers.registry import UnknownName


class UserError(Exception):
    """Bad input: the message names the problem and what to do."""


class BelowSmallestError(UserError):
    """A latency budget below the fastest network measured on ``device``
    (``fastest``: how it was chosen; ``fastest_ms``), which need not be the
    smallest network the constraints allow (``smallest_ms``); ``baseline_ms``:
    the original's latency there, as measured in the same run."""

    def __init__(self, message: str, device: str, smallest_ms: float, *, fastest_ms: float | None = None,
                 fastest: str = "", baseline_ms: float | None = None, budget_ms: float | None = None):
        super().__init__(message)
        self.device, self.smallest_ms = device, smallest_ms
        self.fastest_ms = smallest_ms if fastest_ms is None else fastest_ms
        self.fastest, self.baseline_ms, self.budget_ms = fastest, baseline_ms, budget_ms

    @property
    def fastest_fraction(self) -> float | None:
        """The fastest network's latency as a share of the original's (None without a baseline)."""
        return self.fastest_ms / self.baseline_ms if self.baseline_ms else None


class UnknownNameError(UserError, UnknownName):
    """A name no entry of one of hwprune's registries has (importance,
    selector, zoo model); also a ``KeyError``. The message lists the known names."""
