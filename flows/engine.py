"""Prefect engine plumbing: offline defaults, the temporary local API, quiet shutdown.

Why a module of its own: drone farms and HPC clusters are usually offline, and a survey job
must neither phone home nor print scary lines. Everything here is set *before* Prefect is
imported (Prefect reads its settings from the environment), only where the user has not set
the variable already, so an operator can still point ``PREFECT_API_URL`` at a real server.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from . import interrupts

#: Environment defaults applied by :func:`configure_environment` (never overriding the user's).
OFFLINE_ENV: dict[str, str] = {
    # no usage analytics from the client SDK (checked first by Prefect's analytics service)
    "DO_NOT_TRACK": "1",
    # ...nor from the (temporary or compose) server
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect Cloud only, but explicit: no orchestration telemetry
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    # no OS resource sampling threads in flow-run subprocesses
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    # no UI assets served by the temporary API
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # no update/version checks against the network (the API is local)
    "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
    # without PREFECT_API_URL, Prefect may start its own temporary local API ...
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    # ... and on a loaded 2-core box that start can take much longer than Prefect's 20 s
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # dask: keep its INFO chatter (cluster/worker start and stop) off the console
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
}


def configure_environment() -> None:
    """Apply :data:`OFFLINE_ENV` as defaults.

    Call before the first ``import prefect`` in the process; child processes (Dask workers,
    the temporary API server) inherit the environment."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def worker_environment() -> dict[str, str]:
    """Variables every Dask worker process gets: offline Prefect, single-threaded maths
    (one tile per thread; BLAS/OpenMP pools would oversubscribe the cores), and glibc's
    allocator tuned for PyTorch's small training buffers (``cmsr.runtime``, measured there)."""
    env = dict(OFFLINE_ENV)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    from cmsr.runtime import allocator_env

    env.update(allocator_env())
    return env


class PrefectAPI:
    """The Prefect API a run talks to: the configured one, or a temporary local one that is
    starting in a background thread (so the Dask cluster can start meanwhile)."""

    def __init__(self, url: str, thread: threading.Thread | None = None, error: list | None = None) -> None:
        self.url = url
        self.temporary = thread is not None
        self._thread = thread
        self._error = error if error is not None else []

    def wait(self) -> str:
        """Block until the API answers; raise if the temporary server did not start."""
        if self._thread is not None:
            self._thread.join()
            if self._error:
                raise RuntimeError(f"the temporary Prefect API did not start: {self._error[0]}")
        return self.url


def _server_class(services: bool):
    """Prefect's subprocess API server; with ``services``, without the ephemeral flag, so the
    server's background services run too (the deployment scheduler above all: an ephemeral
    server never creates the scheduled runs that ``cmsr serve`` waits for)."""
    import subprocess
    import sys

    from prefect.server.api.server import SubprocessASGIServer

    if not services:
        return SubprocessASGIServer

    class ServerWithServices(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect
            from prefect.settings import get_current_settings

            env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
                   "PREFECT_UI_ENABLED": "0", "PREFECT_SERVER_UI_ENABLED": "0"}
            env.pop("PREFECT__SERVER_EPHEMERAL", None)
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env=env,
            )

    return ServerWithServices


@contextlib.contextmanager
def prefect_api(startup_timeout: float | None = None, services: bool = False) -> Iterator[PrefectAPI]:
    """Yield the Prefect API to use, starting a temporary local API if none is configured.

    Prefect would start one lazily itself, but then every Dask worker process that runs a task
    would start *its own* server on the same database (they inherit no API URL): that races for
    ports and leaves orphans. Starting it here and exporting ``PREFECT_API_URL`` gives workers
    (which inherit the environment, and get it in Prefect's serialised settings) the one URL.
    The server starts in a thread; call ``wait()`` before the first API call. ``services``:
    run the server's background services (schedules), for ``cmsr serve``."""
    configure_environment()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield PrefectAPI(str(url))
        return
    server_cls = _server_class(services)
    timeout = int(startup_timeout or float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    server = server_cls(port=server_cls().find_available_port())
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - re-raised by wait()
            errors.append(exc)

    thread = threading.Thread(target=start, name="cmsr-prefect-api", daemon=True)
    api = PrefectAPI(server.api_url, thread, errors)
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    with interrupts.sigint_blocked():  # the thread starts the server: both inherit the mask
        thread.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield api
            finally:
                if not errors:
                    flush_prefect(INTERRUPTED_FLUSH_S if interrupts.requested() else 10.0)
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        _stop_server(server, thread)


#: Seconds the teardown after Ctrl-C gives Prefect's queued logs and events (then drops them).
INTERRUPTED_FLUSH_S = 1.0


def _stop_server(server, thread: threading.Thread) -> None:
    """Stop the temporary API. Normally after its start-up thread is done; after Ctrl-C at once
    (the start-up may still be polling for minutes): stop, let the thread notice, and stop again
    in case it had just spawned the process."""
    if not interrupts.requested():
        thread.join()
        server.stop()
        return
    server.stop()
    thread.join(2.0)
    server.stop()


def flush_prefect(timeout: float = 10.0) -> None:
    """Send queued logs and events now (before the API or the process goes away).

    Safe from inside an event loop (``Client.run`` calls it on a worker's loop thread): the
    drain then runs in a helper thread, where Prefect's sync path blocks until done."""

    def drain() -> None:
        try:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker
        except ImportError:  # pragma: no cover
            return
        for service in (APILogWorker, EventsWorker):
            try:
                service.drain_all(timeout=timeout)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass

    t = threading.Thread(target=drain, name="cmsr-prefect-flush", daemon=True)
    t.start()
    t.join(timeout + 1.0)


__all__ = ["OFFLINE_ENV", "configure_environment", "worker_environment", "prefect_api", "PrefectAPI", "flush_prefect"]
