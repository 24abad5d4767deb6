"""Grid and Window: exact integer relations, JSON round trips, boundless symmetric padding."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from tiling.grid import Grid, Window, crs_string
from tiling.rasters import _pad_symmetric


def s2_grid() -> Grid:
    # the Sentinel-2 clip's grid (shared/data/geo/sentinel2_10m)
    return Grid.from_affine(200, 300, Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 4700020.0), "EPSG:32719")


def test_zoom_out_keeps_origin_and_covers_grid():
    g = s2_grid()
    lr = g.zoom_out(4)
    assert lr.shape == (50, 75)
    assert lr.affine == Affine(40.0, 0.0, 600000.0, 0.0, -40.0, 4700020.0)
    odd = Grid.from_affine(201, 301, g.affine, g.crs).zoom_out(4)
    assert odd.shape == (51, 76)  # ceil: the LR grid covers every HR pixel
    with pytest.raises(ValueError):
        g.zoom_out(2.5)  # type: ignore[arg-type]


def test_offset_in_is_integer_and_tolerant_to_float_noise():
    g = s2_grid()
    shifted = Grid.from_affine(10, 10, g.affine @ Affine.translation(7, -3), g.crs)
    assert shifted.offset_in(g) == (-3, 7)
    noisy = Grid.from_affine(10, 10, Affine(10.0, 0.0, 600000.0 + 1e-9, 0.0, -10.0, 4700020.0 - 1e-9), g.crs)
    assert noisy.offset_in(g) == (0, 0)
    half = Grid.from_affine(10, 10, g.affine @ Affine.translation(0.5, 0), g.crs)
    assert half.offset_in(g) is None  # Landsat pan-style half-pixel offset is not an integer relation
    other_res = g.zoom_out(2)
    assert other_res.offset_in(g) is None
    other_crs = Grid.from_affine(200, 300, g.affine, "EPSG:32632")
    assert other_crs.offset_in(g) is None
    assert g.same_as(Grid.from_dict(g.to_dict()))


def test_window_scaled_down_and_intersect():
    w = Window(-16, 48, 96, 96)
    assert w.scaled_down(4) == Window(-4, 12, 24, 24)
    with pytest.raises(ValueError):
        Window(2, 0, 8, 8).scaled_down(4)
    assert w.intersect(Window(0, 0, 200, 300)) == Window(0, 48, 80, 96)
    assert Window(0, 0, 4, 4).intersect(Window(4, 4, 2, 2)) is None
    assert Window.from_list(w.to_list()) == w


def test_bounds_and_res():
    g = s2_grid()
    assert g.bounds == (600000.0, 4698020.0, 603000.0, 4700020.0)
    assert g.res == (10.0, 10.0)
    assert g.is_north_up


def test_crs_string_canonical():
    assert crs_string("epsg:32719") == "EPSG:32719"
    assert crs_string(None) == ""
    assert crs_string("+proj=utm +zone=19 +south +datum=WGS84 +units=m +no_defs").startswith(("EPSG:", "PROJCRS", "PROJCS"))


@pytest.mark.parametrize("widths", [((0, 0), (2, 3), (0, 1)), ((0, 0), (7, 9), (5, 0)), ((0, 0), (0, 0), (0, 0))])
def test_pad_symmetric_matches_numpy_and_handles_wide_pads(widths):
    a = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    got = _pad_symmetric(a, widths)
    assert got.shape == (2, 4 + sum(widths[1]), 3 + sum(widths[2]))
    if all(w <= n for (lo, hi), n in zip(widths[1:], a.shape[1:]) for w in (lo, hi)):
        np.testing.assert_array_equal(got, np.pad(a, widths, mode="symmetric"))
    # the original sits where the pads say
    r, c = widths[1][0], widths[2][0]
    np.testing.assert_array_equal(got[:, r : r + 4, c : c + 3], a)
    # every value of a wide pad is one of the data's values of that band
    assert set(np.unique(got[0])) <= set(np.unique(a[0]))
