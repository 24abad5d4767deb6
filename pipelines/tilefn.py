"""Per-tile super-resolution functions: the core's ``cmsr.run`` by method, or a custom one.

A tile function maps one band of one tile to the HR grid:
``fn(target_lr (h, w) float32 NaN=nodata, guide (H, W, C) float32, scale, ctx) -> (H, W)`` array,
or ``(array, stats)`` with a small JSON-able ``stats`` dict. ``ctx`` is a ``TileContext``.
torch is imported only inside the functions, so ``pipelines`` imports without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import JobConfig


@dataclass(frozen=True)
class TileContext:
    config: JobConfig
    target_range: tuple[float, float]  # survey-level (lo, hi) of this target band
    guide_range: tuple[tuple[float, float], ...]  # survey-level per guide band
    seed: int  # this tile's seed
    tile_index: int
    band: int  # 0-based index among the job's target bands


TileFn = Callable[[np.ndarray, np.ndarray, int, TileContext], Any]


def cmsr_config(config: JobConfig):
    """The core's ``CMSRConfig`` for this job: the preset, the job's degradation, overrides."""
    from cmsr.config import DEFAULT_PRESET, CMSRConfig

    cfg = CMSRConfig.preset(config.preset or DEFAULT_PRESET)
    changes = dict(config.cmsr_overrides)
    changes.setdefault("degradation", config.degradation)
    return replace(cfg, **changes)


def core_tile_fn(target: np.ndarray, guide: np.ndarray, scale: int, ctx: TileContext):
    """``cmsr.run`` with the job's method, config, seed, device and survey-level ranges."""
    import cmsr

    cfg = cmsr_config(ctx.config)  # also for bp/guided: they use its degradation model
    res = cmsr.run(
        target, guide, scale, cfg, method=ctx.config.method, seed=ctx.seed, device=ctx.config.device,
        target_range=ctx.target_range, guide_range=np.asarray(ctx.guide_range, dtype=np.float64),
    )
    return res.image, dict(res.stats)


def bicubic_tile_fn(target: np.ndarray, guide: np.ndarray, scale: int, ctx: TileContext) -> np.ndarray:
    """MATLAB-compatible bicubic upsampling of the tile (nodata filled locally, masked after).

    Used directly by tests and benchmarks, and for ``method="bicubic"`` when the core's
    ``cmsr.run`` is unavailable."""
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


def resolve(config: JobConfig, override: TileFn | None = None) -> TileFn:
    """The tile function of a job: ``override``, else ``config.tile_fn`` ("module:function"),
    else the core's ``cmsr.run`` for ``config.method``."""
    if override is not None:
        return override
    if config.tile_fn:
        mod, _, attr = config.tile_fn.partition(":")
        if not attr:
            raise ValueError(f"tile_fn {config.tile_fn!r}: expected 'module:function'")
        fn = importlib.import_module(mod)
        for part in attr.split("."):
            fn = getattr(fn, part)
        return fn  # type: ignore[return-value]
    try:
        import cmsr

        if hasattr(cmsr, "run"):
            return core_tile_fn
    except ImportError:
        pass
    if config.method == "bicubic":
        return bicubic_tile_fn
    raise RuntimeError(f"method {config.method!r} needs cmsr.run (cmsr.api), which is not available")
