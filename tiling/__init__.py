"""Grids, alignment, tile plans, windowed reading/writing and COG output (no torch).

See ARCHITECTURE.md. ``Grid``/``Window`` hold exact integer relations; ``align`` validates the
inputs, chooses the scale and puts the target on the LR grid once; ``plan`` makes the tiles;
``rasters`` reads windows through lazy dask-backed arrays; ``output`` stitches and writes the COG.
"""

import os

# GDAL's block cache defaults to 5% of RAM per process; with several workers per machine and
# mosaics far larger than RAM that is the biggest memory term. Bound it (a user setting wins).
os.environ.setdefault("GDAL_CACHEMAX", "256")

from .errors import InputWarning, InvalidInput  # noqa: E402
from .grid import Grid, Window  # noqa: E402
from .plan import TilePlan, TileSpec, make_plan  # noqa: E402

__all__ = ["InvalidInput", "InputWarning", "Grid", "Window", "TilePlan", "TileSpec", "make_plan"]
