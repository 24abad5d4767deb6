"""One consistent guide registration across a survey, from each tile's own: pure numpy.

Why: the RGB and the thermal orthomosaic of one survey are made separately (ODM, Pix4D) and are
off by a shift that varies slowly over the survey. Each tile registers its guide on its own
(``cmsr.estimate_registrations``), and a tile alone can be fooled: too little data or texture to
measure anything, a repetitive pattern that fits a few pixels off, a spurious zoom. Its
neighbours are rarely all fooled at once, so the field is made from the tiles that measured
something plausible, by these steps (thresholds: ``pipelines.config.SurveyRegistration``):

1. *limits*: an estimate whose linear part zooms (any direction, shear included) or rotates more
   than an orthomosaic misalignment can is rejected (an outlier);
2. *neighbours*: an estimate whose shift deviates from the median of its neighbours' by more than
   ``outlier_mads`` robust standard deviations and ``outlier_floor_px`` is rejected;
3. *fill*: tiles without an accepted estimate (unknown or rejected) take the mean of their valued
   neighbours, ring after ring outwards;
4. *smooth*: a Gaussian over the neighbourhood (``smoothing_sigma_tiles``).

Every average is taken as ``v_i + mean(v_j - v_i)``, so a constant field comes out exactly as it
went in (and a tile without neighbours keeps its own estimate bit for bit).

A tile's registration here: its shift (dx, dy) in target pixels -- the guide pixel that shows
what the target shows at (x, y) is at (x + dx, y + dy) -- and the 2 x 2 linear part of its affine
in pixel coordinates, acting about the tile's centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import SurveyRegistration

MEASURED, OUTLIER, UNKNOWN, SKIPPED = "measured", "outlier", "unknown", "skipped"
"""A tile's status in the field: its own estimate accepted; rejected; none usable; not processed."""


@dataclass(frozen=True)
class RegistrationGrid:
    """Per tile of a plan's (rows, cols) grid, what its own registration measured."""

    shift: np.ndarray  # (R, C, 2) float64 (dx, dy) target px; NaN where no estimate
    linear: np.ndarray  # (R, C, 2, 2) float64 pixel-space linear part; NaN where no estimate
    usable: np.ndarray  # (R, C) bool: an estimate with enough valid data, texture and contrast
    active: np.ndarray  # (R, C) bool: the tile is processed (needs a registration)


@dataclass(frozen=True)
class RegistrationField:
    """The regularised field: what each tile is given, and why."""

    shift: np.ndarray  # (R, C, 2) float64 target px; NaN where there is nothing to give
    linear: np.ndarray  # (R, C, 2, 2) float64; NaN likewise
    status: np.ndarray  # (R, C) str: MEASURED | OUTLIER | UNKNOWN | SKIPPED
    reasons: dict[tuple[int, int], str]  # (row, col) -> why an estimate was rejected

    def has_value(self) -> np.ndarray:
        return np.isfinite(self.shift).all(axis=-1)


def zoom_and_rotation(linear: np.ndarray) -> tuple[float, float]:
    """(largest |scale change| along any direction, rotation in degrees) of a 2 x 2 linear part."""
    sv = np.linalg.svd(linear, compute_uv=False)
    zoom = float(np.max(np.abs(sv - 1.0)))
    rotation = math.degrees(math.atan2(linear[1, 0] - linear[0, 1], linear[0, 0] + linear[1, 1]))
    return zoom, rotation


