"""Validation and alignment: choose the integer scale, put the target on the LR grid once.

Why once for the whole survey: resampling per tile would make every tile's LR pixels depend on
the tile's window (GDAL derives its kernel from the window unless ``XSCALE``/``YSCALE`` are
pinned), which shows up as seams. One windowed reprojection into the work directory, with the
scale pinned, gives every tile the same LR pixels.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from .errors import InputWarning, InvalidInput
from .files import atomic_output
from .grid import Grid, Window
from .plan import TilePlan
from .rasters import RasterInfo, reading

MIN_SCALE, MAX_SCALE = 2, 16
#: below this share of the RGB covered by the target, warn (the job still runs)
LOW_OVERLAP = 0.10
#: rows of LR pixels reprojected / scanned per step (bounds memory for any survey size)
STRIP_BYTES = 64 << 20


#: what a GeoTIFF output may be called: GIS tools pick the reader by the extension, so a COG
#: named ``.png`` opens as a broken PNG (or not at all)
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def check_output_name(out: str) -> None:
    """The output is a Cloud-Optimized GeoTIFF, so its name must say so (a pure name check:
    ``cmsr submit`` runs it even when the output's directory exists only on the cluster)."""
    if not os.path.basename(out).lower().endswith(GEOTIFF_SUFFIXES):
        stem = os.path.splitext(os.path.basename(out))[0] or "output"
        raise InvalidInput(f"output file {out}: the output is a Cloud-Optimized GeoTIFF; "
                           f"give it a .tif or .tiff name (e.g. {stem}.tif)")


def check_output(out: str, inputs: list[str]) -> None:
    """The output must be a GeoTIFF name, not an input, and its directory must exist and be writable."""
    check_output_name(out)
    real = os.path.realpath(out)
    for p in inputs:
        if os.path.exists(p) and os.path.realpath(p) == real:
            raise InvalidInput(f"output file {out}: is the same file as input {p}; refusing to overwrite an input")
    parent = os.path.dirname(real) or "."
    if not os.path.isdir(parent):
        raise InvalidInput(f"output file {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInput(f"output file {out}: directory {parent} is not writable")
    if os.path.isdir(real):
        raise InvalidInput(f"output file {out}: is a directory")


def res_in(info: RasterInfo, crs: str) -> tuple[float, float]:
    """Pixel size (x, y) of ``info``'s grid expressed in ``crs`` units (its own if same CRS)."""
    g = info.grid
    if g.crs == crs:
        return g.res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        t, w, h = calculate_default_transform(g.crs, crs, g.width, g.height, *g.bounds)
    return (abs(t.a), abs(t.e))


#: a measured ratio this far (relative) from the scale used, or x and y ratios this far apart,
#: is said out loud: the target is then resampled, not just re-gridded
RATIO_TOLERANCE = 0.05


def choose_scale(rgb: RasterInfo, target: RasterInfo, override: int | None,
                 max_scale: int = MAX_SCALE) -> tuple[int, float]:
    """(s, measured GSD ratio). ``override`` wins; else the rounded ratio. ``MIN_SCALE <= s <= max_scale``.

    ``max_scale`` is the caller's: what its tiles go through supports (the core's 8 for the
    built-in methods), so the one range a user reads is the one that applies. An automatic
    scale that is not what the pixel sizes say (a ratio of 1.5 -> 2, 40 x 20 m pixels -> 3) is an
    ``InputWarning`` naming the measured ratios and ``--scale N``."""
    tx, ty = res_in(target, rgb.grid.crs)
    hx, hy = rgb.grid.res
    rx, ry = tx / hx, ty / hy
    ratio = math.sqrt(rx * ry)
    span = f"{MIN_SCALE}..{max_scale}"
    if override is not None:
        if isinstance(override, bool) or int(override) != override:
            raise InvalidInput(f"--scale {override!r}: must be an integer {span}")
        s = int(override)
        if not MIN_SCALE <= s <= max_scale:
            raise InvalidInput(f"--scale {s}: out of range (must be {span})")
        return s, ratio
    s = int(round(ratio))
    if not MIN_SCALE <= s <= max_scale:
        raise InvalidInput(
            f"target file {target.path}: ground sample distance ratio to the RGB is {ratio:.2f} "
            f"(rounds to {s}); supported scales are {span} (pass --scale N to override)"
        )
    if abs(rx - ry) > RATIO_TOLERANCE * max(rx, ry):
        warnings.warn(
            f"target file {target.path}: its pixels are not the RGB's shape: pixel size ratio {rx:.2f} in x, "
            f"{ry:.2f} in y; scale {s} is used (their geometric mean {ratio:.2f}, rounded) and the target is "
            f"resampled onto the RGB's grid coarsened x{s}; pass --scale N to choose another", InputWarning, stacklevel=2)
    elif abs(ratio - s) > RATIO_TOLERANCE * s:
        warnings.warn(
            f"target file {target.path}: pixel size ratio to the RGB is {ratio:.2f}, not an integer; scale {s} "
            f"is used and the target is resampled onto the x{s} grid; pass --scale N to choose another",
            InputWarning, stacklevel=2)
    return s, ratio


def overlap_fraction(hr: Grid, target: RasterInfo) -> float:
    """Share of the HR grid's area inside the target's footprint (bounding boxes in the HR CRS)."""
    tb = target.grid.bounds
    if target.grid.crs != hr.crs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            tb = transform_bounds(target.grid.crs, hr.crs, *tb, densify_pts=21)
    hb = hr.bounds
    w = min(hb[2], tb[2]) - max(hb[0], tb[0])
    h = min(hb[3], tb[3]) - max(hb[1], tb[1])
    if w <= 0 or h <= 0:
        return 0.0
    return (w * h) / ((hb[2] - hb[0]) * (hb[3] - hb[1]))


def check_overlap(hr: Grid, rgb_path: str, target: RasterInfo) -> float:
    f = overlap_fraction(hr, target)
    if f <= 0.0:
        raise InvalidInput(f"target file {target.path}: footprint does not overlap the RGB {rgb_path}")
    if f < LOW_OVERLAP:
        warnings.warn(
            f"target file {target.path}: covers only {100 * f:.1f}% of the RGB {rgb_path}", InputWarning, stacklevel=2
        )
    return f


def _strip_rows(width: int, bands: int, itemsize: int = 4) -> int:
    return max(1, STRIP_BYTES // max(1, width * bands * itemsize))


@dataclass(frozen=True)
class Resampled:
    path: str
    resampling: str  # "copy", "average" or "bilinear"


def target_to_lr(target: RasterInfo, bands: tuple[int, ...], lr: Grid, dst_path: str) -> Resampled:
    """Write the target's ``bands`` on the LR grid as float32 (NaN nodata, scale/offset applied).

    Exact copy when the target already lies on the LR grid (or a grid aligned to it); else GDAL
    warp, ``average`` when coarsening, ``bilinear`` otherwise, XSCALE/YSCALE pinned to the
    survey-wide ratio so the strip-wise warp equals a one-shot warp; the nodata mask is
    resampled with ``nearest``. Atomic (temp + rename).
    """
    tx, ty = res_in(target, lr.crs)
    lx, ly = lr.res
    offset = target.grid.offset_in(lr)
    mode = "copy" if offset is not None else ("average" if (tx * ty) < (lx * ly) * (1 - 1e-6) else "bilinear")
    profile = dict(
        driver="GTiff", width=lr.width, height=lr.height, count=len(bands), dtype="float32",
        crs=lr.crs or None, transform=lr.affine, nodata=float("nan"), tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", predictor=3, BIGTIFF="IF_SAFER",
    )
    rows = _strip_rows(lr.width, len(bands))
    rows = rows // 256 * 256 if rows >= 256 else rows  # whole output blocks when large
    nodata = target.nodata_value
    with atomic_output(dst_path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(target.path) as src, rasterio.open(tmp, "w", **profile) as dst:
                for r0 in range(0, lr.height, rows):
                    win = Window(r0, 0, min(rows, lr.height - r0), lr.width)
                    out = np.full((len(bands), win.height, win.width), np.nan, dtype=np.float32)
                    with reading(target.path, "target"):
                        for i, b in enumerate(bands):
                            if mode == "copy":
                                assert offset is not None
                                want = Window(win.row - offset[0], win.col - offset[1], win.height, win.width)
                                part = want.intersect(target.grid.full_window)
                                if part is None:
                                    continue
                                a = src.read(b, window=((part.row, part.row_end), (part.col, part.col_end))).astype(np.float64)
                                if nodata is not None:
                                    a[a == nodata] = np.nan
                                a = a * target.scales[b - 1] + target.offsets[b - 1]
                                out[i, part.row - want.row : part.row_end - want.row,
                                    part.col - want.col : part.col_end - want.col] = a
                            else:
                                common = dict(
                                    source=rasterio.band(src, b), src_crs=target.grid.crs,
                                    src_transform=target.grid.affine, src_nodata=nodata,
                                    dst_transform=lr.window_transform(win), dst_crs=lr.crs, dst_nodata=float("nan"),
                                    init_dest_nodata=True, XSCALE=min(1.0, tx / lx), YSCALE=min(1.0, ty / ly),
                                )
                                dst_arr = np.full((win.height, win.width), np.nan, dtype=np.float32)
                                reproject(destination=dst_arr, resampling=Resampling[mode], **common)
                                # the validity mask is resampled with nearest (crisp, predictable edges)
                                near = np.full((win.height, win.width), np.nan, dtype=np.float32)
                                reproject(destination=near, resampling=Resampling.nearest, **common)
                                dst_arr[~np.isfinite(near)] = np.nan
                                out[i] = dst_arr * np.float32(target.scales[b - 1]) + np.float32(target.offsets[b - 1])
                    dst.write(out, window=((win.row, win.row_end), (win.col, win.col_end)))
                for i, b in enumerate(bands):
                    dst.set_band_description(i + 1, target.descriptions[b - 1] or f"band {b}")
                    if target.units[b - 1]:
                        dst.set_band_unit(i + 1, target.units[b - 1])
    return Resampled(dst_path, mode)


@dataclass(frozen=True)
class SurveyStats:
    target_range: tuple[tuple[float, float], ...]  # per target band, robust (lo, hi)
    guide_range: tuple[tuple[float, float], ...]  # per guide band
    valid_fractions: tuple[float, ...]  # per tile of the plan
    target_valid_pixels: int
    preview: np.ndarray | None = None  # (C, h, w) guide sampled for the quick-look (nearest)


def survey_stats(
    plan: TilePlan, target_lr: str, guide: RasterInfo, guide_bands: tuple[int, ...],
    robust_range: Callable[[np.ndarray], tuple[float, float]], max_samples: int = 2_000_000,
    preview_size: tuple[int, int] | None = None,
) -> SurveyStats:
    """One strip-wise pass over the LR target and a decimated RGB: survey-level robust ranges
    and each tile core's valid share (target valid and RGB valid, sampled on the LR grid).

    ``robust_range(values) -> (lo, hi)`` is the core's normalisation range
    (``cmsr.inputs.robust_range``), passed in by ``pipelines``: one definition for a tile and a
    survey, and ``tiling`` stays free of torch. A target without a valid pixel gives
    ``target_valid_pixels == 0`` (neutral ranges): the caller names its file; an unreadable
    RGB raises ``InvalidInput`` naming the RGB."""
    from .rasters import validity

    s, lr, hr = plan.scale, plan.lr_grid, plan.hr_grid
    t_lr = plan.tile_size // s  # LR rows per tile row
    counts = np.zeros((plan.n_rows, plan.n_cols), dtype=np.int64)
    total = np.zeros((plan.n_rows, plan.n_cols), dtype=np.int64)
    n_lr = lr.height * lr.width
    step = max(1, int(math.sqrt(n_lr / max_samples)))  # subsample stride for the percentiles
    t_samples: list[np.ndarray] = []
    g_samples: list[np.ndarray] = []
    read_bands = guide_bands + ((guide.alpha_band,) if guide.alpha_band else ())
    n_valid = 0
    preview = None
    if preview_size is not None:  # LR row/col sampled by each preview pixel (centres)
        ph, pw = preview_size
        p_rows = np.minimum(((np.arange(ph) + 0.5) * hr.height / ph).astype(np.int64) // s, lr.height - 1)
        p_cols = np.minimum(((np.arange(pw) + 0.5) * hr.width / pw).astype(np.int64) // s, lr.width - 1)
        preview = np.full((len(guide_bands), ph, pw), np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(target_lr) as tds, rasterio.open(guide.path) as gds:
            for tr in range(plan.n_rows):
                r0 = tr * t_lr
                rows = min(t_lr, lr.height - r0)
                t = tds.read(window=((r0, r0 + rows), (0, lr.width))).astype(np.float32)
                tvalid = ~np.any(np.isnan(t), axis=0)
                # the RGB sampled at LR pixel centres (nearest), only the part inside the RGB
                hr_r0, hr_r1 = r0 * s, min(hr.height, (r0 + rows) * s)
                g_rows = -(-(hr_r1 - hr_r0) // s)
                g_cols = -(-hr.width // s)
                with reading(guide.path, "RGB"):
                    g = gds.read(
                        read_bands, window=((hr_r0, hr_r1), (0, hr.width)), out_shape=(len(read_bands), g_rows, g_cols),
                        resampling=Resampling.nearest,
                    ).astype(np.float32)
                gvalid = np.zeros_like(tvalid)
                gvalid[:g_rows, :g_cols] = validity(g, guide, read_bands)
                valid = tvalid & gvalid
                if preview is not None:
                    sel = (p_rows >= r0) & (p_rows < r0 + g_rows)
                    if sel.any():
                        pv = g[: len(guide_bands)][:, p_rows[sel] - r0][:, :, p_cols]
                        pv[:, ~gvalid[p_rows[sel] - r0][:, p_cols]] = np.nan
                        preview[:, sel] = pv
                n_valid += int(tvalid.sum())
                # per-tile counts over the cores' LR pixels (inside the HR grid only)
                inside = np.zeros_like(tvalid)
                inside[:g_rows, :g_cols] = True
                for tc in range(plan.n_cols):
                    c0, c1 = tc * t_lr, min((tc + 1) * t_lr, lr.width)
                    counts[tr, tc] = int(valid[:, c0:c1].sum())
                    total[tr, tc] = int(inside[:, c0:c1].sum())
                sub = (slice(None), slice((-r0) % step, None, step), slice(0, None, step))
                tv = tvalid[sub[1:]]
                t_samples.append(t[sub][:, tv])
                gv = gvalid[sub[1:]]
                gs = g[(slice(None),) + sub[1:]][: len(guide_bands)]
                gs = gs[:, gv[: gs.shape[1], : gs.shape[2]]] if gs.size else gs.reshape(len(guide_bands), 0)
                g_samples.append(gs)
    ts = np.concatenate(t_samples, axis=1)
    gs = np.concatenate(g_samples, axis=1)
    # a band whose subsample holds no valid pixel (possible only for a handful of valid
    # pixels, or an all-nodata RGB) gets the neutral range
    trange = tuple(robust_range(ts[i]) if ts.shape[1] else (0.0, 1.0) for i in range(ts.shape[0]))
    grange = tuple(robust_range(gs[i]) if gs.shape[1] else (0.0, 1.0) for i in range(len(guide_bands)))
    fractions = tuple(float(c / t) if t else 0.0 for c, t in zip(counts.ravel(), total.ravel()))
    return SurveyStats(trange, grange, fractions, n_valid, preview)


def north_up_grid(grid: Grid) -> Grid:
    """The north-up grid covering a rotated/sheared/south-up ``grid``: same CRS, square pixels
    of its finer pixel size, origin at the top-left of its footprint."""
    res = min(grid.res)
    left, bottom, right, top = grid.bounds
    w, h = int(math.ceil((right - left) / res - 1e-9)), int(math.ceil((top - bottom) / res - 1e-9))
    from affine import Affine

    return Grid.from_affine(h, w, Affine(res, 0.0, left, 0.0, -res, top), grid.crs)


def _units(crs: str) -> str:
    """The CRS's linear unit as a person writes it (``m`` for metres)."""
    from rasterio.crs import CRS

    try:
        c = CRS.from_user_input(crs)
        unit = c.linear_units if c.is_projected else "degree"
    except Exception:  # noqa: BLE001 - only wording depends on it
        return "CRS units"
    return {"metre": "m", "meter": "m", "metres": "m", "meters": "m"}.get(unit, unit)


def output_grid(rgb: RasterInfo) -> Grid:
    """The HR (output) grid: the RGB's own grid, or ``north_up_grid`` of a rotated/sheared/flipped
    one. Said as an ``InputWarning`` in that case: a user was promised exactly the RGB's grid."""
    if rgb.grid.is_north_up:
        return rgb.grid
    hr = north_up_grid(rgb.grid)
    warnings.warn(
        f"RGB file {rgb.path}: its geotransform is not north-up (rotated, sheared or flipped), so the output is on "
        f"a north-up grid at the same resolution ({hr.res[0]:g} {_units(hr.crs)} pixels, {hr.height} x {hr.width}), "
        "not the RGB's own grid; the RGB is resampled onto it (bilinear)", InputWarning, stacklevel=2)
    return hr


def rgb_to_hr(rgb: RasterInfo, bands: tuple[int, ...], dst_path: str) -> RasterInfo:
    """Warp a non-north-up RGB onto ``north_up_grid`` (bilinear colours; validity by nearest into
    an alpha band), strip by strip, atomically. Only used when the RGB's own grid is not north-up."""
    from dataclasses import replace

    from .rasters import inspect, validity

    hr = north_up_grid(rgb.grid)
    count = len(bands) + 1
    integer = np.issubdtype(np.dtype(rgb.dtype), np.integer)
    opaque = np.iinfo(rgb.dtype).max if integer else 1.0
    d = os.path.dirname(dst_path)
    fd, vtmp = tempfile.mkstemp(prefix=".rgb_valid.", suffix=".tif", dir=d)  # scratch, always removed
    os.close(fd)
    read_bands = bands + ((rgb.alpha_band,) if rgb.alpha_band else ())
    g = rgb.grid
    try:
        with warnings.catch_warnings(), atomic_output(dst_path) as tmp:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # 1) the source's validity (2 valid, 1 invalid, 0 outside) on the source grid
            vprof = dict(driver="GTiff", width=g.width, height=g.height, count=1, dtype="uint8", crs=g.crs,
                         transform=g.affine, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                         compress="deflate", BIGTIFF="IF_SAFER")
            srows = max(1, _strip_rows(g.width, len(read_bands), 4))
            with rasterio.open(rgb.path) as src, rasterio.open(vtmp, "w", **vprof) as vd:
                for r0 in range(0, g.height, srows):
                    h = min(srows, g.height - r0)
                    with reading(rgb.path, "RGB"):
                        raw = src.read(read_bands, window=((r0, r0 + h), (0, g.width))).astype(np.float32)
                    vd.write((validity(raw, rgb, read_bands).astype(np.uint8) + 1)[None],
                             window=((r0, r0 + h), (0, g.width)))
            # 2) colours (bilinear) and validity (nearest) onto the north-up grid, by strips
            profile = dict(
                driver="GTiff", width=hr.width, height=hr.height, count=count, dtype=rgb.dtype, crs=hr.crs,
                transform=hr.affine, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                BIGTIFF="IF_SAFER", photometric="RGB" if len(bands) == 3 else "MINISBLACK",
                **({"ALPHA": "YES"} if len(bands) in (1, 3) else {}),
            )
            rows = max(1, _strip_rows(hr.width, count, 8))
            rows = rows // 512 * 512 if rows >= 512 else rows
            with rasterio.open(rgb.path) as src, rasterio.open(vtmp) as vd, rasterio.open(tmp, "w", **profile) as dst:
                for r0 in range(0, hr.height, rows):
                    win = Window(r0, 0, min(rows, hr.height - r0), hr.width)
                    wt = hr.window_transform(win)
                    out = np.zeros((count, win.height, win.width), dtype=rgb.dtype)
                    with reading(rgb.path, "RGB"):
                        for i, b in enumerate(bands):
                            reproject(source=rasterio.band(src, b), destination=out[i], src_crs=g.crs,
                                      src_transform=g.affine, dst_transform=wt, dst_crs=hr.crs,
                                      resampling=Resampling.bilinear, XSCALE=1, YSCALE=1)
                            # (pinned: for a rotated source GDAL's estimate of the scale comes from
                            # bounding boxes and would widen the kernel; same pixel size here)
                    v = np.zeros((win.height, win.width), dtype=np.uint8)
                    reproject(source=rasterio.band(vd, 1), destination=v, src_crs=g.crs, src_transform=g.affine,
                              src_nodata=0, dst_transform=wt, dst_crs=hr.crs, dst_nodata=0,
                              resampling=Resampling.nearest)
                    out[-1] = np.where(v == 2, opaque, 0).astype(rgb.dtype)
                    dst.write(out, window=((win.row, win.row_end), (win.col, win.col_end)))
    finally:
        if os.path.exists(vtmp):
            os.unlink(vtmp)
    # our own layout: the last band is the validity (alpha), whatever the TIFF tags say
    return replace(inspect(dst_path, "RGB (warped north-up)", rgb.grid.crs), alpha_band=count)
