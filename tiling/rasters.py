"""Inspecting inputs and windowed, boundless reading through lazily opened dask-backed arrays.

Why lazy: a drone survey's RGB orthomosaic is many GB. Each worker opens the mosaic as a
dask-backed ``xarray.DataArray`` (chunks aligned to the file's internal blocks), slices its
tile window with ``isel`` and computes only that; no process ever holds the full mosaic.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio._err import CPLE_BaseError  # GDAL's errors as rasterio raises them (no public alias)
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError, WarpOperationError

from .errors import InvalidInput
from .grid import Grid, Window, crs_string

#: target chunk edge for the dask arrays (rounded to a multiple of the file's block size)
CHUNK_PIXELS = 2048


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about an input file (no pixel data)."""

    path: str
    grid: Grid
    count: int
    dtype: str
    nodata: str | None  # repr of the declared nodata value ("nan", "255.0"), so NaN compares equal
    alpha_band: int | None  # 1-based band index of an alpha band, if any
    block_shape: tuple[int, int]
    descriptions: tuple[str, ...]
    units: tuple[str, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]

    @property
    def nodata_value(self) -> float | None:
        return None if self.nodata is None else float(self.nodata)

    @property
    def color_bands(self) -> tuple[int, ...]:
        """1-based indexes of the bands that are not alpha."""
        return tuple(b for b in range(1, self.count + 1) if b != self.alpha_band)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["grid"] = self.grid.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RasterInfo":
        return cls(
            path=d["path"], grid=Grid.from_dict(d["grid"]), count=int(d["count"]), dtype=d["dtype"],
            nodata=d["nodata"], alpha_band=d["alpha_band"],
            block_shape=tuple(d["block_shape"]), descriptions=tuple(d["descriptions"]),  # type: ignore[arg-type]
            units=tuple(d["units"]), scales=tuple(d["scales"]), offsets=tuple(d["offsets"]),
        )


def _first_line(exc: BaseException) -> str:
    """GDAL's own words: rasterio's "Read failed. See previous exception" hides them in the cause."""
    cause = exc.__cause__ or exc.__context__
    text = str(cause if isinstance(cause, CPLE_BaseError) else exc) or type(exc).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def reading(path: str, role: str) -> Iterator[None]:
    """Pixel reads of an input file: GDAL's read errors (a truncated or damaged file, found only
    when its blocks are decoded) become one line naming the file instead of a traceback."""
    try:
        yield
    except (RasterioIOError, WarpOperationError, CPLE_BaseError) as exc:
        raise InvalidInput(f"{role} file {path}: unreadable (truncated or damaged?): {_first_line(exc)}") from None


def _read_last_block(ds, path: str, role: str) -> None:
    """Decode the file's last block: a truncated file (its directory at the start, as GDAL and
    COG writers put it) opens fine and fails only here, cheaply, before any work starts."""
    bh, bw = ds.block_shapes[-1]
    r0, c0 = (ds.height - 1) // bh * bh, (ds.width - 1) // bw * bw
    with reading(path, role):
        ds.read(ds.count, window=((r0, min(ds.height, r0 + bh)), (c0, min(ds.width, c0 + bw))))


def _no_geotransform(ds, path: str, role: str) -> InvalidInput:
    gcps, _ = ds.gcps
    if gcps:
        return InvalidInput(
            f"{role} file {path}: georeferenced by {len(gcps)} ground control points, not a geotransform; "
            f"warp it onto a grid first, e.g. gdalwarp -tps -r bilinear {path} {_warped_name(path)}"
        )
    return InvalidInput(f"{role} file {path}: has no geotransform (not a georeferenced raster)")


def _warped_name(path: str) -> str:
    stem, _ = os.path.splitext(path)
    return f"{stem}_warped.tif"


