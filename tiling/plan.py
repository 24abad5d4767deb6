"""Tile plans over the HR grid: cores that tile the grid, halos for context, exact LR windows.

Why these rules: the core is a multiple of ``s`` and the halo is a multiple of ``s`` so every
tile's read window maps onto whole LR pixels (the training and back-projection operators are
exact only then); the stride never shifts at the edge (ceil tile count, boundless reads), so
every tile has the same shape (batchable) and every output pixel has exactly one owner core.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import InvalidInput
from .grid import Grid, Window


@dataclass(frozen=True)
class TileSpec:
    """One tile: its core (owned output pixels, clipped to the grid) and its halo'd read windows."""

    index: int
    row: int  # tile row / column in the plan
    col: int
    core: Window  # HR pixels this tile owns (inside the grid)
    read: Window  # HR window read for the tile (core + halo; may extend past the grid)
    lr_read: Window  # the same area on the LR grid (read / s)
    valid_fraction: float = 1.0  # valid share of the core (RGB and target both valid)
    skip: bool = False  # below the plan's min valid fraction: written as nodata

    def to_dict(self) -> dict:
        return {
            "index": self.index, "row": self.row, "col": self.col, "core": self.core.to_list(),
            "read": self.read.to_list(), "lr_read": self.lr_read.to_list(),
            "valid_fraction": self.valid_fraction, "skip": self.skip,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TileSpec":
        return cls(
            int(d["index"]), int(d["row"]), int(d["col"]), Window.from_list(d["core"]),
            Window.from_list(d["read"]), Window.from_list(d["lr_read"]),
            float(d["valid_fraction"]), bool(d["skip"]),
        )


@dataclass(frozen=True)
class TilePlan:
    hr_grid: Grid
    lr_grid: Grid
    scale: int
    tile_size: int  # core edge, HR px (multiple of scale)
    halo: int  # HR px on each side (multiple of scale)
    n_rows: int
    n_cols: int
    tiles: tuple[TileSpec, ...]

    @property
    def read_size(self) -> int:
        return self.tile_size + 2 * self.halo

    def neighbours(self, index: int) -> list[int]:
        """Indexes of the (up to 8) tiles around ``index``."""
        t = self.tiles[index]
        out = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = t.row + dr, t.col + dc
                if (dr or dc) and 0 <= r < self.n_rows and 0 <= c < self.n_cols:
                    out.append(r * self.n_cols + c)
        return out

    def with_validity(self, fractions: list[float], min_valid_fraction: float) -> "TilePlan":
        tiles = tuple(
            replace(t, valid_fraction=float(f), skip=bool(f < min_valid_fraction or f <= 0.0))
            for t, f in zip(self.tiles, fractions)
        )
        return replace(self, tiles=tiles)

    def to_dict(self) -> dict:
        return {
            "hr_grid": self.hr_grid.to_dict(), "lr_grid": self.lr_grid.to_dict(), "scale": self.scale,
            "tile_size": self.tile_size, "halo": self.halo, "n_rows": self.n_rows, "n_cols": self.n_cols,
            "tiles": [t.to_dict() for t in self.tiles],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TilePlan":
        return cls(
            Grid.from_dict(d["hr_grid"]), Grid.from_dict(d["lr_grid"]), int(d["scale"]),
            int(d["tile_size"]), int(d["halo"]), int(d["n_rows"]), int(d["n_cols"]),
            tuple(TileSpec.from_dict(t) for t in d["tiles"]),
        )


def snap_tile_size(tile_size: int, scale: int) -> int:
    """Largest multiple of ``scale`` not above ``tile_size`` (at least ``scale``)."""
    return max(scale, (int(tile_size) // scale) * scale)


def snap_halo(halo: int, scale: int) -> int:
    """Smallest multiple of ``scale`` not below ``halo``."""
    return -(-int(halo) // scale) * scale


def make_plan(hr_grid: Grid, scale: int, tile_size: int, halo: int) -> TilePlan:
    """Geometry of the plan (all tiles valid); ``tile_size``/``halo`` are snapped to ``scale``."""
    if int(scale) != scale or not 1 <= scale:
        raise InvalidInput(f"scale {scale!r}: must be a positive integer")
    if tile_size < 1 or halo < 0:
        raise InvalidInput(f"tile size {tile_size} / halo {halo}: tile size must be >= 1, halo >= 0")
    s = int(scale)
    t, h = snap_tile_size(tile_size, s), snap_halo(halo, s)
    lr_grid = hr_grid.zoom_out(s)
    n_rows, n_cols = -(-hr_grid.height // t), -(-hr_grid.width // t)
    tiles = []
    for r in range(n_rows):
        for c in range(n_cols):
            full = Window(r * t, c * t, t, t)
            core = full.intersect(hr_grid.full_window)
            assert core is not None
            read = Window(r * t - h, c * t - h, t + 2 * h, t + 2 * h)
            tiles.append(TileSpec(len(tiles), r, c, core, read, read.scaled_down(s)))
    return TilePlan(hr_grid, lr_grid, s, t, h, n_rows, n_cols, tuple(tiles))
