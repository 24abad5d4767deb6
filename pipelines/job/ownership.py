"""One job per output at a time: ``own_job`` holds lock files on the output and the work dir.

Why: two runs writing the same ``-o`` (or the same work dir) overwrite each other's ``job.json``,
LR target and outputs, and one of them "succeeds" with the other's or a broken result. A run
therefore takes ``<out>.lock`` (beside the output: two jobs with different work dirs but one
output) and ``<work_dir>/owner.lock`` (two outputs sharing one ``--work-dir``) before it writes
anything, and a second run is refused with one line naming the running job.

Locks are created atomically (``O_CREAT | O_EXCL``) and hold JSON saying who owns them. A lock
whose owner is gone (a crashed or killed run on this host) is stale: it is taken over with one
``StaleLockWarning``, so a resume after a crash needs no manual clean-up. An owner on another host
cannot be checked and counts as alive (the message says which file to delete if it is not).
"This host" is the host name, as for ``tiling.files``' temp files: containers that share a host
name but not their process ids would see each other's owners as gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime

from tiling import align
from tiling.errors import InvalidInput

#: a lock file that cannot be parsed (its owner is between creating and writing it, or died
#: right there) is busy this long after it was last touched, stale afterwards (seconds)
UNREADABLE_LOCK_GRACE_S = 10.0

#: tries to take one lock when other runs keep replacing it (stale recovery races)
TAKE_ATTEMPTS = 5

WORK_DIR_LOCK = "owner.lock"


class JobBusy(InvalidInput):
    """Another job owns this output or work dir right now; the message names it. Bad input to
    the CLI (one line, exit 2): the user's to fix by waiting or choosing another ``-o``."""

    def __init__(self, message: str, owner: "LockOwner | None" = None, lock: str | None = None) -> None:
        super().__init__(message)
        self.owner = owner
        self.lock = lock


class StaleLockWarning(UserWarning):
    """A job that crashed or was killed left its lock; this run took it over."""


def out_lock_path(out: str) -> str:
    return os.path.abspath(out) + ".lock"


