"""Tile plans: cores tile the grid once, halos and cores are multiples of s, LR windows exact;
feather weights form a partition of unity; the seam metric."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from tiling.errors import InvalidInput
from tiling.grid import Grid
from tiling.output import raised_cosine
from tiling.plan import make_plan, snap_halo, snap_tile_size


def grid(h: int, w: int) -> Grid:
    return Grid.from_affine(h, w, Affine(0.05, 0.0, 483000.0, 0.0, -0.05, 5628000.0), "EPSG:32632")


@pytest.mark.parametrize("shape,s,tile,halo", [((200, 300), 4, 64, 16), ((1001, 777), 3, 512, 32), ((90, 90), 5, 100, 7)])
def test_cores_partition_the_grid(shape, s, tile, halo):
    g = grid(*shape)
    p = make_plan(g, s, tile, halo)
    assert p.tile_size % s == 0 and p.halo % s == 0 and p.halo >= halo and p.tile_size <= tile
    assert p.n_rows == -(-shape[0] // p.tile_size) and p.n_cols == -(-shape[1] // p.tile_size)
    owner = np.zeros(shape, dtype=np.int32)
    for t in p.tiles:
        owner[t.core.row : t.core.row_end, t.core.col : t.core.col_end] += 1
        # stride never shifts: every read window has the same size, core + halo on every side
        assert (t.read.height, t.read.width) == (p.read_size, p.read_size)
        assert (t.core.row - t.read.row, t.core.col - t.read.col) == (p.halo, p.halo)
        assert t.lr_read.to_list() == [t.read.row // s, t.read.col // s, t.read.height // s, t.read.width // s]
        assert t.read.row % s == 0 and t.read.col % s == 0
    assert (owner == 1).all()
    assert p.lr_grid.shape == (-(-shape[0] // s), -(-shape[1] // s))
    again = type(p).from_dict(p.to_dict())
    assert again == p


def test_snapping_and_bad_values():
    assert snap_tile_size(512, 3) == 510 and snap_tile_size(2, 4) == 4
    assert snap_halo(32, 3) == 33 and snap_halo(0, 4) == 0
    with pytest.raises(InvalidInput):
        make_plan(grid(10, 10), 2, 0, 4)


def test_neighbours():
    p = make_plan(grid(200, 300), 4, 64, 16)  # 4 x 5 tiles
    assert sorted(p.neighbours(0)) == [1, 5, 6]
    assert len(p.neighbours(6)) == 8


def test_raised_cosine_partition_of_unity():
    T, h = 64, 16
    n = 3 * T
    total = np.zeros(n + 2 * h)
    for k in range(3):
        start = k * T - h
        w = raised_cosine(T + 2 * h, start, k * T, k * T + T, h)
        total[start + h : start + h + T + 2 * h] += w
    inner = total[h + T - h : h + 2 * T + h]  # around both interior seams
    np.testing.assert_allclose(inner, 1.0, atol=1e-12)
    w = raised_cosine(T + 2 * h, -h, 0, T, h)
    assert w[0] > 0 and w[0] < 0.01 and np.allclose(w[2 * h : T], 1.0)
