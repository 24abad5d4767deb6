"""Where the tiles run: an embedded ``LocalCluster``, an existing Dask cluster, or local GPUs.

One config object (:class:`ClusterSpec`) and one context manager (:func:`open_cluster`) that
yields a :class:`ClusterHandle` (scheduler address + whether tile tasks must request a GPU).
The flow's ``DaskTaskRunner`` connects to that address, so the cluster's lifetime is ours (we
can flush Prefect inside the workers before closing them, which lets them exit cleanly).

GPU rule: tile tasks are annotated ``resources={"GPU": 1}`` exactly when the cluster's workers
declare a ``GPU`` resource (``LocalCUDACluster`` here, or ``dask cuda worker --resources
GPU=1`` / ``cmsr``'s docker image elsewhere). Each GPU worker declares ``GPU=1``, so the Dask
scheduler never runs two trainings on one GPU; CPU-only clusters declare nothing and get
unannotated tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import interrupts
from .engine import configure_environment, flush_prefect, worker_environment
from .errors import UsageError

configure_environment()

import dask  # noqa: E402
import distributed  # noqa: E402

#: Modules every embedded worker imports when it starts (Prefect, the job, the core, torch:
#: several seconds per process), so the first tile's time is its own and the import overlaps
#: the temporary API's start-up; ``flows.warning_lines`` prints warnings as one line under the CLI.
WORKER_PRELOAD = ("flows.survey", "cmsr", "flows.warning_lines")

#: Memory one CPU worker should have (a CMSR tile of 512+2x32 px trains in well under 1 GB);
#: caps the automatic worker count on small-memory machines.
WORKER_MEMORY_BYTES = 1_500_000_000


@dataclass(frozen=True)
class ClusterSpec:
    """How to get Dask workers for one job (all defaults: the embedded local cluster)."""

    scheduler: str | None = None
    """``tcp://HOST:8786`` of an existing cluster; None -> start one here (embedded)."""
    workers: int | None = None
    """Embedded CPU cluster: worker processes; None -> sized to the machine (cores, memory)."""
    threads_per_worker: int = 1
    """Tiles one worker runs at a time (CPU). GPU workers always get 1."""
    gpus: int | str | None = None
    """``N`` -> ``dask_cuda.LocalCUDACluster`` on N GPUs; ``"auto"`` -> all visible GPUs
    (CPU cluster if none); None/0 -> CPU."""
    resources: tuple[tuple[str, float], ...] = ()
    """Extra resources each embedded worker declares (e.g. ``(("GPU", 1),)`` to emulate GPU
    workers on CPU in tests)."""
    max_workers_hint: int | None = None
    """Upper bound for the automatic size (the number of tiles still to run)."""
    worker_env: tuple[tuple[str, str], ...] = field(default_factory=lambda: tuple(worker_environment().items()))
    """Environment of embedded worker processes (offline Prefect, 1 BLAS thread, allocator)."""


@dataclass(frozen=True)
class ClusterHandle:
    """The cluster one job runs on, as the flow needs it: where to connect, and whether tile
    tasks must request a GPU."""

    address: str
    gpu: bool  # tile tasks request resources={"GPU": 1}
    workers: int
    kind: str  # "embedded", "embedded-gpu", "existing"

    def describe(self) -> str:
        what = {"embedded": "local CPU cluster", "embedded-gpu": "local GPU cluster", "existing": "cluster"}[self.kind]
        unit = "GPU worker" if self.gpu else "worker"
        return f"{what} {self.address}, {self.workers} {unit}{'s' if self.workers != 1 else ''}"


def available_cpus() -> int:
    """CPUs this process may use (affinity/cgroup-aware where the OS tells)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, n)


def auto_workers(hint: int | None = None) -> int:
    """Embedded worker count: one per core, as many as memory allows, no more than tiles."""
    import psutil

    by_memory = max(1, int(psutil.virtual_memory().total // WORKER_MEMORY_BYTES))
    n = min(available_cpus(), by_memory)
    if hint is not None:
        n = min(n, max(1, hint))
    return n


def visible_gpus() -> int:
    """Number of CUDA devices torch can see (0 without CUDA)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_gpus(gpus: int | str | None) -> int:
    """``--gpus`` value -> a GPU count (``auto`` -> visible GPUs; refuses more than visible)."""
    if gpus in (None, 0, "0"):
        return 0
    seen = visible_gpus()
    if gpus == "auto":
        return seen
    n = int(gpus)
    if n < 0:
        raise UsageError(f"--gpus {gpus}: expected a positive number or 'auto'")
    if n > seen:
        raise UsageError(f"--gpus {n}: only {seen} CUDA device(s) visible on this machine")
    return n


def _pre_spawn_environ(env: dict[str, str]) -> dict[str, str]:
    """Dask's nanny exports ``distributed.nanny.pre-spawn-environ`` *before* the worker process
    starts (and sets its own ``MALLOC_TRIM_THRESHOLD_=65536`` there); glibc reads ``MALLOC_*``
    only at start, so the allocator settings must go there, not in the worker's ``env``."""
    merged = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    merged.update({k: v for k, v in env.items() if k.startswith("MALLOC_") or k.endswith("_NUM_THREADS")})
    return {k: str(v) for k, v in merged.items()}


