"""How the fault benchmark drives ``cmsr``: as an outsider, through subprocesses.

Why subprocesses and not ``CliRunner``: the faults of issue 11 live where an in-process test does
not look (two processes on one output, Ctrl-C to a process group, SIGKILL mid-write, file modes
under a umask, processes left behind). Each command runs in its own session (its own process
group, as a terminal's foreground job), its inputs are hashed before and after, and every
process it spawned is tracked through ``/proc`` so orphans can be counted (and then ended: they
are ours).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Optional, Sequence

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session id, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[3]), int(fields[19])


def process_table() -> dict[int, tuple[int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    return table


def family(root: int) -> dict[int, int]:
    """Every live process descended from ``root`` or in its session: pid -> start time (so a
    reused pid is not mistaken for a survivor)."""
    table = process_table()
    found = {p: st[2] for p, st in table.items() if st[1] == root and p != root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for p, st in table.items():
            if st[0] == parent and p not in found:
                found[p] = st[2]
                frontier.append(p)
    return found


def survivors(known: dict[int, int]) -> list[int]:
    alive = []
    for pid, start in known.items():
        st = _stat(pid)
        if st is not None and st[2] == start and not Path(f"/proc/{pid}/status").read_text().count("State:\tZ"):
            alive.append(pid)
    return alive


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return "?"


def end_processes(pids: Sequence[int]) -> None:
    """SIGKILL each process we started (by pid), e.g. the orphans a case counted."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------- files


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), hidden files included."""
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def pixels(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def same_pixels(a: np.ndarray, b: np.ndarray, atol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, equal_nan=True))


class CreateWatch:
    """Tells, as soon as it happens, that a file whose name starts with ``prefix`` was created in
    ``folder`` (inotify via libc: a SIGKILL "during the COG write" must land within the few
    milliseconds the write takes; polling would miss it or cost a core)."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, folder: Path, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(folder).encode(),
                                                      self.IN_CREATE | self.IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify unavailable")

    def wait(self, seconds: float) -> Optional[str]:
        """The matching name created within ``seconds``, else None."""
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if not ready:
            return None
        data = os.read(self.fd, 65536)
        i = 0
        while i + 16 <= len(data):
            length = int.from_bytes(data[i + 12:i + 16], sys.byteorder)
            name = data[i + 16:i + 16 + length].rstrip(b"\0")
            if name.startswith(self.prefix):
                return name.decode()
            i += 16 + length
        return None

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------- running the CLI



#: this machine's folders, shown by name in results (``SCRATCH/``, ``shared/data/``, repo-relative):
#: the runner registers them, so the tables committed to RESULTS.md carry no machine paths
PLACES: dict[str, str] = {}


def shown(text: str) -> str:
    """``text`` with every registered folder replaced by its name (before any truncation)."""
    for path, name in PLACES.items():
        text = text.replace(path.rstrip("/") + "/", name)
    return text

@dataclass(frozen=True)
class CliRun:
    """One finished command, as an outsider saw it."""

    args: tuple[str, ...]
    rc: Optional[int]  # None: it outlived its time limit and was killed
    stdout: str
    stderr: str
    seconds: float
    inputs_changed: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()  # processes it spawned that outlived it ("pid cmdline")
    note: str = ""

    def lines(self) -> list[str]:
        """Non-empty stderr lines, progress-bar redraws split (``\\r``)."""
        out = []
        for line in self.stderr.replace("\r", "\n").splitlines():
            if line.strip():
                out.append(line.rstrip())
        return out

    def mentioning(self, fragment: str) -> list[str]:
        return [ln for ln in self.lines() if fragment in ln]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr + self.stdout

    def brief(self) -> str:
        """rc and the first error/warning line, for the result column (folders by :func:`shown`)."""
        said = [ln for ln in self.lines() if ln.startswith(("error:", "warning:"))]
        printed = [ln for ln in self.stdout.splitlines() if ln.strip()]
        tail = shown(said[0] if said else printed[-1] if printed else self.lines()[-1] if self.lines() else "")
        rc = "timeout" if self.rc is None else f"rc {self.rc}"
        return f"{rc}, {self.seconds:.0f} s" + (f": {tail[:160]}" if tail else "")

    def to_dict(self) -> dict:
        return {"args": list(self.args), "rc": self.rc, "seconds": round(self.seconds, 2),
                "stdout_tail": self.stdout[-2000:], "stderr_tail": self.stderr[-4000:],
                "inputs_changed": list(self.inputs_changed), "orphans": list(self.orphans), "note": self.note}


@dataclass
class Running:
    """A started command: its Popen, its inputs' hashes, the processes seen in its family."""

    args: tuple[str, ...]
    proc: subprocess.Popen
    started: float
    hashes: dict[str, str]
    out_file: IO[str]
    err_file: IO[str]
    seen: dict[int, int] = field(default_factory=dict)

    def look(self) -> None:
        if self.proc.poll() is None:
            self.seen.update(family(self.proc.pid))

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def signal_main(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float, note: str = "", grace: float = 5.0) -> CliRun:
        """Wait for the exit (killing the whole family after ``timeout``), then count the
        processes of its family that outlive it by ``grace`` seconds, and end those."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.look()
            time.sleep(0.2)
        rc = self.proc.poll()
        if rc is None:
            self.look()
            end_processes([self.proc.pid, *self.seen])
            self.proc.wait()
        seconds = time.monotonic() - self.started
        out, err = (self._drain(f) for f in (self.out_file, self.err_file))
        until = time.monotonic() + grace
        left = survivors(self.seen)
        while left and time.monotonic() < until:
            time.sleep(0.25)
            left = survivors(self.seen)
        orphans = tuple(f"{p} {cmdline(p)}" for p in left)
        end_processes(left)
        changed = tuple(p for p, h in self.hashes.items() if not os.path.exists(p) or sha(p) != h)
        return CliRun(self.args, rc, out, err, seconds, changed, orphans, note)

    @staticmethod
    def _drain(f: IO[str]) -> str:
        f.seek(0)
        text = f.read()
        f.close()
        return text


def engine_env(prefect_home: Path) -> dict[str, str]:
    """The clone's code first on the path (the venv's editable install may point elsewhere), one
    BLAS thread, Prefect state in the benchmark's own folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PREFECT_HOME": str(prefect_home), "COLUMNS": "120"})
    return env


@dataclass(frozen=True)
class Cli:
    """Starts ``python -m flows.cli ARGS`` the way a terminal would (own session, a umask)."""

    cwd: Path
    prefect_home: Path
    timeout: float

    def start(self, args: Sequence[str], *, umask: int = 0o022, user: Optional[int] = None,
              env: Optional[dict[str, str]] = None) -> Running:
        args = tuple(str(a) for a in args)
        hashes = {a: sha(a) for a in args if os.path.isfile(a)}
        preexec: Optional[Callable[[], None]] = None
        if user is not None:
            def preexec() -> None:
                os.setgroups([])
                os.setgid(user)
                os.setuid(user)
        # files, not pipes: a command that prints a long traceback while nobody reads must not block
        out_file, err_file = (tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") for _ in "oe")
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=self.cwd,
                                env=env or engine_env(self.prefect_home), stdout=out_file, stderr=err_file,
                                start_new_session=True, umask=umask, preexec_fn=preexec)
        return Running(args, proc, time.monotonic(), hashes, out_file, err_file)

    def run(self, args: Sequence[str], **kw) -> CliRun:
        return self.start(args, **kw).wait(self.timeout)
