"""Errors the core raises for bad input; the CLI prints them as one line and exits non-zero."""


class InvalidInput(ValueError):
    """An input file or argument the core cannot work with; the message names it and why."""
