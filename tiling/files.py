"""Writing a file so that readers see either the old one or the complete new one, never a part.

Workers on shared storage read tile results, ``job.json`` and the outputs while others write them,
and a killed run must not leave a truncated file under the real name (resume would trust it).
Standard library only, so every layer above (tiling, pipelines) can use it.

Temp files are named ``.<name>.<host>-<pid>.<random>.tmp<ext>``: hidden, recognisably ours, and
saying who writes them, so a later run can remove the ones a killed writer left
(:func:`remove_stale_temps`) without touching a live writer's. Files get the mode a plain
``open(path, "w")`` would give them under the process's umask, not ``mkstemp``'s 0600: outputs
are read by GIS and tile servers running as other users.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager

#: a temp file whose writer cannot be checked (another host, or a name without a writer, as
#: older versions wrote them) is stale only when untouched this long (seconds)
UNKNOWN_WRITER_MAX_AGE_S = 3600.0


def _host_token() -> str:
    """This host's name as it may appear in a file name (no dots: they separate the name's parts)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")[:40] or "host"


_HOST = _host_token()


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    """The umask without changing it where Linux says it (``os.umask`` sets it process-wide, so
    another thread creating a file meanwhile would get the wrong mode); else set-and-restore once."""
    found = _umask_from_proc()
    if found is not None:
        return found
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK_AT_IMPORT = _umask_at_import()


def file_mode() -> int:
    """The mode a new plain file gets under the current umask (0o644 with the usual 022)."""
    umask = _umask_from_proc()
    return 0o666 & ~(_UMASK_AT_IMPORT if umask is None else umask)


def _writer() -> str:
    return f"{_HOST}-{os.getpid()}"


def _make_temp(path: str) -> str:
    """An empty temp file beside ``path`` named after it and its writer, with a plain file's mode."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_writer()}.", suffix=f".tmp{ext}", dir=folder)
    try:
        os.fchmod(fd, file_mode())
    except OSError:  # a file system without modes (some SMB/FAT mounts): keep what it gives
        pass
    finally:
        os.close(fd)
    return tmp


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temp file is in the same folder (``os.replace`` is atomic only within one file system) and
    keeps ``path``'s extension (GDAL, ``np.save`` and image writers look at it). It exists, empty,
    when the block starts, so the name is this process's alone.
    """
    path = os.fspath(path)
    tmp = _make_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def scratch_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path named like ``atomic_output``'s for ``path``, always removed at the end.

    For intermediate files (the stitched mosaic a COG is made from): two processes never share
    one, and one a killed process left is found by :func:`remove_stale_temps`."""
    tmp = _make_temp(os.fspath(path))
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ``.<base>.<host>-<pid>.<random>.tmp<ext>`` and anything a writer adds after it (GDAL's
# ``.ovr.tmp``, ``.aux.xml``); older versions wrote ``.<base>.<random>.tmp<ext>``
_TEMP = re.compile(r"\.(?P<base>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp(?:\..*)?")
_OLD_TEMP = re.compile(r"\.(?P<base>.+)\.[A-Za-z0-9_]+\.tmp(?:\..*)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stale(name: str, folder: str, base_names: Collection[str] | None, now: float,
           max_age_s: float) -> bool:
    """Whether ``name`` in ``folder`` is a temp file of one of ``base_names`` (None: any) whose
    writer is gone: on this host a process that no longer runs; elsewhere, or unknown, one not
    heard from (mtime) for ``max_age_s``. This process's own temps are never stale (its threads
    may be writing them). "This host" is the host name: containers that share one host name but
    not their process ids would see each other's writers as gone (their writes then fail loudly
    at the rename, never silently)."""
    m = _TEMP.fullmatch(name)
    if m is not None and (base_names is None or m["base"] in base_names):
        if m["host"] == _HOST:
            pid = int(m["pid"])
            return pid != os.getpid() and not _alive(pid)
    else:
        m = _OLD_TEMP.fullmatch(name)
        if m is None or (base_names is not None and m["base"] not in base_names):
            return False
    try:
        return now - os.lstat(os.path.join(folder, name)).st_mtime > max_age_s
    except OSError:
        return False


def remove_stale_temps(folder: str | os.PathLike, base_names: Collection[str] | None = None,
                       max_age_s: float = UNKNOWN_WRITER_MAX_AGE_S) -> list[str]:
    """Remove the temp files of ``atomic_output``/``scratch_file`` for ``base_names`` (file names
    in ``folder``; None: any name, for folders that are the job's own) whose writer is gone (see
    ``_stale``); returns the paths removed. Only files of our own name pattern are considered."""
    folder = os.fspath(folder)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".") and ".tmp" in n]
    except FileNotFoundError:
        return []
    now = time.time()
    removed = []
    for name in names:
        if _stale(name, folder, base_names, now, max_age_s):
            path = os.path.join(folder, name)
            try:
                if os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                pass
    return removed
