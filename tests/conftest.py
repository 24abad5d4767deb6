"""Shared fixtures. Everything that starts Prefect or Dask is lazy (session-scoped fixtures only
the ``engine`` tests request), so the core's tests never start either.

The real data (dev pairs, geo rasters, FLIR JPEGs) lives outside the repository, in
``../shared/data`` next to the checkout, or wherever ``CMSR_SHARED_DATA`` points. Tests reach it
only through the ``shared_data`` fixture, which skips them when it is absent, so a clone without
the data collects and runs everything else."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SAMPLE = REPO / "flows" / "sample"
SHARED_DATA_ENV = "CMSR_SHARED_DATA"


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for processes the engine tests start: repo + tests importable, offline
    Prefect, one BLAS thread."""
    from flows.engine import OFFLINE_ENV

    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def shared_data_root() -> Path:
    """Where the real data should be: ``$CMSR_SHARED_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get(SHARED_DATA_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (``pairs/``, ``geo/``, ``flir/``); skips the test when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (check out shared/data next to the repo, "
                    f"or set {SHARED_DATA_ENV})")
    return root


@pytest.fixture(scope="session")
def sample() -> dict[str, Path]:
    return {"rgb": SAMPLE / "rgb_10m.tif", "target": SAMPLE / "nir_40m.tif", "truth": SAMPLE / "nir_10m_truth.tif"}


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test API for the whole session (temporary PREFECT_HOME and database; a
    generous start-up timeout for loaded CI machines). Yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)] + (
        [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    from flows.engine import configure_environment

    configure_environment()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        url = str(PREFECT_API_URL.value())
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # for the CLI subprocesses and the Dask workers
        try:
            yield url
        finally:
            from flows.engine import flush_prefect

            flush_prefect()
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


class DaskProcesses:
    """A real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (started by the tests)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _dask(self) -> list[str]:
        exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
        return [exe] if exe else [sys.executable, "-m", "distributed.cli.dask_spec"]

    def start_scheduler(self) -> None:
        sf = self.root / "scheduler.json"
        log = open(self.root / "scheduler.log", "ab")
        self.scheduler = subprocess.Popen(
            self._dask() + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(sf)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not sf.exists() and time.time() < deadline:
            time.sleep(0.2)
        import json

        self.address = json.loads(sf.read_text())["address"]

    def add_worker(self, name: str, resources: str | None = None) -> subprocess.Popen:
        log = open(self.root / f"worker-{name}.log", "ab")
        args = self._dask() + ["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                               "--name", name, "--host", "127.0.0.1", "--no-nanny"]
        if resources:
            args += ["--resources", resources]
        p = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(p)
        return p

    def wait_workers(self, n: int, timeout: float = 240) -> None:
        import distributed

        with distributed.Client(self.address, set_as_default=False, timeout="60s") as c:
            c.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def dask_processes(tmp_path_factory, prefect_harness):
    """Scheduler + two single-thread workers as separate OS processes, shared by the engine tests."""
    root = tmp_path_factory.mktemp("dask")
    procs = DaskProcesses(root, engine_env())
    procs.start_scheduler()
    try:
        procs.add_worker("w1")
        procs.add_worker("w2")
        procs.wait_workers(2)
        yield procs
    finally:
        procs.stop()
