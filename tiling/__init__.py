"""Grids, alignment, tile plans, windowed reading/writing and COG output (no torch).

See ARCHITECTURE.md. ``Grid``/``Window`` hold exact integer relations; ``align`` validates the
inputs, chooses the scale and puts the target on the LR grid once; ``plan`` makes the tiles;
``rasters`` reads windows through lazy dask-backed arrays; ``output`` stitches and writes the COG.
"""

from .errors import InputWarning, InvalidInput
from .grid import Grid, Window
from .plan import TilePlan, TileSpec, make_plan

__all__ = ["InvalidInput", "InputWarning", "Grid", "Window", "TilePlan", "TileSpec", "make_plan"]