def _window(r: int, c: int, radius: int, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The tiles within ``radius`` rows and columns of (r, c), without (r, c) itself."""
    rows, cols = shape
    return [(rr, cc) for rr in range(max(0, r - radius), min(rows, r + radius + 1))
            for cc in range(max(0, c - radius), min(cols, c + radius + 1)) if (rr, cc) != (r, c)]


def _limit_reason(linear: np.ndarray, settings: SurveyRegistration) -> str | None:
    zoom, rotation = zoom_and_rotation(linear)
    if zoom > settings.max_zoom:
        return f"zoom {100 * zoom:.1f}% > {100 * settings.max_zoom:g}%"
    if abs(rotation) > settings.max_rotation_deg:
        return f"rotation {rotation:.2f} deg > {settings.max_rotation_deg:g} deg"
    return None


def _neighbour_reason(shift: np.ndarray, accepted: np.ndarray, r: int, c: int,
                      settings: SurveyRegistration) -> str | None:
    """Why (r, c)'s shift is an outlier among its accepted neighbours, or None (also when too few)."""
    near = [p for p in _window(r, c, settings.neighbourhood, accepted.shape) if accepted[p]]
    if len(near) < settings.min_neighbours:
        return None
    values = np.array([shift[p] for p in near])
    median = np.median(values, axis=0)
    spread = 1.4826 * float(np.median(np.hypot(*(values - median).T)))
    limit = max(settings.outlier_mads * spread, settings.outlier_floor_px)
    off = float(np.hypot(*(shift[r, c] - median)))
    if off > limit:
        return f"{off:.2f} px from its neighbours' median shift (limit {limit:.2f} px)"
    return None


def _mean_about(first: np.ndarray, values: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """The (weighted) mean of ``values`` as ``first + mean(v - first)``: exact for equal values."""
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    diffs = np.stack([v - first for v in values])
    return first + np.tensordot(w, diffs, axes=1) / w.sum()


def _fill(values: np.ndarray, have: np.ndarray, need: np.ndarray) -> np.ndarray:
    """``values`` (R, C, k) where ``have``; tiles in ``need`` without a value take the mean of their
    valued 8-neighbours, ring after ring (each ring from the previous one's values only, so the
    order tiles are visited in does not matter). Tiles no ring reaches stay NaN."""
    out = np.where(have[..., None], values, np.nan)
    valued = have.copy()
    while True:
        ring = {}
        for r, c in zip(*np.nonzero(need & ~valued)):
            src = [out[p] for p in _window(r, c, 1, valued.shape) if valued[p]]
            if src:
                ring[(r, c)] = _mean_about(src[0], src)
        if not ring:
            return out
        for p, v in ring.items():
            out[p] = v
            valued[p] = True


def _smooth(values: np.ndarray, have: np.ndarray, settings: SurveyRegistration) -> np.ndarray:
    """Gaussian smoothing over the neighbourhood of the valued tiles (``v_i + weighted mean of v_j - v_i``)."""
    sigma = settings.smoothing_sigma_tiles
    if sigma <= 0:
        return values
    out = values.copy()
    for r, c in zip(*np.nonzero(have)):
        near = [p for p in _window(r, c, settings.neighbourhood, have.shape) if have[p]]
        if not near:
            continue
        weights = [1.0] + [math.exp(-((p[0] - r) ** 2 + (p[1] - c) ** 2) / (2 * sigma * sigma)) for p in near]
        out[r, c] = _mean_about(values[r, c], [values[r, c]] + [values[p] for p in near], weights)
    return out


def regularise(grid: RegistrationGrid, settings: SurveyRegistration = SurveyRegistration()) -> RegistrationField:
    """The survey's field from its tiles' own registrations (see the module's steps). With
    ``settings.smooth`` False every tile keeps its own estimate (statuses say only measured /
    unknown); a tile no accepted estimate reaches gets NaN (the caller decides what it uses)."""
    shape = grid.usable.shape
    status = np.full(shape, UNKNOWN, dtype=object)
    status[~grid.active] = SKIPPED
    usable = grid.usable & grid.active
    status[usable] = MEASURED
    reasons: dict[tuple[int, int], str] = {}
    if not settings.smooth:
        own = usable[..., None]
        return RegistrationField(np.where(own, grid.shift, np.nan), np.where(own[..., None], grid.linear, np.nan),
                                 status, reasons)
    for r, c in zip(*np.nonzero(usable)):
        why = _limit_reason(grid.linear[r, c], settings)
        if why is not None:
            reasons[(int(r), int(c))] = why
    plausible = usable.copy()
    for p in reasons:
        plausible[p] = False
    for r, c in zip(*np.nonzero(plausible)):
        why = _neighbour_reason(grid.shift, plausible, r, c, settings)
        if why is not None:
            reasons[(int(r), int(c))] = why
    accepted = usable.copy()
    for p in reasons:
        accepted[p] = False
        status[p] = OUTLIER
    k = grid.shift.shape[-1]
    packed = np.concatenate([grid.shift, grid.linear.reshape(*shape, 4)], axis=-1)
    filled = _fill(packed, accepted, grid.active)
    smoothed = _smooth(filled, np.isfinite(filled).all(axis=-1), settings)
    return RegistrationField(smoothed[..., :k], smoothed[..., k:].reshape(*shape, 2, 2), status, reasons)


def field_on_grid(values: np.ndarray, known: np.ndarray, tile_px: float, rows: range, width: int) -> np.ndarray:
    """Per-tile ``values`` (R, C, k) interpolated bilinearly between tile centres onto LR pixel
    rows ``rows`` (``width`` columns) of the plan's LR grid -> (k, len(rows), width); NaN where
    the pixel's own tile is not ``known``.

    Tile (r, c)'s value sits at the centre of its core, LR (r + 0.5, c + 0.5) * ``tile_px``;
    beyond the outer centres the nearest value holds. Tiles without a value are left out of the
    bilinear weights (the others renormalised)."""
    n_rows, n_cols, k = values.shape
    ys = (np.arange(rows.start, rows.stop, dtype=np.float64) + 0.5) / tile_px - 0.5
    xs = (np.arange(width, dtype=np.float64) + 0.5) / tile_px - 0.5

    def axis(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip(u, 0.0, n - 1.0)
        lo = np.minimum(np.floor(u).astype(int), max(n - 2, 0))
        return lo, np.minimum(lo + 1, n - 1), u - lo

    y0, y1, fy = axis(ys, n_rows)
    x0, x1, fx = axis(xs, n_cols)
    have = np.isfinite(values).all(axis=-1)
    v = np.where(have[..., None], values, 0.0)
    total = np.zeros((len(ys), width, k))
    weight = np.zeros((len(ys), width))
    for yi, wy in ((y0, 1.0 - fy), (y1, fy)):
        for xi, wx in ((x0, 1.0 - fx), (x1, fx)):
            w = wy[:, None] * wx[None, :] * have[yi[:, None], xi[None, :]]
            total += w[..., None] * v[yi[:, None], xi[None, :]]
            weight += w
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight[..., None]
    own_r = np.minimum((np.arange(rows.start, rows.stop) // tile_px).astype(int), n_rows - 1)
    own_c = np.minimum((np.arange(width) // tile_px).astype(int), n_cols - 1)
    out[~known[own_r[:, None], own_c[None, :]]] = np.nan
    return np.moveaxis(out, -1, 0)
