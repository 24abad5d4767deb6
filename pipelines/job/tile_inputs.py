"""A tile's inputs read from the job's files, and a tile function's answer masked back onto them.

Reads are boundless (mirrored past the mosaic's edge) so every tile has the same shape and the
same context on every side; the answer is then masked to where both the guide and the target
were valid, so what a tile function invents over nodata never reaches the output.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiling import output, rasters
from tiling.plan import TileSpec

from .records import Job


@functools.lru_cache(maxsize=4)
def _lazy_cached(path: str, block_shape: tuple[int, int], mtime_ns: int, size: int):
    return rasters.open_lazy(path, block_shape)


def _lazy(path: str, block_shape: tuple[int, int]):
    """The lazily opened raster, reused across tiles in a worker while the file is unchanged
    (a re-prepared job rewrites ``target_lr.tif`` under the same name)."""
    st = os.stat(path)
    return _lazy_cached(path, tuple(block_shape), st.st_mtime_ns, st.st_size)


def _fill_invalid(guide: np.ndarray, valid: np.ndarray, guide_range) -> np.ndarray:
    """Invalid guide pixels (alpha 0 / nodata) get the tile's mean colour (mid-range if none)."""
    if valid.all():
        return guide
    g = guide.copy()
    for c in range(g.shape[0]):
        fill = g[c][valid].mean() if valid.any() else 0.5 * (guide_range[c][0] + guide_range[c][1])
        g[c][~valid] = fill
    return g


@dataclass(frozen=True)
class TileInputs:
    """What a tile function sees for one tile (all bands), read from the job's files."""

    spec: TileSpec
    lr: np.ndarray  # (B, h, w) float32 target on the LR read window, NaN nodata, mirrored past the edge
    guide: np.ndarray  # (H, W, C) float32 guide on the HR read window, invalid pixels filled
    guide_valid: np.ndarray  # (H, W) bool: RGB valid and inside the mosaic


def read_tile_inputs(job: Job, index: int) -> TileInputs:
    """Boundless reads of tile ``index``'s HR guide and LR target windows (lazy arrays, this process)."""
    spec = job.plan.tiles[index]
    gi = job.guide
    read_bands = job.guide_bands + ((gi.alpha_band,) if gi.alpha_band else ())
    graw, g_inside = rasters.read_window(_lazy(gi.path, gi.block_shape), spec.read, read_bands)
    g_valid = rasters.validity(graw, gi, read_bands) & g_inside
    guide = _fill_invalid(graw[: len(job.guide_bands)], g_valid, job.guide_range)
    lr, _ = rasters.read_window(_lazy(job.target_lr, (256, 256)), spec.lr_read,
                                tuple(range(1, len(job.target_bands) + 1)))
    return TileInputs(spec, lr, np.ascontiguousarray(np.moveaxis(guide, 0, -1)), g_valid)


def read_tile_lr(job: Job, index: int, bands: tuple[int, ...] | None = None) -> np.ndarray:
    """Tile ``index``'s LR target window alone ((B, h, w) float32, NaN nodata; ``bands`` 1-based
    among the job's target bands, default all): what ranking tiles needs, a 1/s^2 of a tile's read."""
    bands = bands or tuple(range(1, len(job.target_bands) + 1))
    lr, _ = rasters.read_window(_lazy(job.target_lr, (256, 256)), job.plan.tiles[index].lr_read, bands)
    return lr


def _small(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, (list, tuple)) and len(v) <= 64 and all(isinstance(x, (int, float, str, bool)) for x in v)
    )


def _consistency(img: np.ndarray, lr: np.ndarray, spec: TileSpec, s: int) -> dict[str, float]:
    """How well the tile's core keeps the LR values: mean/max |area_pool_s(HR) - LR| (valid only)."""
    r0, c0 = spec.core.row - spec.read.row, spec.core.col - spec.read.col
    h, w = spec.core.height // s * s, spec.core.width // s * s
    if h == 0 or w == 0:
        return {}
    pooled = output.area_pool(img[r0 : r0 + h, c0 : c0 + w].astype(np.float64), s)
    ref = lr[r0 // s : r0 // s + h // s, c0 // s : c0 // s + w // s]
    d = np.abs(pooled - ref)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {}
    return {"consistency_mae": float(d.mean()), "consistency_max": float(d.max())}


@dataclass(frozen=True)
class TileBand:
    """One band of a tile's answer, masked onto where the guide and the target were valid."""

    image: np.ndarray  # (H, W) float32
    guide_weight: np.ndarray | None  # (H, W) float32, NaN where ``image`` is; None unless the job writes it
    stats: dict  # the function's small stats + consistency


def finish_tile_band(job: Job, inputs: TileInputs, band: int, result: Any) -> TileBand:
    """A tile function's result for one band -> its masked image (and guide weight when the job
    writes that band), with stats incl. consistency; only small values of the function's stats are
    kept, so the report stays small."""
    spec, s = inputs.spec, job.plan.scale
    parts = result if isinstance(result, tuple) else (result, {})
    img, st = parts[0], parts[1]
    weight = parts[2] if len(parts) > 2 else None
    want = (spec.read.height, spec.read.width)
    img = np.asarray(img, dtype=np.float32)
    if img.shape != want:
        raise RuntimeError(f"tile {spec.index}: tile function returned shape {img.shape}, expected {want}")
    t_valid = np.isfinite(inputs.lr[band])
    hr_valid = inputs.guide_valid & np.repeat(np.repeat(t_valid, s, axis=0), s, axis=1)
    img = np.where(hr_valid, img, np.float32(np.nan))
    masked_weight = None
    if job.config.write_guide_weight:
        if weight is None:
            raise RuntimeError(f"tile {spec.index}: the tile function returned no guide weight "
                               "(write_guide_weight needs (image, stats, guide_weight))")
        weight = np.asarray(weight, dtype=np.float32)
        if weight.shape != want:
            raise RuntimeError(f"tile {spec.index}: tile function returned a guide weight of shape {weight.shape}, "
                               f"expected {want}")
        masked_weight = np.where(np.isfinite(img), weight, np.float32(np.nan))
    stats = {**_consistency(img, inputs.lr[band], spec, s), **{k: v for k, v in st.items() if _small(v)}}
    return TileBand(img, masked_weight, stats)
