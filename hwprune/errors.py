"""Errors that are the user's to fix: the CLI prints them as one ``error:`` line."""


class UserError(Exception):
    """Bad input: the message names the problem and what to do."""


class BelowSmallestError(UserError):
    """A latency budget below the smallest network the constraints allow;
    ``smallest_ms`` is that network as measured on ``device``."""

    def __init__(self, message: str, device: str, smallest_ms: float):
        super().__init__(message)
        self.device, self.smallest_ms = device, smallest_ms
