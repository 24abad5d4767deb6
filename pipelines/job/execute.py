"""Stage 2: super-resolve tiles -> tile result files (``run_tiles``; ``run_tile`` is one of them).

There is one path for every method: tiles are read, handed band by band to the job's batch
function (``pipelines.tilefn``: the core's ``cmsr.run_many``, or a per-tile function adapted to
the batch shape), masked, and written one result file per tile. Tiles already finished are
reused and tiles below the valid-pixel threshold are marked skipped before anything is computed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence

import numpy as np

from .. import tilefn
from .records import Job, TileResult, load_job
from .registration import tile_registrations
from .tile_inputs import finish_tile_band, read_tile_inputs
from .tile_store import TileRecomputed, check_tile, reused, tile_planes, write_skipped, write_tile_result


def tiles_per_batch(job: Job, count: int, tile_fn: tilefn.TileFn | None = None) -> int:
    """Tiles per call of the batch function: ``batch_tiles`` when set; else, for the core's
    training methods, as many as fit the device (``cmsr.choose_batch_size``); else 1 (a per-tile
    function gains nothing from a batch, and one at a time puts every result on disk as soon
    as it is done)."""
    if count <= 1:
        return 1
    if job.config.batch_tiles:
        return job.config.batch_tiles
    if not (tilefn.uses_core(job.config, tile_fn) and job.config.method in tilefn.TRAINING_METHODS):
        return 1
    import cmsr

    spec = job.plan.tiles[0]
    return cmsr.choose_batch_size((spec.read.height, spec.read.width), tilefn.cmsr_config(job.config),
                                  job.config.device, guide_channels=len(job.guide_bands), scale=job.plan.scale)


def _takes_field(job: Job, batch_fn: tilefn.TileBatchFn) -> bool:
    """Whether tiles run by ``batch_fn`` take the survey's registration field: the core's own batch
    function on a job that registers (a custom function never sees it)."""
    return batch_fn is tilefn.core_batch_fn and tilefn.survey_registers(job.config)


def _run_batch(job: Job, indices: list[int], batch_fn: tilefn.TileBatchFn,
               survey_model: str | None) -> list[TileResult]:
    """Tiles ``indices`` (none reused or skipped) through ``batch_fn``, band by band -> result files.

    Tile ``i`` gets seed ``seed + i`` whatever batch it is in, and (the core's batch function on
    a job that registers) its affine from the survey's registration field. ``seconds`` and
    ``fn_seconds`` of each result are its share of the batch's."""
    t0 = time.perf_counter()
    survey_registration = _takes_field(job, batch_fn)
    affines = tile_registrations(job, indices) if survey_registration else [None] * len(indices)
    registrations = [None if a is None else (tuple(a[0]), tuple(a[1])) for a in affines]
    inputs = [read_tile_inputs(job, i) for i in indices]
    n = len(job.target_bands)
    planes = tile_planes(job)  # the output bands, then (write_guide_weight) their guide weights
    outs = [np.empty((planes, inp.spec.read.height, inp.spec.read.width), np.float32) for inp in inputs]
    band_stats: list[list[dict]] = [[] for _ in indices]
    fn_seconds = 0.0
    for b in range(len(job.target_bands)):
        contexts = [tilefn.TileContext(job.config, job.target_range[b], job.guide_range, job.config.seed + i, i, b,
                                       survey_model, survey_registration, reg)
                    for i, reg in zip(indices, registrations)]
        tf = time.perf_counter()
        res = batch_fn([inp.lr[b] for inp in inputs], [inp.guide for inp in inputs], job.plan.scale, contexts)
        fn_seconds += time.perf_counter() - tf
        if len(res) != len(indices):
            raise RuntimeError(f"tiles {indices}: the tile function returned {len(res)} results for {len(indices)} tiles")
        for k, (inp, r) in enumerate(zip(inputs, res)):
            done = finish_tile_band(job, inp, b, r)
            outs[k][b] = done.image
            if done.guide_weight is not None:
                outs[k][n + b] = done.guide_weight
            band_stats[k].append(done.stats)
    share = (time.perf_counter() - t0) / len(indices)
    return [write_tile_result(job, inp.spec, out, st, share, fn_seconds / len(indices))
            for inp, out, st in zip(inputs, outs, band_stats)]


def run_tiles(job_path: str, indices: Sequence[int], tile_fn: tilefn.TileFn | None = None) -> list[TileResult]:
    """Tiles ``indices`` of the job, in batches of ``tiles_per_batch``; one ``TileResult`` each, in order.

    A finished tile (resume) is returned as found, a skipped one marked done; the rest go through
    the job's batch function (``tile_fn``, a per-tile function, replaces it for this call); a job
    whose tiles take the survey's registration field needs it made first (``register_survey``), one
    with a survey model its file (``learn_survey``). A
    result on disk that fails its check (damaged, truncated, unreadable) is computed again, with
    a ``TileRecomputed`` warning naming the tile and why. Each tile's result is written atomically
    as soon as its batch is done, so an interrupted call keeps every finished batch."""
    job = load_job(job_path)
    results: dict[int, TileResult] = {}
    todo: list[int] = []  # in the caller's order (neighbours batch together), each tile once
    for i in map(int, indices):
        if not 0 <= i < len(job.plan.tiles):
            raise IndexError(f"tile {i}: the plan has {len(job.plan.tiles)} tiles")
        if i in results or i in todo:
            continue
        check = check_tile(job, i) if job.config.resume else None
        if check is not None and check.problem is not None:
            warnings.warn(f"tile {i}: {check.problem}, recomputing (job {job_path})", TileRecomputed,
                          stacklevel=2)
        if check is not None and check.result is not None:
            results[i] = reused(check.result)
        elif job.plan.tiles[i].skip:
            results[i] = write_skipped(job, i)
        else:
            todo.append(i)
    if todo:
        batch_fn = tilefn.resolve(job.config, tile_fn)
        if _takes_field(job, batch_fn):
            tile_registrations(job, [])  # the field must exist before any tile trains
        survey_model = None  # made after the field (it learns with the field's geometry)
        if job.survey_model.used and batch_fn is tilefn.core_batch_fn:
            survey_model = job.survey_model_path
            if not os.path.exists(survey_model):
                raise RuntimeError(f"the survey model {survey_model} is missing: run pipelines.learn_survey first")
        size = tiles_per_batch(job, len(todo), tile_fn)
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            results.update(zip(chunk, _run_batch(job, chunk, batch_fn, survey_model)))
    return [results[int(i)] for i in indices]


def run_tile(job_path: str, index: int, tile_fn: tilefn.TileFn | None = None) -> TileResult:
    """The unit of work: ``run_tiles(job_path, [index], tile_fn)``, the same path as a batch."""
    return run_tiles(job_path, [index], tile_fn)[0]