def gpu_workers(client) -> bool:
    """True when any worker of the cluster declares a ``GPU`` resource."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


class EmbeddedCluster(distributed.LocalCluster):
    """``LocalCluster`` with cmsr's defaults (worker processes sized to the machine, one thread
    each, offline worker environment, allocator settings before spawn, quiet logs) that drains
    Prefect's log/event queues inside the workers before closing: without the drain a worker's
    exit waits on those threads and the nanny kills it with a warning after 4 s.

    Also the default task runner cluster of ``superresolve_survey`` when called directly."""

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1, resources: dict | None = None,
                 env: dict[str, str] | None = None, **kwargs) -> None:
        env = dict(env) if env is not None else worker_environment()
        kwargs.setdefault("processes", True)
        kwargs.setdefault("silence_logs", logging.WARNING)
        # the scheduler's HTTP server (health checks; Dask's dashboard too where bokeh is
        # installed) on a random port: with None it still binds :8787 and warns when another
        # cluster holds it
        kwargs.setdefault("dashboard_address", ":0")
        kwargs.setdefault("preload", list(WORKER_PRELOAD))
        # the cluster's loop thread and the worker processes it spawns inherit the blocked SIGINT
        with interrupts.sigint_blocked(), \
                dask.config.set({"distributed.nanny.pre-spawn-environ": _pre_spawn_environ(env)}):
            super().__init__(n_workers=n_workers or auto_workers(), threads_per_worker=threads_per_worker,
                             env=env, resources=resources or None, **kwargs)

    def close(self, timeout: float | None = None):
        if interrupts.requested():
            with _distributed_quiet():
                _stop_workers_now(self)
                return super().close(INTERRUPTED_CLOSE_S)
        _close_workers_patiently(self)
        return super().close(timeout)


#: Seconds a worker process may take to exit after its worker closed (interpreter teardown with
#: torch loaded takes 1-2 s, several on a loaded machine; Dask's default is 4 s, then a kill
#: and a warning line).
WORKER_EXIT_TIMEOUT_S = 30.0


def _close_workers_patiently(cluster) -> None:
    """Drain Prefect's queues inside the workers, then close each worker's nanny with a
    generous timeout, so workers exit on their own instead of being killed."""
    if getattr(cluster, "status", None) is None or cluster.status.name != "running":
        return
    try:
        with distributed.Client(cluster.scheduler_address, set_as_default=False, timeout="10s") as client:
            client.run(flush_prefect)
    except Exception:  # noqa: BLE001 - closing anyway
        pass

    async def close_all() -> None:
        import asyncio

        nannies = [w for w in list(cluster.workers.values()) if isinstance(w, distributed.Nanny)]
        await asyncio.gather(*(w.close(timeout=WORKER_EXIT_TIMEOUT_S / 0.8) for w in nannies),
                             return_exceptions=True)

    try:
        cluster.sync(close_all)
    except Exception:  # noqa: BLE001 - the regular close follows
        pass


#: Seconds the scheduler and nannies get to close after Ctrl-C (the workers are already gone).
INTERRUPTED_CLOSE_S = 5.0


@contextlib.contextmanager
def _distributed_quiet() -> Iterator[None]:
    """Dask's log lines off while inside (its loggers have levels of their own, set by
    ``silence_logs``): after Ctrl-C, workers killed on purpose and the tasks they lose are not
    the user's news."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "distributed" or name.startswith("distributed.")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _stop_workers_now(cluster) -> None:
    """After Ctrl-C: end the worker processes at once (a tile's result is written atomically, so a
    killed tile only runs again on resume), telling each nanny first not to restart its worker."""
    pids = []
    for nanny in list(getattr(cluster, "workers", {}).values()):
        if isinstance(nanny, distributed.Nanny):
            nanny.close_gracefully(reason="cmsr-interrupted")  # no restart when its worker dies
            if nanny.pid:
                pids.append(nanny.pid)
    interrupts.stop_processes(pids)


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec) -> Iterator[ClusterHandle]:
    """Start (or connect to) the cluster of ``spec``; close what we started on exit."""
    if spec.scheduler:
        with distributed.Client(spec.scheduler, set_as_default=False, timeout="60s") as client:
            n = len(client.scheduler_info().get("workers", {}))
            handle = ClusterHandle(spec.scheduler, gpu_workers(client), n, "existing")
        yield handle
        return

    env = dict(spec.worker_env)
    n_gpus = resolve_gpus(spec.gpus)
    if n_gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise UsageError(
                "--gpus needs dask-cuda: pip install 'cmsr[gpu]' (or use the docker/Dockerfile.gpu image)"
            ) from None
        os.environ.update({k: v for k, v in env.items() if not k.startswith("MALLOC_")})
        with interrupts.sigint_blocked(), \
                dask.config.set({"distributed.nanny.pre-spawn-environ": _pre_spawn_environ(env)}):
            cluster = LocalCUDACluster(
                n_workers=n_gpus, threads_per_worker=1, resources={"GPU": 1}, preload=list(WORKER_PRELOAD),
                dashboard_address=":0", silence_logs=logging.WARNING,
            )
        handle = ClusterHandle(cluster.scheduler_address, True, n_gpus, "embedded-gpu")
    else:
        n = spec.workers or auto_workers(spec.max_workers_hint)
        resources = dict(spec.resources) or None
        cluster = EmbeddedCluster(n_workers=n, threads_per_worker=spec.threads_per_worker, resources=resources,
                                  env=env)
        handle = ClusterHandle(cluster.scheduler_address, bool(resources and "GPU" in resources), n, "embedded")
    try:
        yield handle
    finally:
        if interrupts.requested():
            with _distributed_quiet():
                if n_gpus:  # EmbeddedCluster.close does it itself
                    _stop_workers_now(cluster)
                cluster.close(INTERRUPTED_CLOSE_S)
        else:
            if n_gpus:
                _close_workers_patiently(cluster)
            cluster.close()


__all__ = ["ClusterSpec", "ClusterHandle", "EmbeddedCluster", "open_cluster", "auto_workers", "available_cpus",
           "resolve_gpus", "gpu_workers"]
