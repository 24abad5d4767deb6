"""Stitching tile results by windows, the Cloud-Optimized GeoTIFF, and the quick-look PNG.

Why by windows: the output of a large survey never exists as one array; each tile's core (or
its feathered neighbourhood) is written into a tiled GeoTIFF block by block, and GDAL's COG
driver then writes the final file (overviews included) from that, also blockwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from rasterio.enums import Resampling

from .files import atomic_output
from .grid import Grid, Window
from .plan import TilePlan, TileSpec

COMPRESSIONS = ("deflate", "zstd")


def create_stitch_target(path: str, grid: Grid, count: int, descriptions: list[str], units: list[str]) -> None:
    """An empty tiled float32 GeoTIFF on ``grid`` (NaN nodata) to write tile cores into.

    Uncompressed on purpose: it is a scratch file read once by the COG writer; compressing it
    cost more time than the whole tile phase of the bicubic benchmark."""
    profile = dict(
        driver="GTiff", width=grid.width, height=grid.height, count=count, dtype="float32",
        crs=grid.crs or None, transform=grid.affine, nodata=float("nan"), tiled=True,
        blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER", SPARSE_OK="TRUE",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(count):
            dst.set_band_description(i + 1, descriptions[i])
            if units[i]:
                dst.set_band_unit(i + 1, units[i])


def write_bands(path: str, grid: Grid, descriptions: list[str], units: list[str],
                rows_of: Callable[[range], np.ndarray], tags: Mapping[str, str] | None = None,
                strip: int = 512) -> None:
    """A tiled float32 GeoTIFF on ``grid`` (NaN nodata, deflate), written strip by strip from
    ``rows_of(rows) -> (bands, len(rows), width)``, atomically: a map over a large grid never
    exists as one array, and a reader never sees half a file."""
    profile = dict(
        driver="GTiff", width=grid.width, height=grid.height, count=len(descriptions), dtype="float32",
        crs=grid.crs or None, transform=grid.affine, nodata=float("nan"), tiled=True, blockxsize=256,
        blockysize=256, compress="deflate", predictor=3, BIGTIFF="IF_SAFER",
    )
    with atomic_output(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            for i, (d, u) in enumerate(zip(descriptions, units)):
                dst.set_band_description(i + 1, d)
                if u:
                    dst.set_band_unit(i + 1, u)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
            for r0 in range(0, grid.height, strip):
                rows = range(r0, min(r0 + strip, grid.height))
                block = np.asarray(rows_of(rows), dtype=np.float32)
                dst.write(block, window=rasterio.windows.Window(0, r0, grid.width, len(rows)))


def raised_cosine(n: int, start: int, core_start: int, core_end: int, halo: int) -> np.ndarray:
    """1-D feather weights for pixels ``start .. start+n`` of a tile whose core is
    ``[core_start, core_end)``: 1 inside, raised-cosine ramps over ``core edge +- halo``.
    Ramps of two neighbours sum to exactly 1 (a partition of unity across the seam)."""
    p = np.arange(start, start + n, dtype=np.float64) + 0.5
    w = np.ones(n, dtype=np.float64)
    if halo <= 0:
        return ((p >= core_start) & (p < core_end)).astype(np.float64)
    up = np.clip((p - (core_start - halo)) / (2 * halo), 0.0, 1.0)
    down = np.clip(((core_end + halo) - p) / (2 * halo), 0.0, 1.0)
    w *= 0.5 - 0.5 * np.cos(np.pi * up)
    w *= 0.5 - 0.5 * np.cos(np.pi * down)
    return w


class SeamMeter:
    """The seam metric, accumulated while cores are written in row-major order: mean |difference|
    between neighbouring pixels across tile borders vs across LR-pixel borders inside tiles
    (tile borders are LR-pixel borders too, and upsampled images change most there; ratio ~1:
    no visible seams). Keeps only the last column of the previous core and the last rows of
    the row above."""

    def __init__(self, scale: int = 1) -> None:
        self.scale = int(scale)
        self.sums = {"across": 0.0, "inside": 0.0}
        self.counts = {"across": 0, "inside": 0}
        self._left: np.ndarray | None = None
        self._above: dict[int, np.ndarray] = {}

    def _add(self, key: str, d: np.ndarray) -> None:
        d = d[np.isfinite(d)]
        self.sums[key] += float(np.abs(d).sum(dtype=np.float64))
        self.counts[key] += int(d.size)

    def add(self, t: TileSpec, block: np.ndarray) -> None:
        b = block.astype(np.float64)
        k = self.scale  # pairs (k-1, k), (2k-1, 2k), ...: across LR pixel borders
        self._add("inside", b[:, :, k::k] - b[:, :, k - 1 : -1 : k] if b.shape[2] > k else b[:, :, :0])
        self._add("inside", b[:, k::k, :] - b[:, k - 1 : -1 : k, :] if b.shape[1] > k else b[:, :0, :])
        if t.col > 0 and self._left is not None:
            self._add("across", b[:, :, 0] - self._left)
        if t.row > 0 and t.col in self._above:
            self._add("across", b[:, 0, :] - self._above[t.col])
        self._left = b[:, :, -1]
        self._above[t.col] = b[:, -1, :]

    def result(self) -> dict[str, float | None]:
        a = self.sums["across"] / self.counts["across"] if self.counts["across"] else None
        i = self.sums["inside"] / self.counts["inside"] if self.counts["inside"] else None
        return {"seam_across": a, "seam_inside": i, "seam_ratio": (a / i) if a is not None and i else None}


def stitch(
    plan: TilePlan, dst_path: str, load: Callable[[int], np.ndarray | None], mode: str, count: int,
    seam_bands: int | None = None,
) -> dict[str, float | None]:
    """Write every tile's contribution into ``dst_path`` (made by ``create_stitch_target``).

    ``load(index)`` returns the tile's (B, h, w) float32 result over its read window, or None
    for a skipped tile. ``mode="core"``: each core written as is (one owner per pixel);
    ``mode="feather"``: each core block is the weighted mean of all tiles whose read window
    covers it, with raised-cosine weights over ``core edge +- halo/2``: the outer half of each
    halo (where a tile model's own boundary effects live) never contributes.
    Returns the seam metric of the written output (``SeamMeter``) over its first ``seam_bands``
    bands (default all: bands after those, e.g. guide weights, are stitched alike but not measured).
    """
    if mode not in ("core", "feather"):
        raise ValueError(f"stitch mode {mode!r}: expected 'core' or 'feather'")
    T, h = plan.tile_size, plan.halo
    seams = SeamMeter(plan.scale)
    with rasterio.open(dst_path, "r+") as dst:
        for t in plan.tiles:
            core = t.core
            if mode == "core" or h < 2:
                block = _core_of(t, load(t.index), count)
            else:
                num = np.zeros((count, core.height, core.width), dtype=np.float64)
                den = np.zeros((count, core.height, core.width), dtype=np.float64)
                for j in [t.index] + plan.neighbours(t.index):
                    n = plan.tiles[j]
                    part = n.read.intersect(core)
                    if part is None:
                        continue
                    data = load(j)
                    if data is None:
                        continue
                    v = data[:, part.row - n.read.row : part.row_end - n.read.row,
                             part.col - n.read.col : part.col_end - n.read.col].astype(np.float64)
                    wr = raised_cosine(part.height, part.row, n.row * T, n.row * T + T, h // 2)
                    wc = raised_cosine(part.width, part.col, n.col * T, n.col * T + T, h // 2)
                    w = np.broadcast_to(wr[:, None] * wc[None, :], v.shape)
                    ok = np.isfinite(v) & (w > 0)
                    sl = (slice(None), slice(part.row - core.row, part.row_end - core.row),
                          slice(part.col - core.col, part.col_end - core.col))
                    num[sl] += np.where(ok, v * w, 0.0)
                    den[sl] += np.where(ok, w, 0.0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    block = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan).astype(np.float32)
                # a pixel the owning tile marked nodata stays nodata (masks are not blended away)
                own = _core_of(t, load(t.index), count)
                block[~np.isfinite(own)] = np.nan
            dst.write(block, window=((core.row, core.row_end), (core.col, core.col_end)))
            seams.add(t, block if seam_bands is None else block[:seam_bands])
    return seams.result()


def _core_of(t: TileSpec, data: np.ndarray | None, count: int) -> np.ndarray:
    if data is None:
        return np.full((count, t.core.height, t.core.width), np.nan, dtype=np.float32)
    r, c = t.core.row - t.read.row, t.core.col - t.read.col
    return np.ascontiguousarray(data[:, r : r + t.core.height, c : c + t.core.width], dtype=np.float32)


def write_cog(src_path: str, out_path: str, tags: Mapping[str, str], compress: str = "deflate") -> None:
    """Cloud-Optimized GeoTIFF from ``src_path``: float32, DEFLATE/ZSTD + predictor 3, 512 blocks,
    NaN nodata, ``average`` overviews, tags added. Written to a temp name, then renamed."""
    if compress.lower() not in COMPRESSIONS:
        raise ValueError(f"compress {compress!r}: expected one of {COMPRESSIONS}")
    with rasterio.open(src_path, "r+") as src:
        src.update_tags(**{k: str(v) for k, v in tags.items()})
    with atomic_output(out_path) as tmp:
        # LEVEL=1: float32 with predictor 3 compresses within ~1% of the default level at half
        # the time (benchmarks/RESULTS.md, Pipeline); compression threads do not change the bytes.
        rasterio.shutil.copy(
            src_path, tmp, driver="COG", COMPRESS=compress.upper(), LEVEL="1", PREDICTOR="3", BLOCKSIZE="512",
            OVERVIEW_RESAMPLING="AVERAGE", OVERVIEWS="AUTO", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
        )


def read_decimated(path: str, bands: list[int], size: tuple[int, int], resampling: Resampling,
                   window: Window | None = None) -> np.ndarray:
    """(B, h, w) float32 of ``path`` resampled to ``size`` (uses overviews when present)."""
    with rasterio.open(path) as ds:
        w = None if window is None else ((window.row, window.row_end), (window.col, window.col_end))
        a = ds.read(bands, window=w, out_shape=(len(bands),) + size, resampling=resampling,
                    masked=True, boundless=False)
        return np.ma.filled(a.astype(np.float32), np.nan)


def quicklook_size(grid: Grid, max_side: int = 600) -> tuple[int, int]:
    f = min(1.0, max_side / max(grid.height, grid.width))
    return (max(1, int(round(grid.height * f))), max(1, int(round(grid.width * f))))


def to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear stretch of ``a`` to 0..255 with ``[lo, hi]``; NaN becomes 0."""
    x = (np.nan_to_num(a, nan=lo) - lo) / max(hi - lo, 1e-12)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


#: a perceptually ordered colour ramp (inferno-like, 9 anchors) for single-band panels
_RAMP = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
], dtype=np.float64)


def colorize(u8: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    x = u8.astype(np.float64) / 255.0 * (len(_RAMP) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(_RAMP) - 2)
    f = (x - i)[..., None]
    rgb = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
    rgb[nodata] = 128.0
    return np.round(rgb).astype(np.uint8)


def write_quicklook(path: str, panels: list[np.ndarray], labels: list[str]) -> None:
    """Side-by-side (H, W, 3) uint8 panels with a 4-px gap, as PNG (atomic)."""
    from PIL import Image, ImageDraw

    h = max(p.shape[0] for p in panels)
    gap = 4
    W = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((h + 14, W, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[14 : 14 + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    x = 0
    for p, lab in zip(panels, labels):
        draw.text((x + 2, 1), lab, fill=(0, 0, 0))
        x += p.shape[1] + gap
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")


def area_pool(a: np.ndarray, s: int) -> np.ndarray:
    """Mean over s x s blocks of (..., H, W) with H, W multiples of s (NaN propagates)."""
    H, W = a.shape[-2:]
    return a.reshape(*a.shape[:-2], H // s, s, W // s, s).mean(axis=(-3, -1))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
