"""Stage 1c: the survey model -> one file in the work dir every tile fine-tunes from.

For jobs whose ``Job.survey_model`` is used and not reused (``prepare`` decided): after the
registration field (learning sees the geometry the tiles will see), before the tiles. Which tiles
it learns from is chosen across the whole plan, cheaply: the LR windows of up to
``CANDIDATES`` active tiles spread evenly over the plan are ranked by texture
(``cmsr.survey_model.stratified_sample``; the ranking does not change under the survey-level
linear normalisation, so raw LR values do), and only the picks' full inputs (the guide too) are
read. One model per target band (bands relate differently to the RGB), all in one file named by
the plan key, written atomically and reused on resume.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np

from tiling.files import atomic_output

from .. import tilefn
from .records import Job, load_job
from .registration import registers, tile_registrations
from .tile_inputs import read_tile_inputs, read_tile_lr

#: Active tiles whose LR windows are ranked at most (spread evenly over the plan): enough to
#: cover a survey's range of texture without a pass over the whole mosaic.
CANDIDATES = 256


def candidates(job: Job, count: int = CANDIDATES) -> list[int]:
    """Up to ``count`` active tiles spread evenly over the plan, in plan order."""
    active = [t.index for t in job.plan.tiles if not t.skip]
    if len(active) <= count:
        return active
    return sorted({active[int(round(q))] for q in np.linspace(0, len(active) - 1, count)})


def pick_tiles(job: Job) -> list[int]:
    """The plan tiles the survey model learns from, in visiting order: a stratified sample (by the
    first target band's LR texture) of :func:`candidates`."""
    import torch

    from cmsr.survey_model import stratified_sample

    learning = tilefn.survey_learning(job.config)
    pool = candidates(job)
    lrs, valids = [], []
    for i in pool:
        lr = read_tile_lr(job, i, (1,))[0]
        valid = np.isfinite(lr)
        lrs.append(torch.from_numpy(np.where(valid, lr, np.float32(0.0))))
        valids.append(torch.from_numpy(valid))
    return [pool[k] for k in stratified_sample(lrs, valids, learning.sample_tiles, learning.min_valid_fraction)]


def _reusable(job: Job, path: str) -> bool:
    """A model file this plan learned before (resume): it loads and names this plan's key."""
    if not (job.config.resume and os.path.exists(path)):
        return False
    from cmsr import InvalidInput
    from cmsr.survey_model import load_models

    try:
        models, info = load_models(path)
    except InvalidInput:
        return False
    return info.get("plan_key") == job.key and len(models) == len(job.target_bands)


def learn_survey(job_path: str) -> str | None:
    """The job's survey model file (``Job.survey_model_path``), learned here unless the job reuses
    one (``JobConfig.model``: copied by ``prepare``) or learned it before; None when the job uses
    no survey model."""
    job = load_job(job_path)
    if not job.survey_model.used:
        return None
    path = job.survey_model_path
    if job.survey_model.reused_from is not None:
        if not os.path.exists(path):
            raise RuntimeError(f"the reused survey model's copy {path} is missing: prepare the job again")
        return path
    if _reusable(job, path):
        return path
    from cmsr.survey_model import learn_arrays, save_models

    t0 = time.perf_counter()
    picks = pick_tiles(job)
    inputs = [read_tile_inputs(job, i) for i in picks]
    affines = None
    if registers(job):  # the survey field's geometry, as the tiles will train with it
        affines = [None if a is None else np.asarray(a, np.float32) for a in tile_registrations(job, picks)]
    cfg = tilefn.cmsr_config(job.config)
    learning = replace(tilefn.survey_learning(job.config), sample_tiles=len(picks))
    guide_range = np.asarray(job.guide_range, dtype=np.float64)
    models, bands = [], []
    for b in range(len(job.target_bands)):
        tb = time.perf_counter()
        model = learn_arrays([inp.lr[b] for inp in inputs], [inp.guide for inp in inputs], job.plan.scale, cfg,
                             seed=job.config.seed, device=job.config.device, target_range=job.target_range[b],
                             guide_range=guide_range, learning=learning, registrations=affines)
        models.append(model)
        bands.append({"sample_tiles": [picks[k] for k in model.sample], "seconds": time.perf_counter() - tb})
    from cmsr.config import DEFAULT_PRESET

    info = {"plan_key": job.key, "preset": job.config.preset or DEFAULT_PRESET,
            "inputs": {"rgb": os.path.basename(job.rgb.path), "target": os.path.basename(job.target.path)},
            "candidates": len(candidates(job)), "bands": bands, "seconds": time.perf_counter() - t0}
    with atomic_output(path) as tmp:
        save_models(tmp, models, info)
    return path
