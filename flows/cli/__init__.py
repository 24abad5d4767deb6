"""The ``cmsr`` command: ``run``, ``plan``, ``demo``, ``sr``, ``serve``, ``submit``.

One module per command over :mod:`.options` (every shared option, declared once) and
:mod:`.exit_codes` (bad input -> one line and exit 2; a failed job -> exit 1; a bug -> exit 1
with its traceback under ``--verbose``). Heavy imports (Prefect, Dask, torch) happen inside the
commands, so ``cmsr --help`` is instant. ``main`` is the console entry point
(``cmsr = "flows.cli:main"``); ``python -m flows.cli`` runs the same.
"""

from __future__ import annotations

import gc
import sys

from . import demo, plan, run, serve, sr, submit  # noqa: F401 - each registers its command on ``app``
from .app import app
from .exit_codes import INTERRUPTED

#: Commands that train in this process or its children: run them with the allocator settings.
TRAINING_COMMANDS = {"run", "demo", "sr", "serve"}


def main() -> None:
    """Console entry point (``cmsr``): the allocator settings for training commands, then the app."""
    asks_help = "--help" in sys.argv or "-h" in sys.argv
    if len(sys.argv) > 1 and sys.argv[1] in TRAINING_COMMANDS and not asks_help:
        from cmsr.runtime import ensure_allocator_env

        ensure_allocator_env()  # may re-exec this command once with MALLOC_* set
    try:
        app()
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            # Ctrl-C: the engine is already down; the interpreter's last full collection over
            # Prefect's, pydantic's and torch's objects would take seconds more (measured 3 s
            # of 4.5 on a loaded 2-core box), so leave them to the process exit
            gc.freeze()
        raise


__all__ = ["app", "main"]
