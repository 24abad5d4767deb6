"""What each failure of a command prints and which exit code it ends with, decided by type.

* bad input (:func:`bad_input_types`): one line ``error: <file or option>: <problem>``, exit 2;
* a job that failed while running (:class:`flows.errors.TileFailed`, or ``pipelines``'
  ``UnfinishedTiles`` from its finish step): one line, exit 1;
* Ctrl-C (:class:`flows.errors.JobInterrupted`, which names the finished tiles and the work dir,
  or a bare ``KeyboardInterrupt``): one line, exit 130 (finished tiles are kept for the resume);
* a warning: one line ``warning: <message>`` on stderr, once each;
* anything else, an internal ``ValueError`` included, is a bug: exit 1 with the full traceback
  under ``--verbose``, else one line that says how to get it.

Why by type and not by message or class name: a ``ValueError`` deep in numpy is not the user's
fault and must not look like it, and an unrelated class that happens to be called
``InvalidInput`` must not hide its traceback.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import typer

from ..errors import JobInterrupted, TileFailed, UsageError
from ..warning_lines import one_line_warnings

BAD_INPUT = 2
FAILED = 1
INTERRUPTED = 130


def bad_input_types() -> tuple[type[BaseException], ...]:
    """The user's bad input, by type: the core's and tiling's ``InvalidInput`` (``pipelines``
    raises tiling's), a command-line or environment problem, a missing or unreadable file.
    Imported only when an error is being classified: ``cmsr`` loads torch."""
    from cmsr import InvalidInput as CoreInvalidInput
    from tiling.errors import InvalidInput as TilingInvalidInput

    return (CoreInvalidInput, TilingInvalidInput, UsageError, FileNotFoundError, PermissionError)


def failed_job_types() -> tuple[type[BaseException], ...]:
    """A job that ran and failed, by type: a tile raised after its retries, or ``finish`` found
    tiles without a usable result (running again computes them). Imported when classifying."""
    from pipelines.job.tile_store import UnfinishedTiles

    return (TileFailed, UnfinishedTiles)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _describe(exc: BaseException) -> str:
    """One line for a bad input; an ``OSError`` as ``<file>: <reason>`` like the others."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


@contextlib.contextmanager
def exit_codes(verbose: bool = False) -> Iterator[None]:
    """Run a command's body, turning its failures into the one-line messages and exit codes above
    (and its warnings into ``warning: <message>`` lines, :mod:`flows.warning_lines`)."""
    try:
        with one_line_warnings():
            yield
    except typer.Exit:
        raise
    except JobInterrupted as exc:
        raise _fail(str(exc), INTERRUPTED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; finished tiles are kept, run the same command again to resume",
                    INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - classified by type right here
        if isinstance(exc, failed_job_types()):
            raise _fail(str(exc), FAILED) from None
        if isinstance(exc, bad_input_types()):
            raise _fail(_describe(exc), BAD_INPUT) from None
        if verbose:
            typer.echo(traceback.format_exc().rstrip(), err=True)
            raise _fail(f"internal error: {type(exc).__name__}: {exc}", FAILED) from None
        raise _fail(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)",
                    FAILED) from None
