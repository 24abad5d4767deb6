"""Raster grids as small frozen values with exact integer relations.

Why: tiles, LR/HR windows and the stitched output must agree pixel-for-pixel. Float
coordinates are compared exactly once, when a relation between two grids is established
(``offset_in``, with a tolerance in *pixels*); everything downstream is integer arithmetic on
pixel offsets and the integer scale ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine

#: a relation between grids holds if it is off by less than this fraction of a pixel
PIXEL_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Window:
    """A pixel window ``[row, row + height) x [col, col + width)``; may extend past a grid."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row + self.height

    @property
    def col_end(self) -> int:
        return self.col + self.width

    def intersect(self, other: "Window") -> "Window | None":
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def shift(self, drow: int, dcol: int) -> "Window":
        return Window(self.row + drow, self.col + dcol, self.height, self.width)

    def scaled_down(self, s: int) -> "Window":
        """The same area on a grid ``s`` times coarser with the same origin (must divide)."""
        if self.row % s or self.col % s or self.height % s or self.width % s:
            raise ValueError(f"window {self} is not aligned to scale {s}")
        return Window(self.row // s, self.col // s, self.height // s, self.width // s)

    def to_list(self) -> list[int]:
        return [self.row, self.col, self.height, self.width]

    @classmethod
    def from_list(cls, v: list[int] | tuple[int, ...]) -> "Window":
        r, c, h, w = (int(x) for x in v)
        return cls(r, c, h, w)


@dataclass(frozen=True)
class Grid:
    """A north-up (or rotated) pixel grid: ``height x width`` pixels, an affine, a CRS (WKT/EPSG)."""

    height: int
    width: int
    transform: tuple[float, float, float, float, float, float]  # GDAL order a, b, c, d, e, f
    crs: str  # "EPSG:N" when it has a code, else WKT; "" when unknown

    @classmethod
    def from_affine(cls, height: int, width: int, transform: Affine, crs: object) -> "Grid":
        t = Affine(*tuple(transform)[:6])
        return cls(int(height), int(width), (t.a, t.b, t.c, t.d, t.e, t.f), crs_string(crs))

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def full_window(self) -> Window:
        return Window(0, 0, self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, positive, also for rotated grids."""
        a, b, _, d, e, _ = self.transform
        return (math.hypot(a, d), math.hypot(b, e))

    @property
    def metres_per_unit(self) -> float | None:
        """Metres per CRS unit of a projected CRS (1.0 for UTM); None for a geographic or unknown one."""
        if not self.crs:
            return None
        from rasterio.crs import CRS

        c = CRS.from_user_input(self.crs)
        if c.is_geographic:
            return None
        try:
            return float(c.linear_units_factor[1])
        except Exception:  # noqa: BLE001 - a CRS without linear units: say nothing in metres
            return None

    @property
    def is_north_up(self) -> bool:
        a, b, _, d, e, _ = self.transform
        return b == 0.0 and d == 0.0 and a > 0 and e < 0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the pixel corners."""
        t = self.affine
        xs, ys = zip(*(t @ (c, r) for r in (0, self.height) for c in (0, self.width)))
        return (min(xs), min(ys), max(xs), max(ys))

    def window_transform(self, window: Window) -> Affine:
        return self.affine @ Affine.translation(window.col, window.row)

    def zoom_out(self, s: int) -> "Grid":
        """The grid ``s`` times coarser with the same origin; covers this grid (ceil)."""
        if int(s) != s or s < 1:
            raise ValueError(f"zoom factor must be a positive integer, got {s!r}")
        s = int(s)
        t = self.affine @ Affine.scale(s)
        return Grid(-(-self.height // s), -(-self.width // s), (t.a, t.b, t.c, t.d, t.e, t.f), self.crs)

    def offset_in(self, other: "Grid") -> tuple[int, int] | None:
        """(row, col) of this grid's origin in ``other``'s pixels if both share pixel size,
        orientation and CRS and the origin falls on a pixel corner of ``other``; else None."""
        if self.crs != other.crs:
            return None
        if any(
            abs(p - q) > PIXEL_TOLERANCE * max(abs(q), 1e-12)
            for p, q in zip(self.transform[:2] + self.transform[3:5], other.transform[:2] + other.transform[3:5])
        ):
            return None
        col, row = ~other.affine @ (self.transform[2], self.transform[5])
        rc, cc = round(row), round(col)
        if abs(row - rc) > PIXEL_TOLERANCE or abs(col - cc) > PIXEL_TOLERANCE:
            return None
        return (int(rc), int(cc))

    def same_as(self, other: "Grid") -> bool:
        return self.shape == other.shape and self.offset_in(other) == (0, 0)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "transform": list(self.transform), "crs": self.crs}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(int(d["height"]), int(d["width"]), tuple(float(x) for x in d["transform"]), str(d["crs"]))  # type: ignore[arg-type]


def crs_string(crs: object) -> str:
    """Canonical text of a CRS: ``EPSG:N`` when it has an exact code, else WKT; "" for None."""
    if crs is None or crs == "":
        return ""
    from rasterio.crs import CRS

    c = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    if not c:
        return ""
    epsg = c.to_epsg(confidence_threshold=100)
    return f"EPSG:{epsg}" if epsg else c.to_wkt()
