"""Every bad input gets a one-line InvalidInput naming the file and the problem, before anything
is written to the output path; inputs are never modified."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

import pipelines
from pipelines import JobConfig
from tiling.errors import InputWarning, InvalidInput

from conftest import shared_data_root  # noqa: E402

GEO = shared_data_root() / "geo"
#: every test here reads the real rasters: skipped cleanly (the fixture says why) without them
pytestmark = pytest.mark.usefixtures("shared_data")
S2 = GEO / "sentinel2_10m"
RGB = str(S2 / "rgb.tif")
CFG = JobConfig(method="bicubic", tile_size=64, halo=8, quicklook=False)


@pytest.fixture(scope="module")
def nir40(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("bad")
    with rasterio.open(S2 / "nir.tif") as ds:
        a = ds.read(1).astype(np.float64)
        prof = ds.profile
    lr = a.reshape(50, 4, 75, 4).mean(axis=(1, 3)).astype(np.float32)
    p = d / "nir_40m.tif"
    with rasterio.open(p, "w", **dict(prof, dtype="float32", width=75, height=50, nodata=float("nan"),
                                       transform=prof["transform"] @ rasterio.Affine.scale(4), blockxsize=16,
                                       blockysize=16)) as dst:
        dst.write(lr, 1)
    return str(p)


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expect_error(rgb: str, target: str, out: str, cfg: JobConfig, pattern: str) -> InvalidInput:
    before = {p: sha(p) for p in (rgb, target) if os.path.isfile(p)}
    with pytest.raises(InvalidInput, match=pattern) as ei:
        pipelines.superresolve(rgb, target, out, cfg)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 400
    assert not os.path.exists(out) or out in before  # nothing written to the output path
    assert {p: sha(p) for p in before} == before  # inputs untouched
    return ei.value


def test_missing_and_unreadable_files(nir40, tmp_path):
    expect_error(str(tmp_path / "nope.tif"), nir40, str(tmp_path / "o.tif"), CFG, r"RGB file .*nope\.tif: does not exist")
    expect_error(RGB, str(tmp_path / "gone.tif"), str(tmp_path / "o.tif"), CFG, r"target file .*gone\.tif: does not exist")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster\n")
    expect_error(RGB, str(junk), str(tmp_path / "o.tif"), CFG, r"target file .*junk\.tif: not a readable raster")
    expect_error(str(tmp_path), nir40, str(tmp_path / "o.tif"), CFG, r"RGB file .*: is not a regular file")


def test_no_crs_offers_assume_crs(nir40, tmp_path):
    e = expect_error(str(S2 / "red_band.nc"), nir40, str(tmp_path / "o.tif"), CFG, r"RGB file .*red_band\.nc: has no CRS")
    assert "--assume-crs EPSG:N" in str(e)
    expect_error(str(S2 / "red_band.nc"), nir40, str(tmp_path / "o.tif"), CFG.replace(assume_crs="not-a-crs"),
                 r"--assume-crs 'not-a-crs': not a CRS")


def test_non_overlapping_and_low_overlap(nir40, tmp_path):
    b10 = str(GEO / "landsat_marburg_30m" / "LC08_L1TP_195025_20130707_20170503_01_T1_B10.TIF")
    expect_error(RGB, b10, str(tmp_path / "o.tif"), CFG, r"target file .*B10\.TIF: footprint does not overlap")
    # a 6 x 6 LR-pixel clip of the 40 m NIR covers ~1% of the RGB: warn, still run
    with rasterio.open(nir40) as ds:
        prof = ds.profile
        clip = ds.read(1, window=((10, 16), (20, 26)))
        t = ds.window_transform(((10, 16), (20, 26)))
    small = tmp_path / "clip.tif"
    with rasterio.open(small, "w", **dict(prof, width=6, height=6, transform=t)) as dst:
        dst.write(clip, 1)
    with pytest.warns(InputWarning, match=r"clip\.tif: covers only 1\.0% of the RGB"):
        job = pipelines.prepare(RGB, str(small), str(tmp_path / "low.tif"), CFG)
    assert job.warnings and "covers only" in job.warnings[0]
    assert sum(not t.skip for t in job.plan.tiles) == 1  # only the tile under the clip has data


def test_wrong_band_counts(tmp_path):
    """The messages name the `cmsr run` options and show the form they take (1-based, commas)."""
    l7 = str(GEO / "landsat7_olinda" / "L7_ETMs.tif")
    dem = str(GEO / "landsat7_olinda" / "olinda_dem_utm25s.tif")
    expect_error(l7, dem, str(tmp_path / "o.tif"), CFG,
                 r"RGB file .*L7_ETMs\.tif: has 6 usable band\(s\), expected 1\.\.4 \(choose bands with --guide-bands\): "
                 r"1-based band numbers, comma-separated, e\.g\. --guide-bands 3,2,1$")
    expect_error(l7, dem, str(tmp_path / "o.tif"), CFG.replace(guide_bands=(3, 2, 9)),
                 r"L7_ETMs\.tif: has 6 band\(s\); --guide-bands \[3, 2, 9\] is out of range "
                 r"\(1-based band numbers 1\.\.6, comma-separated, e\.g\. --guide-bands 3,2,1\)")
    expect_error(l7, dem, str(tmp_path / "o.tif"), CFG.replace(guide_bands=(3, 2, 1), target_bands=(2,)),
                 r"olinda_dem_utm25s\.tif: has 1 band\(s\); --target-bands \[2\] is out of range .*e\.g\. --target-bands 1\)")
    # with bands chosen it plans (DEM CRS is a WKT equal in meaning to EPSG:31985)
    job = pipelines.prepare(l7, dem, str(tmp_path / "ok.tif"), CFG.replace(guide_bands=(3, 2, 1)))
    assert job.scale == 3 and job.guide_bands == (3, 2, 1)


def test_all_nodata_target(nir40, tmp_path):
    empty = tmp_path / "empty.tif"
    shutil.copyfile(nir40, empty)
    with rasterio.open(empty, "r+") as ds:
        ds.write(np.full((1, 50, 75), np.nan, np.float32))
    expect_error(RGB, str(empty), str(tmp_path / "o.tif"), CFG, r"target file .*empty\.tif: all nodata")


@pytest.mark.parametrize("scale,pattern", [(1, r"--scale 1: out of range"), (17, r"--scale 17: out of range"),
                                           (2.5, r"--scale 2\.5: must be an integer")])
def test_bad_scale(nir40, tmp_path, scale, pattern):
    expect_error(RGB, nir40, str(tmp_path / "o.tif"), CFG.replace(scale=scale), pattern)


def test_gsd_ratio_out_of_range(tmp_path):
    expect_error(RGB, str(S2 / "nir.tif"), str(tmp_path / "o.tif"), CFG,
                 r"target file .*nir\.tif: ground sample distance ratio to the RGB is 1\.00 .*--scale N")


def test_output_equal_to_input_or_unwritable(nir40, tmp_path, monkeypatch):
    copy = tmp_path / "rgb_copy.tif"
    shutil.copyfile(RGB, copy)
    expect_error(str(copy), nir40, str(copy), CFG, r"output file .*rgb_copy\.tif: is the same file as input")
    expect_error(RGB, nir40, nir40, CFG, r"output file .*nir_40m\.tif: is the same file as input")
    expect_error(RGB, nir40, str(tmp_path / "no" / "such" / "o.tif"), CFG, r"output file .*o\.tif: directory .* does not exist")
    ro = tmp_path / "readonly"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if os.fspath(p) == str(ro) else real_access(p, m))
    expect_error(RGB, nir40, str(ro / "o.tif"), CFG, r"output file .*o\.tif: directory .*readonly is not writable")


def test_no_warning_for_clean_inputs(nir40, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipelines.prepare(RGB, nir40, str(tmp_path / "clean.tif"), CFG)


def test_scale_above_core_limit(nir40, tmp_path):
    from cmsr.api import MAX_SCALE

    if MAX_SCALE >= 16:
        pytest.skip("the core supports every pipeline scale")
    expect_error(RGB, nir40, str(tmp_path / "o.tif"), CFG.replace(scale=MAX_SCALE + 1),
                 rf"^--scale {MAX_SCALE + 1}: out of range \(must be 2\.\.{MAX_SCALE}\)$")
    # a custom tile function is not bound by the core's limit
    job = pipelines.prepare(RGB, nir40, str(tmp_path / "ok.tif"),
                            CFG.replace(scale=MAX_SCALE + 1, tile_fn="pipelines.tilefn:bicubic_tile_fn"))
    assert job.scale == MAX_SCALE + 1


def test_rgb_fully_transparent(nir40, tmp_path):
    """An RGB whose every pixel equals its declared nodata (an empty export): refused, not a NaN COG."""
    with rasterio.open(RGB) as ds:
        prof = ds.profile
        data = ds.read()
    empty = tmp_path / "rgb_empty.tif"
    with rasterio.open(empty, "w", **dict(prof, nodata=7)) as dst:
        dst.write(np.full_like(data, 7))
    expect_error(str(empty), nir40, str(tmp_path / "o.tif"), CFG, r"RGB file .*rgb_empty\.tif: no pixel is valid in both")
