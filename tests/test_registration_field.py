"""The survey registration field on synthetic tile grids (pure numpy, no data, no torch): exact
invariants of ``pipelines.registration_field`` and the affine <-> shift conversion."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import SurveyRegistration
from pipelines.registration_field import (MEASURED, OUTLIER, SKIPPED, UNKNOWN, RegistrationGrid, field_on_grid,
                                          regularise, zoom_and_rotation)


def grid(shift: np.ndarray, linear: np.ndarray | None = None, usable: np.ndarray | None = None,
         active: np.ndarray | None = None) -> RegistrationGrid:
    rows, cols = shift.shape[:2]
    lin = np.broadcast_to(np.eye(2), (rows, cols, 2, 2)).copy() if linear is None else linear
    ok = np.isfinite(shift).all(-1) if usable is None else usable
    return RegistrationGrid(shift.astype(np.float64), lin, ok, np.ones((rows, cols), bool) if active is None else active)


def constant(rows: int, cols: int, dx: float, dy: float) -> np.ndarray:
    return np.tile(np.array([dx, dy]), (rows, cols, 1))


def test_a_constant_field_is_unchanged_bit_for_bit() -> None:
    linear = np.tile(np.array([[1.004, -0.002], [0.003, 0.997]]), (4, 5, 1, 1))
    g = grid(constant(4, 5, 1.3, -0.7), linear)
    f = regularise(g)
    assert np.array_equal(f.shift, g.shift) and np.array_equal(f.linear, g.linear)
    assert (f.status == MEASURED).all() and not f.reasons


def test_one_tile_alone_keeps_its_own_estimate() -> None:
    g = grid(np.array([[[0.37, -1.91]]]), np.array([[[[1.01, 0.002], [-0.004, 0.99]]]]))
    f = regularise(g)
    assert np.array_equal(f.shift, g.shift) and np.array_equal(f.linear, g.linear)


def test_one_outlier_is_replaced_by_its_neighbours() -> None:
    shift = constant(5, 5, 0.8, 0.2)
    shift[2, 2] = (3.5, -2.0)  # a tile fooled by a repetitive pattern
    f = regularise(grid(shift))
    assert f.status[2, 2] == OUTLIER and "neighbours" in f.reasons[(2, 2)]
    assert (f.status == OUTLIER).sum() == 1
    np.testing.assert_array_equal(f.shift, constant(5, 5, 0.8, 0.2))


def test_small_differences_are_no_outliers_and_a_gradient_survives_smoothing() -> None:
    ys, xs = np.mgrid[0:4, 0:6]
    shift = np.stack([0.1 * xs, 0.05 * ys], -1).astype(np.float64)  # a slowly varying misalignment
    shift[1, 3] += (0.3, -0.2)  # noise below outlier_floor_px
    f = regularise(grid(shift))
    assert (f.status == MEASURED).all()
    inner = (slice(1, 3), slice(1, 5))  # away from the edges a linear field is a fixed point of the Gaussian
    np.testing.assert_allclose(f.shift[inner][..., 0], 0.1 * xs[inner], atol=0.1)
    assert abs(f.shift[1, 3, 0] - 0.3) < 0.5 * 0.3  # the noisy tile's error is mostly smoothed away


def test_a_nine_percent_zoom_is_rejected_even_alone() -> None:
    linear = np.tile(np.eye(2), (3, 3, 1, 1))
    linear[1, 1] = 1.09 * np.eye(2)
    shift = constant(3, 3, -0.4, 0.6)
    f = regularise(grid(shift, linear))
    assert f.status[1, 1] == OUTLIER and "zoom 9.0%" in f.reasons[(1, 1)]
    np.testing.assert_array_equal(f.linear[1, 1], np.eye(2))
    np.testing.assert_array_equal(f.shift[1, 1], [-0.4, 0.6])
    alone = regularise(grid(np.array([[[0.0, 0.0]]]), 1.09 * np.eye(2)[None, None]))
    assert alone.status[0, 0] == OUTLIER and not np.isfinite(alone.shift).any()
    assert zoom_and_rotation(np.array([[np.cos(0.1), -np.sin(0.1)], [np.sin(0.1), np.cos(0.1)]]))[1] == pytest.approx(
        np.degrees(0.1))


def test_unknown_tiles_are_filled_from_neighbours_ring_by_ring() -> None:
    shift = constant(5, 5, 1.0, -1.0)
    usable = np.ones((5, 5), bool)
    usable[1:4, 1:4] = False  # a lake: nine tiles without texture
    shift[1:4, 1:4] = np.nan
    f = regularise(grid(shift, usable=usable))
    assert (f.status[1:4, 1:4] == UNKNOWN).all()
    np.testing.assert_array_equal(f.shift, constant(5, 5, 1.0, -1.0))


def test_skipped_tiles_get_nothing_and_nothing_known_gives_nan() -> None:
    active = np.ones((2, 3), bool)
    active[0, 0] = False
    shift = constant(2, 3, 0.5, 0.5)
    f = regularise(grid(shift, active=active))
    assert f.status[0, 0] == SKIPPED and not np.isfinite(f.shift[0, 0]).any()
    blind = regularise(grid(constant(2, 2, 0.5, 0.5), usable=np.zeros((2, 2), bool)))
    assert (blind.status == UNKNOWN).all() and not np.isfinite(blind.shift).any()


def test_without_smoothing_every_tile_keeps_its_own() -> None:
    shift = constant(3, 3, 0.0, 0.0)
    shift[1, 1] = (3.0, 3.0)
    f = regularise(grid(shift), SurveyRegistration(smooth=False))
    assert np.array_equal(f.shift, shift) and (f.status == MEASURED).all()


def test_the_field_on_the_lr_grid_interpolates_between_tile_centres() -> None:
    values = np.zeros((2, 2, 2))
    values[:, 1, 0] = 4.0  # dx 0 in the west column of tiles, 4 in the east
    known = np.ones((2, 2), bool)
    known[1, 0] = False
    out = field_on_grid(values, known, 8.0, range(0, 16), 16)
    assert out.shape == (2, 16, 16)
    assert out[0, 0, 0] == 0.0 and out[0, 0, 15] == 4.0  # beyond the outer centres: the nearest value
    np.testing.assert_allclose(out[0, 0, 4:12], (np.arange(4, 12) + 0.5 - 4) / 8 * 4)
    assert np.isnan(out[:, 8:, :8]).all() and np.isfinite(out[:, :8, :]).all()


def test_affine_and_shift_convert_both_ways() -> None:
    from pipelines.job.registration import affine_to_shift, shift_to_affine

    affine = np.array([[1.01, 0.002, 0.1875], [-0.003, 0.995, -0.0625]], dtype=np.float32)
    shift, linear = affine_to_shift(affine, (32, 48))
    np.testing.assert_allclose(shift, [0.1875 * 24, -0.0625 * 16])
    np.testing.assert_array_equal(shift_to_affine(shift, linear, (32, 48)), affine)