def work_dir_lock_path(work_dir: str) -> str:
    return os.path.join(os.path.abspath(work_dir), WORK_DIR_LOCK)


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with
    the boot id it tells a live owner from an unrelated process that got its pid later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        return after_name[19]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class LockOwner:
    """What a lock file says about the job holding it."""

    pid: int
    host: str
    started: str  # ISO time, local
    rgb: str
    target: str
    out: str
    token: str = ""  # this lock's own id: we remove only our own lock
    boot: str | None = None
    proc_start: str | None = None

    @classmethod
    def of_this_process(cls, rgb: str, target: str, out: str) -> "LockOwner":
        pid = os.getpid()
        return cls(pid=pid, host=socket.gethostname(), started=datetime.now().isoformat(timespec="seconds"),
                   rgb=os.path.abspath(rgb), target=os.path.abspath(target), out=os.path.abspath(out),
                   token=uuid.uuid4().hex, boot=_boot_id(), proc_start=_process_start(pid))

    @classmethod
    def from_dict(cls, d: dict) -> "LockOwner":
        return cls(pid=int(d["pid"]), host=str(d["host"]), started=str(d.get("started", "")),
                   rgb=str(d.get("rgb", "")), target=str(d.get("target", "")), out=str(d.get("out", "")),
                   token=str(d.get("token", "")), boot=d.get("boot"), proc_start=d.get("proc_start"))

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Whether the owner may still run: on this host, its process exists (and is the same
        process, where the boot id and start time tell); on another host: cannot tell, so yes."""
        if not self.on_this_host:
            return True
        if self.pid == os.getpid():
            return True  # this process (another thread, or a nested call): busy, not stale
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        boot = _boot_id()
        if self.boot and boot and self.boot != boot:
            return False  # written before this host last booted: its pid is someone else's now
        if self.proc_start:
            now = _process_start(self.pid)
            return now is None or now == self.proc_start
        return True

    def describe(self) -> str:
        started = self.started.replace("T", " ")
        if started[:10] == datetime.now().date().isoformat():
            started = started[11:]
        return (f"pid {self.pid} on host {self.host}, started {started}, "
                f"target {os.path.basename(self.target) or self.target}")


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _read(path: str) -> tuple[LockOwner | None, tuple[int, int, int, int] | None]:
    """(owner, file identity) of the lock at ``path``; owner None when unreadable, identity None
    when the file is gone."""
    ident = _identity(path)
    if ident is None:
        return None, None
    try:
        with open(path) as f:
            return LockOwner.from_dict(json.load(f)), ident
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError):
        return None, ident


def _discard(path: str, ident: tuple[int, int, int, int]) -> bool:
    """Remove the stale lock ``path`` if it is still the file judged stale (``ident``).

    It is first moved to a private name, so two runs recovering the same stale lock never remove
    the fresh lock one of them has just taken: a file that turns out to be another (fresh) lock
    is put back."""
    aside = f"{path}.stale.{socket.gethostname()}-{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if _identity(aside) == ident:
        os.unlink(aside)
        return True
    try:
        os.link(aside, path)  # fails if a third run took the path meanwhile: theirs stands
    except OSError:
        pass
    os.unlink(aside)
    return False


@dataclass(frozen=True)
class _Role:
    """What one lock protects, as its messages say it."""

    subject: str  # "output file /x/sr.tif"
    doing: str  # "writing this output"
    remedy: str  # "wait for it or use another -o"


def _busy(path: str, owner: LockOwner | None, role: _Role) -> JobBusy:
    if owner is None:
        return JobBusy(f"{role.subject}: another cmsr job is taking it over right now ({path}); {role.remedy}",
                       None, path)
    elsewhere = "" if owner.on_this_host else (
        f"; it runs on another host, so cmsr cannot tell whether it still does: if not, delete {path}")
    return JobBusy(f"{role.subject}: another cmsr job is {role.doing} ({owner.describe()}){elsewhere}; "
                   f"{role.remedy}", owner, path)


def _take(path: str, me: LockOwner, role: _Role) -> str | None:
    """Create the lock ``path`` holding ``me``; returns who held the stale lock it replaced (None
    if it was free). Raises ``JobBusy`` when a live owner holds it."""
    stale: str | None = None
    data = json.dumps(asdict(me), indent=1).encode()
    for _ in range(TAKE_ATTEMPTS):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found, ident = _read(path)
            if ident is None:
                continue  # released meanwhile: try again
            if found is None:
                if time.time() - ident[2] / 1e9 < UNREADABLE_LOCK_GRACE_S:
                    raise _busy(path, None, role) from None
            elif found.alive():
                raise _busy(path, found, role) from None
            if _discard(path, ident):
                stale = found.describe() if found is not None else f"unreadable lock {path}"
            continue
        except OSError as exc:
            raise InvalidInput(f"{role.subject}: cannot create the lock file {path} ({exc.strerror})") from None
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return stale
    raise _busy(path, None, role)


def _release(path: str, me: LockOwner) -> None:
    """Remove the lock ``path`` if it is still ours (never another run's)."""
    found, _ = _read(path)
    if found is not None and found.token == me.token:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _stale_message(out: str, stale: list[str]) -> str:
    return (f"output file {out}: the cmsr job that held it is gone ({stale[0]}; it crashed or was "
            "killed); taking over its lock (finished tiles are reused)")


@contextlib.contextmanager
def own_job(out: str, work_dir: str, *, rgb: str, target: str,
            notice: Callable[[str], None] | None = None) -> Iterator[LockOwner]:
    """Own ``out`` and ``work_dir`` while inside: take ``<out>.lock`` and ``<work_dir>/owner.lock``.

    Raises ``JobBusy`` (a ``tiling.errors.InvalidInput``) naming the running job when another
    job holds either; a lock left by a job that is gone is taken over, with one notice (``notice``
    gets its text; None: a ``StaleLockWarning``). The output is checked first (not an input, its
    folder writable: the lock goes there) and the work dir is created if missing. On exit (normal,
    exception, Ctrl-C) both locks are removed, and a work dir this call created is removed again
    if it is empty (a refused input leaves nothing behind)."""
    out = os.path.abspath(out)
    work_dir = os.path.abspath(work_dir)
    align.check_output(out, [rgb, target])
    me = LockOwner.of_this_process(rgb, target, out)
    out_lock, dir_lock = out_lock_path(out), work_dir_lock_path(work_dir)
    stale = [_take(out_lock, me, _Role(f"output file {out}", "writing this output", "wait for it or use another -o"))]
    created_work_dir = False
    try:
        if not os.path.isdir(work_dir):
            try:
                os.makedirs(work_dir)
                created_work_dir = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise InvalidInput(f"work directory {work_dir}: cannot be created ({exc.strerror})") from None
        stale.append(_take(dir_lock, me, _Role(f"work directory {work_dir}", "using this work directory",
                                              "wait for it or use another --work-dir")))
    except BaseException:
        _release(out_lock, me)
        if created_work_dir:
            with contextlib.suppress(OSError):
                os.rmdir(work_dir)
        raise
    gone = [s for s in stale if s is not None]
    if gone:
        text = _stale_message(out, gone)
        if notice is not None:
            notice(text)
        else:
            warnings.warn(text, StaleLockWarning, stacklevel=3)
    try:
        yield me
    finally:
        _release(dir_lock, me)
        _release(out_lock, me)
        if created_work_dir:
            with contextlib.suppress(OSError):  # not empty: the job's state, kept for resume
                os.rmdir(work_dir)


__all__ = ["own_job", "JobBusy", "StaleLockWarning", "LockOwner", "out_lock_path", "work_dir_lock_path"]
