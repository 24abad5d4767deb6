"""The Prefect flow ``superresolve_survey``: prepare -> one task per tile (or batch) -> finish.

Tasks take and return only paths, tile indexes and small dicts: the scheduler never carries
pixels; workers read their windows from shared storage (``pipelines.run_tile``). Tile results
are written atomically by ``pipelines``, so a failed, killed or interrupted run resumes with
only the missing tiles. Prefect's input caching is off (``NO_CACHE``): resumption is the
job's own, keyed by the plan.

A job whose tiles take the survey's registration field (``cmsr`` with a registering preset) first
runs its registration stage: the tiles' own registrations as tasks, then one task making the field.
A job that learns a survey model (``Job.survey_model``, decided by prepare) then learns it in one
task (``survey-model``), before the tiles, which all fine-tune from it.

``run_survey`` is what the CLI calls: own the output, prepare the job here (bad input is refused
before any engine starts), then temporary API, cluster, progress, flow, teardown.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .engine import configure_environment

configure_environment()

import dask  # noqa: E402
import distributed  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.context import get_run_context  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

import pipelines  # noqa: E402
from pipelines.job.registration import registers  # noqa: E402

from .cluster import ClusterHandle, ClusterSpec, gpu_workers, open_cluster  # noqa: E402
from .errors import TileFailed  # noqa: E402 - raised here; lives where the CLI can name it without Prefect
from .interrupts import job_interruptible, stop_if_interrupted  # noqa: E402

#: Tiles per registration task at least (a tile's registration takes seconds: fewer, larger
#: tasks keep the orchestration overhead small).
REGISTRATION_TILES_PER_TASK = 8

#: Tile task retries (transient failures: a worker's file system hiccup, a CUDA OOM when a
#: co-tenant spiked) and the delay between tries.
TILE_RETRIES = 2
TILE_RETRY_DELAY_S = 5.0


@dataclass(frozen=True)
class Progress:
    """One progress event of a running job (sent to listeners in the flow's process)."""

    kind: str  # "planned" | "tile" | "finished"
    total: int  # tiles to process (not skipped)
    done: int  # of them, finished (including reused ones)
    reused: int = 0
    index: int | None = None  # the tile that just finished
    seconds: float | None = None  # its own time on its worker
    job_path: str | None = None


_listeners: list[Callable[[Progress], None]] = []


@contextlib.contextmanager
def progress_listener(fn: Callable[[Progress], None]) -> Iterator[None]:
    """Call ``fn(Progress)`` for every event of flows run in this process while inside."""
    _listeners.append(fn)
    try:
        yield
    finally:
        _listeners.remove(fn)


def _emit(event: Progress) -> None:
    for fn in list(_listeners):
        try:
            fn(event)
        except Exception:  # noqa: BLE001 - a broken progress bar must not fail a survey
            pass


# ------------------------------------------------------------------------------------ tasks


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
def prepare_job(rgb: str, target: str, out: str, config: dict, job_path: str | None = None) -> dict:
    """Validate, align, plan; returns the job file and the tiles still to run. With ``job_path``
    (prepared by the caller, ``run_survey``) the job is only loaded, not prepared again."""
    if job_path is None:
        job = pipelines.prepare(rgb, target, out, pipelines.JobConfig.from_dict(config))
    else:
        job = pipelines.load_job(job_path)
        if job.out != os.path.abspath(out):
            raise ValueError(f"job {job_path} writes {job.out}, not {out}")
    todo = pipelines.pending(job)
    active = [t.index for t in job.plan.tiles if not t.skip]
    return {
        "job_path": job.job_path, "tiles": len(job.plan.tiles), "active": len(active), "pending": todo,
        "scale": job.scale, "warnings": list(job.warnings), "registers": registers(job),
        "registration_pending": pipelines.pending_estimates(job),
        "survey_model": job.survey_model.to_dict(),
    }


@task(name="register", cache_policy=NO_CACHE, persist_result=False, retries=TILE_RETRIES,
      retry_delay_seconds=TILE_RETRY_DELAY_S)
def estimate_task(job_path: str, indices: list[int]) -> list[int]:
    """Tiles ``indices``' own guide registrations (files in the work dir); a failure names them."""
    try:
        return [r["index"] for r in pipelines.estimate_tiles(job_path, list(indices))]
    except Exception as exc:  # noqa: BLE001 - re-raised with the tiles named
        raise TileFailed(f"registration of tiles {', '.join(map(str, indices))} of job {job_path}: "
                         f"{type(exc).__name__}: {exc}") from exc


@task(name="registration-field", cache_policy=NO_CACHE, persist_result=False)
def regularise_task(job_path: str) -> dict:
    """The survey's consistent registration field from the tiles' own (``field.json``); its summary."""
    return pipelines.regularise_survey(job_path)


@task(name="survey-model", cache_policy=NO_CACHE, persist_result=False)
def survey_model_task(job_path: str) -> str | None:
    """The survey model every tile fine-tunes from (one file in the work dir; reused on resume)."""
    return pipelines.learn_survey(job_path)


@task(name="tile", cache_policy=NO_CACHE, persist_result=False, retries=TILE_RETRIES,
      retry_delay_seconds=TILE_RETRY_DELAY_S)
def tile_task(job_path: str, indices: list[int]) -> list[dict]:
    """Super-resolve tiles ``indices`` of the job (one or a batch); a failure names them."""
    try:
        if len(indices) == 1:
            results = [pipelines.run_tile(job_path, indices[0])]
        else:
            results = pipelines.run_tiles(job_path, list(indices))
    except Exception as exc:  # noqa: BLE001 - re-raised with the tile named
        which = f"tile {indices[0]}" if len(indices) == 1 else "tiles " + ", ".join(map(str, indices))
        raise TileFailed(f"{which} of job {job_path}: {type(exc).__name__}: {exc}") from exc
    return [r.to_dict() for r in results]


@task(name="finish", cache_policy=NO_CACHE, persist_result=False)
def finish_job(job_path: str, results: list[dict]) -> dict:
    """Stitch -> COG -> report JSON -> quick-look PNG."""
    outs = pipelines.finish(job_path, [pipelines.TileResult.from_dict(r) for r in results])
    return outs.to_dict()


# ------------------------------------------------------------------------------------ flow


def _batches(indices: Sequence[int], size: int) -> list[list[int]]:
    size = max(1, int(size))
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def _dask_client():
    """The Dask client of the flow's task runner (``DaskTaskRunner``)."""
    return get_run_context().task_runner.client


@flow(name="superresolve-survey", task_runner=DaskTaskRunner(cluster_class="flows.cluster.EmbeddedCluster"),
      persist_result=False, validate_parameters=False)
def superresolve_survey(rgb: str, target: str, out: str, config: dict | None = None, tiles_per_task: int = 1,
                        tile_timeout_s: float | None = None, gpu: bool | None = None,
                        tile_retries: int = TILE_RETRIES, job_path: str | None = None) -> dict:
    """Super-resolve one survey: ``target`` (thermal/NIR/...) onto ``rgb``'s grid -> COG ``out``.

    ``config``: ``pipelines.JobConfig`` fields (JSON-able, so deployments can take it);
    ``tiles_per_task``: tiles per Prefect task (1: one task per tile); ``tile_timeout_s``: per
    tile, scaled by the batch size; ``gpu``: request ``resources={"GPU": 1}`` per tile task
    (None: when the cluster's workers declare a GPU resource); ``tile_retries``: tries after a
    failure, ``TILE_RETRY_DELAY_S`` apart; ``job_path``: the job, already prepared by the caller,
    who owns its output (``run_survey``); None: prepared here, owning the output while the flow
    runs (a deployment's or ``cmsr submit``'s run)."""
    config = dict(config or {})
    if job_path is not None:
        return _run_prepared(rgb, target, out, config, tiles_per_task, tile_timeout_s, gpu, tile_retries, job_path)
    work_dir = pipelines.JobConfig.from_dict(config).work_dir_for(out)
    with pipelines.own_job(out, work_dir, rgb=rgb, target=target, notice=get_run_logger().warning):
        return _run_prepared(rgb, target, out, config, tiles_per_task, tile_timeout_s, gpu, tile_retries, None)


def _run_prepared(rgb: str, target: str, out: str, config: dict, tiles_per_task: int, tile_timeout_s: float | None,
                  gpu: bool | None, tile_retries: int, job_path: str | None) -> dict:
    """The flow's body (inside its run context), for an owned output."""
    logger = get_run_logger()
    info = prepare_job(rgb, target, out, config, job_path)
    job_path, todo = info["job_path"], list(info["pending"])
    total, reused = info["active"], info["active"] - len(info["pending"])
    for w in info["warnings"]:
        logger.warning(w)
    _emit(Progress("planned", total, reused, reused=reused, job_path=job_path))
    client = _dask_client()
    use_gpu = gpu_workers(client) if gpu is None else bool(gpu)
    if info["registers"]:
        _register(job_path, info["registration_pending"], tiles_per_task, use_gpu, client)
    choice = info["survey_model"]
    if choice["used"] and choice["reused_from"] is None:  # after the field: it learns with its geometry
        with dask.annotate(resources={"GPU": 1}) if use_gpu else contextlib.nullcontext():
            path = survey_model_task.submit(job_path).result()
        logger.info(f"survey model ready ({choice['reason']}): {path}; each tile fine-tunes from it")
    elif choice["used"]:
        logger.info(f"survey model reused from {choice['reused_from']}; each tile fine-tunes from it")
    logger.info(f"{total} tile(s) to super-resolve, {reused} already done; scale {info['scale']}"
                f"{'; one GPU per tile task' if use_gpu else ''}")

    task_fn = tile_task.with_options(retries=int(tile_retries))
    if tile_timeout_s:
        task_fn = task_fn.with_options(timeout_seconds=float(tile_timeout_s) * max(1, tiles_per_task))
    futures = []
    # dask.annotate around submission: the annotation is read by Client.submit in this thread
    # (Prefect's DaskTaskRunner takes no per-task resources argument).
    with dask.annotate(resources={"GPU": 1}) if use_gpu else contextlib.nullcontext():
        for batch in _batches(todo, tiles_per_task):
            futures.append(task_fn.submit(job_path, batch))

    results: list[dict] = []
    failures: list[str] = []
    done = reused
    by_key = {f.wrapped_future.key: f for f in futures}
    for dask_future in distributed.as_completed([f.wrapped_future for f in futures], loop=client.loop):
        stop_if_interrupted()
        prefect_future = by_key[dask_future.key]
        try:
            batch_results = prefect_future.result()
        except Exception as exc:  # noqa: BLE001 - collected; the flow fails after the others finish
            stop_if_interrupted()  # a Ctrl-C that Prefect or pydantic wrapped is no failed tile
            failures.append(str(exc))
            continue
        for r in batch_results:
            results.append(r)
            done += 1
            _emit(Progress("tile", total, done, reused=reused, index=r["index"], seconds=r["seconds"],
                           job_path=job_path))
    if failures:
        head = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise TileFailed(f"{len(failures)} tile task(s) failed ({done}/{total} tiles done, kept for resume): {head}")

    outputs = finish_job(job_path, results)
    _emit(Progress("finished", total, done, reused=reused, job_path=job_path))
    summary = {**outputs, "job": job_path, "tiles": info["tiles"], "processed": total, "reused": reused,
               "scale": info["scale"]}
    logger.info(f"wrote {outputs['cog']}")
    return summary


def _register(job_path: str, pending: list[int], tiles_per_task: int, use_gpu: bool, client) -> None:  # noqa: ANN001
    """The survey registration stage: the tiles' own registrations as tasks (a few tiles each:
    seconds a tile), then the field; its misalignment warning is said here, in the flow's process
    (the CLI's terminal), once."""
    logger = get_run_logger()
    if pending:
        logger.info(f"registering the guide of {len(pending)} tile(s)")
        per_task = max(int(tiles_per_task), REGISTRATION_TILES_PER_TASK)
        with dask.annotate(resources={"GPU": 1}) if use_gpu else contextlib.nullcontext():
            futures = [estimate_task.submit(job_path, batch) for batch in _batches(pending, per_task)]
        failures = []
        by_key = {f.wrapped_future.key: f for f in futures}
        for dask_future in distributed.as_completed([f.wrapped_future for f in futures], loop=client.loop):
            stop_if_interrupted()
            try:
                by_key[dask_future.key].result()
            except Exception as exc:  # noqa: BLE001 - collected; the flow fails after the others finish
                stop_if_interrupted()
                failures.append(str(exc))
        if failures:
            raise TileFailed(f"{len(failures)} registration task(s) failed: " + "; ".join(failures[:3]))
    summary = regularise_task.submit(job_path).result()
    if summary.get("warning"):
        logger.warning(summary["warning"])
        warnings.warn(summary["warning"], pipelines.MisalignmentWarning, stacklevel=2)


# ------------------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class RunOptions:
    """Engine settings of one run (the job's own settings are in ``pipelines.JobConfig``)."""

    cluster: ClusterSpec = ClusterSpec()
    tiles_per_task: int = 1
    tile_timeout_s: float | None = None
    tile_retries: int = TILE_RETRIES


def planned_config(config: pipelines.JobConfig, cluster: ClusterSpec) -> pipelines.JobConfig:
    """``config`` with the device the tiles will run on, where it is known before the cluster
    starts: an embedded GPU cluster (``--gpus``, or GPU resources) runs tiles on ``cuda``. The
    device is part of the plan key, so the job must be prepared with it."""
    if config.device != "cpu" or cluster.scheduler:
        return config
    from .cluster import resolve_gpus

    if resolve_gpus(cluster.gpus) or "GPU" in dict(cluster.resources):
        return config.replace(device="cuda")
    return config


def run_survey(rgb: str, target: str, out: str, config: pipelines.JobConfig,
               options: RunOptions = RunOptions(), on_cluster: Callable[[ClusterHandle], None] | None = None,
               notice: Callable[[str], None] | None = None):
    """Own ``out`` (``pipelines.own_job``: a second run on it is refused with ``JobBusy``), prepare
    the job in this process, then run the flow with a temporary Prefect API (unless one is
    configured) and the cluster of ``options``; returns the flow's final Prefect state (Completed
    with the summary, or Failed). Bad input raises before the API or the cluster starts, and
    leaves nothing behind. ``notice``: where a taken-over stale lock is told (None: a warning).
    Ctrl-C: the teardown is quick and then ``flows.errors.JobInterrupted`` names the finished
    tiles kept in the work dir (``flows.interrupts``)."""
    with job_interruptible(os.path.abspath(config.work_dir_for(out))):
        return _run_survey_engine(rgb, target, out, config, options, on_cluster, notice)


def _run_survey_engine(rgb: str, target: str, out: str, config: pipelines.JobConfig,
                       options: RunOptions, on_cluster: Callable[[ClusterHandle], None] | None,
                       notice: Callable[[str], None] | None):
    """``run_survey`` without the Ctrl-C handling: ownership, prepare, API, cluster, flow."""
    from .engine import prefect_api

    config = planned_config(config, options.cluster)
    with pipelines.own_job(out, config.work_dir_for(out), rgb=rgb, target=target, notice=notice):
        job = pipelines.prepare(rgb, target, out, config)
        hint = options.cluster.max_workers_hint
        if hint is None and options.cluster.scheduler is None:
            hint = max(1, math.ceil(len(pipelines.pending(job)) / max(1, options.tiles_per_task)))
        spec = ClusterSpec(**{**options.cluster.__dict__, "max_workers_hint": hint})
        with prefect_api() as api:
            with open_cluster(spec) as handle:  # starts while the temporary API boots
                api.wait()
                if on_cluster is not None:
                    on_cluster(handle)
                if handle.gpu and config.device == "cpu":  # an existing cluster's GPU workers: known only now
                    config = config.replace(device="cuda")
                    job = pipelines.prepare(rgb, target, out, config)
                f = superresolve_survey.with_options(task_runner=DaskTaskRunner(address=handle.address))
                return f(rgb, target, out, config=config.to_dict(), tiles_per_task=options.tiles_per_task,
                         tile_timeout_s=options.tile_timeout_s, gpu=handle.gpu, tile_retries=options.tile_retries,
                         job_path=job.job_path, return_state=True)


__all__ = ["superresolve_survey", "run_survey", "RunOptions", "Progress", "progress_listener", "TileFailed",
           "prepare_job", "estimate_task", "regularise_task", "survey_model_task", "tile_task", "finish_job", "planned_config"]

