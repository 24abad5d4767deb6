"""Tile functions: how one band of many tiles is super-resolved.

Every tile of every method goes through one shape, a *batch function*:
``fn(targets, guides, scale, contexts) -> [(image, stats), ...]`` over tiles of one band of one
job (``targets[k]`` (h, w) float32 NaN=nodata, ``guides[k]`` (H, W, C) float32, ``contexts[k]`` a
``TileContext``; ``(image, stats, guide_weight)`` when the job writes the guide weight band).
One shape means one path through the job (reading, masking, stats, result files, resume)
whatever computes the pixels; the core's own batch function hands the whole batch to
``cmsr.run_many``, which may train the tiles together.

A simple *tile function* ``fn(target, guide, scale, ctx) -> (H, W) array | (array, stats)`` (a
custom ``JobConfig.tile_fn = "module:function"``, or a callable passed to ``run_tiles``) is
adapted to that shape by ``batch_of``: called tile after tile, nothing else changes (it may
return ``(array, stats, guide_weight)`` for a job with ``write_guide_weight``).
torch is imported only inside the functions, so ``pipelines`` imports without it.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import JobConfig

#: methods whose tiles train a network (batch sizes from ``cmsr.choose_batch_size``)
TRAINING_METHODS = ("cmsr", "zssr")


@dataclass(frozen=True)
class TileContext:
    config: JobConfig
    target_range: tuple[float, float]  # survey-level (lo, hi) of this target band
    guide_range: tuple[tuple[float, float], ...]  # survey-level per guide band
    seed: int  # this tile's seed
    tile_index: int
    band: int  # 0-based index among the job's target bands
    survey_model: str | None = None
    """The job's survey model file (one model per target band; ``Job.survey_model``): the core
    fine-tunes this band from its model, else None (trained from scratch)."""
    survey_registration: bool = False
    """The survey's registration field decides this tile's guide geometry (``registration``),
    not the tile's own registration (``survey_registers``)."""
    registration: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    """With ``survey_registration``: the (2, 3) affine of normalised coordinates the guide is read
    through (float32 values); None: the guide as given."""


TileFn = Callable[[np.ndarray, np.ndarray, int, TileContext], Any]
TileBatchFn = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], int, Sequence[TileContext]],
                       list[tuple[np.ndarray, dict] | tuple[np.ndarray, dict, np.ndarray]]]


def cmsr_config(config: JobConfig):
    """The core's ``CMSRConfig`` for this job: the preset, the job's degradation, then
    ``config.cmsr_overrides`` (top-level ``CMSRConfig`` field names)."""
    from cmsr.config import DEFAULT_PRESET, CMSRConfig

    cfg = CMSRConfig.preset(config.preset or DEFAULT_PRESET)
    changes = dict(config.cmsr_overrides)
    changes.setdefault("degradation", config.degradation)
    return replace(cfg, **changes)


def survey_learning(config: JobConfig):
    """The job's ``cmsr.survey_model.SurveyLearning``: its defaults, then ``config.survey_learning``."""
    from cmsr.survey_model import SurveyLearning

    try:
        return SurveyLearning(**dict(config.survey_learning))
    except TypeError as exc:
        raise ValueError(f"survey_learning: {exc}") from None


@functools.lru_cache(maxsize=4)
def _models_cached(path: str, mtime_ns: int, size: int) -> tuple:
    from cmsr.survey_model import load_models

    return tuple(load_models(path)[0])


def load_survey_models(path: str) -> tuple:
    """The models of ``path`` (one per target band), loaded once per process while the file is
    unchanged: a worker runs many batches from the same file."""
    st = os.stat(path)
    return _models_cached(path, st.st_mtime_ns, st.st_size)


