"""Undeclared nodata: a constant value framing the raster that nothing marks as nodata.

Why: some exports write a thermal orthomosaic's outside as 0 (or an RGB's as black/white) with
no nodata tag and no alpha. Those pixels are then real data to the pipeline (0 degC next to the
survey's edge, with ringing into the valid pixels), silently. The tell is cheap to see: the
raster's 1-pixel outer frame is almost all one value and that value fills a large share of the
raster. Only a bounded sample is read (the four edges and SAMPLE_ROWS rows, decimated along
the row, so GDAL may take the rows from overviews), never the whole mosaic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from .errors import InputWarning
from .rasters import RasterInfo, reading, spell_value, validity

#: share of the 1-pixel outer frame that must hold the one value
FRAME_SHARE = 0.90
#: share of the raster (sampled) the value must fill: a few constant edge pixels are not a border
AREA_SHARE = 0.05
#: rows sampled across the raster, and pixels kept along each sampled row/edge (decimated)
SAMPLE_ROWS = 16
SAMPLE_PIXELS = 1024


@dataclass(frozen=True)
class ConstantBorder:
    """A value framing the raster that its nodata/alpha does not mark invalid."""

    value: float
    frame_share: float  # of the outer frame's pixels
    area_share: float  # of the sampled raster's pixels


def _sample(ds, bands: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(frame (B, n), rows (B, m)): the 4 edges and SAMPLE_ROWS evenly spaced rows, decimated."""
    h, w = ds.height, ds.width
    wc, hc = min(w, SAMPLE_PIXELS), min(h, SAMPLE_PIXELS)
    nb = len(bands)

    def row(r: int) -> np.ndarray:
        return ds.read(list(bands), window=((r, r + 1), (0, w)), out_shape=(nb, 1, wc),
                       resampling=Resampling.nearest)[:, 0]

    def col(c: int) -> np.ndarray:
        return ds.read(list(bands), window=((0, h), (c, c + 1)), out_shape=(nb, hc, 1),
                       resampling=Resampling.nearest)[:, :, 0]

    frame = np.concatenate([row(0), row(h - 1), col(0), col(w - 1)], axis=1)
    rows = np.unique(np.linspace(0, h - 1, min(h, SAMPLE_ROWS)).round().astype(int))
    inner = np.concatenate([row(int(r)) for r in rows], axis=1)
    return frame.astype(np.float64), inner.astype(np.float64)


def _valid(data: np.ndarray, info: RasterInfo, bands: tuple[int, ...]) -> np.ndarray:
    """(n,) bool: the pipeline's own validity rule (alpha, nodata, NaN) for (B, n) samples."""
    return validity(data.astype(np.float32)[:, None], info, bands)[0]


def _constant(data: np.ndarray, valid: np.ndarray, colour: list[int]) -> np.ndarray:
    """(n,) bool: valid pixels whose colour bands all hold one value (that of the first band)."""
    c = data[colour]
    return valid & np.all(c == c[:1], axis=0)


def constant_border(info: RasterInfo, bands: tuple[int, ...], role: str = "input") -> ConstantBorder | None:
    """The value filling >= FRAME_SHARE of ``info``'s outer frame and >= AREA_SHARE of the raster
    while counted as valid (no alpha, nodata or NaN marks it), over ``bands`` (1-based; every
    colour band equal to it, as an RGB's black/white outside is); None if there is none."""
    read_bands = tuple(bands) + ((info.alpha_band,) if info.alpha_band and info.alpha_band not in bands else ())
    colour = [i for i, b in enumerate(read_bands) if b != info.alpha_band]
    if not colour:
        return None
    with warnings.catch_warnings(), reading(info.path, role):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(info.path) as ds:
            frame, inner = _sample(ds, read_bands)
    f_ok = _constant(frame, _valid(frame, info, read_bands), colour)
    if f_ok.sum() < FRAME_SHARE * frame.shape[1]:
        return None
    values, counts = np.unique(frame[colour[0]][f_ok], return_counts=True)
    value = float(values[np.argmax(counts)])
    frame_share = float(counts.max()) / frame.shape[1]
    if frame_share < FRAME_SHARE:
        return None
    i_ok = _constant(inner, _valid(inner, info, read_bands), colour)
    area_share = float(np.mean(i_ok & (inner[colour[0]] == value)))
    if area_share < AREA_SHARE:
        return None
    return ConstantBorder(value, frame_share, area_share)


def warn_undeclared_border(info: RasterInfo, bands: tuple[int, ...], role: str, option: str) -> ConstantBorder | None:
    """``constant_border`` as an ``InputWarning`` naming the file, the value, the shares and the option."""
    border = constant_border(info, bands, role)
    if border is not None:
        v = spell_value(border.value, info.dtype)
        declared = "no nodata" if info.nodata_value is None else f"nodata {spell_value(info.nodata_value, info.dtype)}"
        masked = " and no alpha band" if role == "RGB" and info.alpha_band is None else ""
        warnings.warn(
            f"{role} file {info.path}: value {v} fills about {border.area_share:.0%} of the raster and "
            f"{border.frame_share:.0%} of its outer edge, but the file declares {declared}{masked}, so those pixels "
            f"are processed as data; if they are outside the survey, pass {option} {v}",
            InputWarning, stacklevel=2,
        )
    return border