def inspect(path: str, role: str, assume_crs: str | None = None) -> RasterInfo:
    """Open ``path`` (metadata and its last block) or raise InvalidInput naming the file and the problem."""
    if not os.path.exists(path):
        raise InvalidInput(f"{role} file {path}: does not exist")
    if not os.path.isfile(path):
        raise InvalidInput(f"{role} file {path}: is not a regular file")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"{role} file {path}: is not readable (permission denied)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                # before the CRS: a GCP-only file has no CRS of its grid either, and
                # --assume-crs cannot help it
                if ds.transform.is_identity:
                    raise _no_geotransform(ds, path, role)
                crs = crs_string(ds.crs)
                if not crs:
                    if not assume_crs:
                        raise InvalidInput(
                            f"{role} file {path}: has no CRS (GDAL finds no georeferencing CRS); "
                            "if you know it, pass --assume-crs EPSG:N"
                        )
                    try:
                        crs = crs_string(assume_crs)
                    except Exception as exc:  # rasterio raises CRSError with a long message
                        raise InvalidInput(f"--assume-crs {assume_crs!r}: not a CRS ({exc})") from None
                _read_last_block(ds, path, role)
                alpha = next(
                    (i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha), None
                )
                info = RasterInfo(
                    path=os.path.abspath(path),
                    grid=Grid.from_affine(ds.height, ds.width, ds.transform, crs),
                    count=ds.count,
                    dtype=ds.dtypes[0],
                    nodata=None if ds.nodata is None else repr(float(ds.nodata)),
                    alpha_band=alpha,
                    block_shape=tuple(ds.block_shapes[0]),  # type: ignore[arg-type]
                    descriptions=tuple(d or "" for d in ds.descriptions),
                    units=tuple(u or "" for u in ds.units),
                    scales=tuple(float(s) for s in ds.scales),
                    offsets=tuple(float(o) for o in ds.offsets),
                )
    except InvalidInput:
        raise
    except (RasterioIOError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(f"{role} file {path}: not a readable raster ({first})") from None
    return info


def spell_value(value: float, dtype: str) -> str:
    """A pixel value as a user types it back: the shortest text that reads as the same value of
    ``dtype`` (``0``, ``-9999``, ``0.1`` for float32(0.1))."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    kind = np.dtype(dtype).type if np.issubdtype(np.dtype(dtype), np.floating) else np.float64
    with np.errstate(over="ignore"):
        for digits in range(1, 18):
            text = f"{value:.{digits}g}"
            if kind(float(text)) == kind(value):
                return text
    return repr(float(value))


def declare_nodata(info: RasterInfo, value: float | None, option: str, role: str) -> RasterInfo:
    """``info`` with the user's nodata (``--target-nodata``/``--rgb-nodata``) instead of the file's.

    Why stored cast to the file's type: pixels are compared with it in that type (GDAL's warp, the
    exact copy), so 0.1 declared for a float32 file must be float32(0.1) to match any pixel. A value
    the file's type cannot hold would match nothing: refused, naming the option and the file."""
    if value is None:
        return info
    v = float(value)
    dt = np.dtype(info.dtype)
    if np.issubdtype(dt, np.integer):
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        if not (np.isfinite(v) and v == int(v) and lo <= v <= hi):
            raise InvalidInput(
                f"{option} {spell_value(v, 'float64')}: {role} file {info.path} holds {dt.name} values; "
                f"expected an integer {lo}..{hi}"
            )
    else:
        with np.errstate(over="ignore"):
            cast = dt.type(v)
        if np.isfinite(v) and not np.isfinite(cast):
            raise InvalidInput(f"{option} {spell_value(v, 'float64')}: {role} file {info.path} holds {dt.name} "
                               "values; out of their range")
        v = float(cast)
    return replace(info, nodata=repr(v))


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def chunks_for(block_shape: tuple[int, int], target: int | None = None) -> dict[str, int]:
    """dask chunks that are whole multiples of the file's internal blocks, about ``target`` px."""
    target = CHUNK_PIXELS if target is None else target
    by, bx = (max(1, int(b)) for b in block_shape)
    return {"band": -1, "y": by * max(1, round(target / by)), "x": bx * max(1, round(target / bx))}


def open_lazy(path: str, block_shape: tuple[int, int]):
    """The file as a lazy dask-backed DataArray (band, y, x), raw values (no masking)."""
    import rioxarray  # noqa: F401 - registers the engine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rioxarray.open_rasterio(path, chunks=chunks_for(block_shape), lock=False, cache=False, masked=False,
                                       parse_coordinates=False)


def read_window(
    lazy, window: Window, bands: tuple[int, ...], pad: str = "symmetric"
) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of ``window`` of 1-based ``bands`` from a lazy (band, y, x) array.

    Returns (data (B, h, w) float32, inside (h, w) bool). Pixels outside the raster are filled
    by mirroring the inside (``pad="symmetric"``, so a tile model sees plausible context at the
    mosaic's edge) or NaN (``pad="nan"``); ``inside`` says which pixels are real.
    Computed here, in the calling process, with the synchronous scheduler.
    """
    H, W = int(lazy.sizes["y"]), int(lazy.sizes["x"])
    out = np.full((len(bands), window.height, window.width), np.nan, dtype=np.float32)
    inside = np.zeros((window.height, window.width), dtype=bool)
    part = window.intersect(Window(0, 0, H, W))
    if part is None:
        return out, inside
    sub = lazy.isel(
        band=[b - 1 for b in bands],
        y=slice(part.row, part.row_end),
        x=slice(part.col, part.col_end),
    )
    arr = np.asarray(sub.compute(scheduler="synchronous").values, dtype=np.float32)
    r0, c0 = part.row - window.row, part.col - window.col
    inside[r0 : r0 + part.height, c0 : c0 + part.width] = True
    if pad == "symmetric" and part != window:
        widths = ((0, 0), (r0, window.height - r0 - part.height), (c0, window.width - c0 - part.width))
        out[:] = _pad_symmetric(arr, widths)
    else:
        out[:, r0 : r0 + part.height, c0 : c0 + part.width] = arr
    return out, inside


def _pad_symmetric(arr: np.ndarray, widths) -> np.ndarray:
    """np.pad symmetric that also works when a pad is wider than the data (repeats the mirror)."""
    while any(
        w > n for (lo, hi), n in zip(widths[1:], arr.shape[1:]) for w in (lo, hi)
    ):
        step = tuple(
            (0, 0) if i == 0 else (min(lo, arr.shape[i]), min(hi, arr.shape[i]))
            for i, (lo, hi) in enumerate(widths)
        )
        arr = np.pad(arr, step, mode="symmetric")
        widths = tuple((lo - s0, hi - s1) for (lo, hi), (s0, s1) in zip(widths, step))
    return np.pad(arr, widths, mode="symmetric")


def validity(data: np.ndarray, info: RasterInfo, bands: tuple[int, ...]) -> np.ndarray:
    """(h, w) bool: pixels that carry data (alpha > 0, not all bands nodata, no NaN)."""
    valid = ~np.any(np.isnan(data), axis=0)
    if info.alpha_band is not None and info.alpha_band in bands:
        valid &= data[bands.index(info.alpha_band)] > 0
    colour = [i for i, b in enumerate(bands) if b != info.alpha_band]
    nd = info.nodata_value
    if nd is not None and not np.isnan(nd) and colour:
        valid &= ~np.all(data[colour] == np.float32(nd), axis=0)
    return valid
