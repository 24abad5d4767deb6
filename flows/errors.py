"""The errors ``flows`` raises itself, in a module that imports nothing heavy.

Why a module of its own: the ``cmsr`` command classifies every failure by type (bad input ->
exit 2, a failed job -> exit 1) and must be able to name these types without importing Prefect,
Dask or torch, so ``cmsr --help`` and a bad option stay instant.
"""

from __future__ import annotations


class UsageError(ValueError):
    """How cmsr was asked to run is wrong (an option's value, a missing ``PREFECT_API_URL``,
    more GPUs than visible): the user's to fix, so the CLI prints it as one line and exits 2.
    A ``ValueError`` so library callers that caught the plain ``ValueError`` still do."""


class TileFailed(RuntimeError):
    """A tile's unit of work raised; the message names the tile(s), the job and the cause."""


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a job; ``finished`` tiles are kept in ``work_dir`` for the resume.

    A ``KeyboardInterrupt`` so that code catching ``Exception`` (one survey of many failing)
    does not swallow the user's Ctrl-C and go on with the next survey."""

    def __init__(self, finished: int, work_dir: str) -> None:
        super().__init__(finished, work_dir)
        self.finished = finished
        self.work_dir = work_dir

    def __str__(self) -> str:
        return (f"interrupted; {self.finished} finished tile{'' if self.finished == 1 else 's'} kept in "
                f"{self.work_dir}; run the same command again to resume")


__all__ = ["UsageError", "TileFailed", "JobInterrupted"]
