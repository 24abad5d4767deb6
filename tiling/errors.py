"""Errors ``tiling`` raises for bad input; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class InvalidInput(ValueError):
    """An input file or argument the pipeline cannot work with; the message names it and why."""


class InputWarning(UserWarning):
    """Suspicious but usable input (e.g. the target covers less than 10% of the RGB)."""
