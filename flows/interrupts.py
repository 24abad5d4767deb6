"""Ctrl-C for a run: only this process hears it, it is remembered, and what we started stops fast.

Why a module of its own: a terminal's Ctrl-C is a SIGINT to the whole foreground process group,
so without care the temporary Prefect API and every Dask worker die in the middle of their work
at the same moment as the driver, which then spends minutes retrying a dead API and prints
hundreds of lines. Here:

* :func:`sigint_blocked` starts child processes with SIGINT blocked (a blocked signal mask is
  inherited across ``fork``/``exec`` and by threads), so only the driver reacts to Ctrl-C and
  stops its children itself, in order;
* :func:`recording_sigint` remembers that a SIGINT came (Prefect and pydantic may wrap the
  ``KeyboardInterrupt`` in their own errors or a "Crashed" state; the record says what it was)
  and turns later ones away while the teardown runs, which is bounded;
* :func:`job_interruptible` turns that record into :class:`flows.errors.JobInterrupted`, naming
  the finished tiles (from the job's tile store) and the work dir;
* :func:`stop_processes` ends given processes (and their children): SIGTERM, a short grace, SIGKILL.

Imports nothing heavy at import time (``pipelines`` only to count tiles after an interrupt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator

from .errors import JobInterrupted

#: SIGINTs seen inside :func:`recording_sigint` (0: none).
_received = 0


def requested() -> bool:
    """True when Ctrl-C (SIGINT) came while :func:`recording_sigint` was active: teardowns are
    then quick (kill, short timeouts) instead of patient."""
    return _received > 0


def stop_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when Ctrl-C came: for loops that catch ``Exception`` around
    library calls, which may have turned the first ``KeyboardInterrupt`` into an error of theirs."""
    if requested():
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the calling thread while inside, so processes (and threads) started here
    inherit a mask that keeps the terminal's Ctrl-C away from them; the driver still gets it (the
    kernel delivers a process-directed signal to a thread that does not block it, and Python runs
    the handler in the main thread). No-op where ``pthread_sigmask`` does not exist."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    # multiprocessing's resource tracker (Dask's worker spawns need it) *unblocks* SIGINT in the
    # thread that starts it (``ensure_running`` undoes its own block with SIG_UNBLOCK): start it
    # now, outside the block, so that no thread below is the one to start it
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def recording_sigint() -> Iterator[None]:
    """While inside, the first SIGINT is recorded and raised as ``KeyboardInterrupt`` (as Python
    does by default); later ones are only recorded, so they cannot break the teardown halfway
    (it is bounded, see ``flows.cluster`` and ``flows.engine``). Only in the main thread (the
    only one that may install handlers); elsewhere nothing changes."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        global _received
        _received += 1
        if _received == 1:
            raise KeyboardInterrupt

    _received = 0
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received = 0


@contextlib.contextmanager
def job_interruptible(work_dir: str) -> Iterator[None]:
    """Run a job's engine inside :func:`recording_sigint`; a Ctrl-C, however it surfaces (a
    ``KeyboardInterrupt``, one wrapped in another error, or a "Crashed" flow state returned
    normally), leaves as :class:`JobInterrupted` with the finished tiles of ``work_dir``, once
    the teardown inside (cluster, temporary API) has run."""
    with recording_sigint():
        try:
            yield
        except BaseException as exc:
            if not (requested() or isinstance(exc, KeyboardInterrupt)):
                raise
        else:
            if not requested():
                return
        raise JobInterrupted(finished_tiles(work_dir), work_dir) from None


def finished_tiles(work_dir: str) -> int:
    """Tiles of the job in ``work_dir`` with a finished result on disk (what a resume keeps),
    read from the job's tile store; 0 when no job was written yet."""
    import pipelines

    try:
        job = pipelines.load_job(os.path.join(work_dir, "job.json"))
    except Exception:  # noqa: BLE001 - interrupted before (or while) the job was written
        return 0
    active = sum(1 for t in job.plan.tiles if not t.skip)
    return active - len(pipelines.pending(job))


def stop_processes(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """End those of ``pids`` that are this process's children, and their descendants: SIGTERM,
    up to ``grace_s`` seconds, then SIGKILL what is left. A pid that is gone, or was reused by a
    process that is not our child, is left alone."""
    import psutil

    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.ppid() != os.getpid():
                continue
            procs.extend([p, *p.children(recursive=True)])
        except psutil.Error:
            continue
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


__all__ = ["requested", "stop_if_interrupted", "sigint_blocked", "recording_sigint", "job_interruptible", "finished_tiles",
           "stop_processes"]
