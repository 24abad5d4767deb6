"""Python warnings as one line each, ``warning: <message>``, under the ``cmsr`` command.

Why: a job's warnings (``tiling``'s ``InputWarning`` from prepare, ``pipelines``'
``TileRecomputed`` from a worker, any other ``UserWarning``) are news for the user, and Python's
default ``file:line: Category: message`` plus the source line reads like a crash report next to
the CLI's one-line errors. Library use keeps Python's default: the hook is installed only by
:func:`one_line_warnings` (the CLI's ``exit_codes`` context) and, through the environment it
sets, in the embedded Dask workers started meanwhile (``dask_setup``, a worker preload), whose
stderr is the terminal's too. Each distinct message is printed once per process.

Imports nothing heavy (workers and the CLI both load it early).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator

#: Set while :func:`one_line_warnings` is active; worker processes started then inherit it.
ENV_FLAG = "CMSR_ONE_LINE_WARNINGS"


def one_line(message: Warning | str) -> str:
    """The warning's text on one line (newlines and runs of spaces folded)."""
    return " ".join(str(message).split())


def _printer() -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints each distinct message once, on the current stderr."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - stdlib signature
        text = one_line(message)
        if text in seen:
            return
        seen.add(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)

    return show


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """While inside, warnings print as ``warning: <message>`` (once each); restored afterwards.
    ``catch_warnings`` also resets Python's "already shown" registry, so a command run twice
    in one process (tests) shows its warnings both times."""
    old_flag = os.environ.get(ENV_FLAG)
    os.environ[ENV_FLAG] = "1"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _printer()
            yield
    finally:
        if old_flag is None:
            os.environ.pop(ENV_FLAG, None)
        else:
            os.environ[ENV_FLAG] = old_flag


def dask_setup(worker: object) -> None:
    """Dask worker preload hook: one-line warnings in a worker started under the CLI."""
    if os.environ.get(ENV_FLAG):
        warnings.showwarning = _printer()


__all__ = ["ENV_FLAG", "one_line", "one_line_warnings", "dask_setup"]
