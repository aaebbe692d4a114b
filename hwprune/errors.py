"""Errors that are the user's to fix: the CLI prints them as one ``error:`` line."""


class UserError(Exception):
    """Bad input: the message names the problem and what to do."""
