"""Errors the core raises for bad input; the CLI prints them as one line and exits non-zero."""


class InvalidInput(ValueError):
    """An input file or argument the core cannot work with; the message names it and why."""


class InputWarning(UserWarning):
    """Usable but suspicious input (a guide resampled to fit, a guide the method ignores): said,
    not refused, because the result is still what was asked for; the CLI prints it as one
    ``warning:`` line."""