def core_batch_fn(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray], scale: int,
                  contexts: Sequence[TileContext]) -> list[tuple]:
    """``cmsr.run_many`` with the job's method, config, per-tile seeds, device and survey-level
    ranges; with a survey model, from that band's model with the fine-tune budget and the survey's
    base (``cmsr.survey_model.tile_config``). With the job's
    ``write_guide_weight`` each answer also carries the tile's guide weight map."""
    import cmsr

    ctx = contexts[0]  # job- and band-level fields are the same for every tile of the batch
    cfg = cmsr_config(ctx.config)  # also for bp/guided: they use its degradation model
    state = None
    if ctx.survey_model is not None:
        from cmsr.survey_model import tile_config

        model = load_survey_models(ctx.survey_model)[ctx.band]
        cfg = tile_config(cfg, model, survey_learning(ctx.config))
        state = model.weights
    registrations = None
    if ctx.survey_registration:
        registrations = [None if c.registration is None else np.asarray(c.registration, dtype=np.float32)
                         for c in contexts]
    results = cmsr.run_many(
        list(targets), list(guides), scale, cfg, method=ctx.config.method, seeds=[c.seed for c in contexts],
        device=ctx.config.device, target_range=ctx.target_range,
        guide_range=np.asarray(ctx.guide_range, dtype=np.float64), init_state=state,
        guide_weight=ctx.config.write_guide_weight, registrations=registrations,
    )
    if ctx.config.write_guide_weight:
        return [(r.image, dict(r.stats), r.guide_weight) for r in results]
    return [(r.image, dict(r.stats)) for r in results]


def batch_of(fn: TileFn) -> TileBatchFn:
    """A per-tile function in the batch shape: ``fn`` on each tile in turn."""

    @functools.wraps(fn)
    def batch(targets, guides, scale, contexts):
        out = []
        for target, guide, ctx in zip(targets, guides, contexts, strict=True):
            res = fn(target, guide, scale, ctx)
            out.append(res if isinstance(res, tuple) else (res, {}))
        return out

    return batch


def bicubic_tile_fn(target: np.ndarray, guide: np.ndarray, scale: int, ctx: TileContext) -> np.ndarray:
    """MATLAB-compatible bicubic upsampling of the tile (nodata filled locally, masked after).

    A tile function of the simplest kind (no training, no guide): the reference that tests and
    benchmarks pass as ``tile_fn`` to check the job's tiling, stitching and georeferencing."""
    import torch

    from cmsr.resize import upsample_torch

    valid = np.isfinite(target)
    filled = np.where(valid, target, np.float32(np.nanmean(target) if valid.any() else 0.0))
    with torch.no_grad():
        out = upsample_torch(torch.from_numpy(np.ascontiguousarray(filled, dtype=np.float64)), int(scale))
    hr = out.numpy().astype(np.float32)
    if not valid.all():
        hr[~np.repeat(np.repeat(valid, scale, axis=0), scale, axis=1)] = np.nan
    return hr


def import_tile_fn(spec: str) -> TileFn:
    """The function named by ``"module:function"`` (importable in every worker)."""
    mod, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"tile_fn {spec!r}: expected 'module:function'")
    fn: Any = importlib.import_module(mod)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn


def uses_core(config: JobConfig, override: TileFn | None = None) -> bool:
    """Whether the job's tiles go through the core's own batch function (no custom function)."""
    return override is None and not config.tile_fn


def survey_registers(config: JobConfig, override: TileFn | None = None) -> bool:
    """Whether the job's tiles take their guide registration from the survey's field: the core's
    ``cmsr`` whose config registers the guide (``JobConfig.registration`` says how the field is made)."""
    if not uses_core(config, override) or config.method != "cmsr":
        return False
    cfg = cmsr_config(config)
    return cfg.guide is not None and cfg.registration is not None


def resolve(config: JobConfig, override: TileFn | None = None) -> TileBatchFn:
    """The batch function of a job: ``override`` or ``config.tile_fn`` adapted by ``batch_of``,
    else the core's ``cmsr.run_many`` for ``config.method``."""
    if override is not None:
        return batch_of(override)
    if config.tile_fn:
        return batch_of(import_tile_fn(config.tile_fn))
    return core_batch_fn
