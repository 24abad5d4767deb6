"""Inputs that used to be processed silently wrong, or refused with a traceback (issue 11):
undeclared constant borders, all tiles skipped, truncated/damaged files, rotated RGB grids,
non-integer or anisotropic GSD ratios, one scale range, GCP-only georeferencing.

Inputs are made from the bundled real sample (``flows/sample/``, Sentinel-2 RGB at 10 m and
NIR at 40 m) and the real rasters under ``shared/data/geo``; only the geometry or the nodata
convention is changed, as the exports operators meet do."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

import pipelines
from flows.cli import app
from pipelines import JobConfig
from tiling import rasters
from tiling.errors import InputWarning, InvalidInput

CFG = JobConfig(method="bicubic", tile_size=64, halo=8, quicklook=False)
runner = CliRunner()


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write(path: Path, data: np.ndarray, profile: dict, **changes) -> str:
    """``data`` (bands, h, w) as a GeoTIFF with ``profile`` updated by ``changes``."""
    prof = dict(profile, count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=str(data.dtype))
    prof.update(changes)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return str(path)


def read(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def expect_refusal(rgb: str, target: str, out: str, cfg: JobConfig, pattern: str) -> str:
    """prepare refuses with one line matching ``pattern``; nothing at ``out``, inputs untouched."""
    before = {p: sha(p) for p in (rgb, target)}
    with pytest.raises(InvalidInput, match=pattern) as ei:
        pipelines.prepare(rgb, target, out, cfg)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 500, msg
    assert not os.path.exists(out)
    assert {p: sha(p) for p in before} == before
    return msg


def one_error_line(r, fragment: str, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in r.output + r.stderr
    return lines[0]


def prepare_warnings(rgb: str, target: str, out: str, cfg: JobConfig = CFG):
    """(job, the InputWarning messages prepare emitted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = pipelines.prepare(rgb, target, out, cfg)
    return job, [str(w.message) for w in caught if issubclass(w.category, InputWarning)]


def damage_block(path: str, row: int, col: int) -> None:
    """Overwrite block (row, col) of band 1's data in place (same size: the file still opens)."""
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write((bytes(range(256)) * (size // 256 + 1))[:size])


def footprint(h: int, w: int) -> np.ndarray:
    """An irregular survey footprint (True inside) that stays off the raster's edge, as an
    orthomosaic's does: a tilted ellipse covering about half the raster."""
    rows, cols = np.mgrid[0:h, 0:w]
    y, x = (rows - h / 2) / (h * 0.42), (cols - w / 2) / (w * 0.45)
    return (x * 0.9 + y * 0.3) ** 2 + (y * 0.95 - x * 0.2) ** 2 < 1.0


# ---------------------------------------------------------------- 4: every tile below --min-valid


def test_target_with_one_valid_pixel_is_refused(sample, tmp_path):
    nir, prof = read(sample["target"])
    one = np.full_like(nir, np.nan)
    one[0, 20, 30] = nir[0, 20, 30]
    p = write(tmp_path / "one_pixel.tif", one, prof)
    msg = expect_refusal(str(sample["rgb"]), p, str(tmp_path / "o.tif"), CFG, r"target file .*one_pixel\.tif")
    assert "min_valid_fraction 0.05" in msg and "--min-valid" in msg
    assert re.search(r"valid in [0-9.]+% ", msg), msg
    # with the threshold at 0 the one tile holding the pixel runs
    job = pipelines.prepare(str(sample["rgb"]), p, str(tmp_path / "o.tif"), CFG.replace(min_valid_fraction=0.0))
    assert sum(not t.skip for t in job.plan.tiles) == 1


# ---------------------------------------------------------------- 8: truncated / damaged files


@pytest.fixture(scope="module")
def landsat(shared_data) -> dict[str, str]:
    l8 = shared_data / "geo" / "landsat_marburg_30m"
    return {"pan": str(l8 / "LC08_L1TP_195025_20130707_20170503_01_T1_B8.TIF"),
            "b10": str(l8 / "LC08_L1TP_195025_20130707_20170503_01_T1_B10.TIF")}


def truncated(src: str, dst: Path, share: float = 0.6) -> str:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * share)])
    return str(dst)


def test_truncated_geotiff_is_one_line(landsat, tmp_path):
    pan = truncated(landsat["pan"], tmp_path / "pan_cut.tif")
    b10 = truncated(landsat["b10"], tmp_path / "b10_cut.tif")
    expect_refusal(pan, landsat["b10"], str(tmp_path / "o.tif"), CFG,
                   r"^RGB file .*pan_cut\.tif: unreadable \(truncated or damaged\?\)")
    expect_refusal(landsat["pan"], b10, str(tmp_path / "o.tif"), CFG,
                   r"^target file .*b10_cut\.tif: unreadable \(truncated or damaged\?\)")
    for rgb, target, name in ((pan, landsat["b10"], "pan_cut.tif"), (landsat["pan"], b10, "b10_cut.tif")):
        r = runner.invoke(app, ["plan", rgb, target, "--method", "bp"])
        one_error_line(r, f"{name}: unreadable (truncated or damaged?)")


@pytest.mark.parametrize("role,shift", [("target", 0.0), ("target", 0.5), ("RGB", 0.0)])
def test_damaged_block_inside_the_file_is_one_line(sample, tmp_path, role, shift):
    """A block in the middle of the file overwritten (the last block intact): found when the
    pixels are read (the target copied or warped onto the LR grid, the RGB sampled for the
    survey statistics), still one line naming the file."""
    data, prof = read(sample["target" if role == "target" else "rgb"])
    p = write(tmp_path / f"{role}_blocks.tif", data, prof, tiled=True, blockxsize=16, blockysize=16,
              compress="deflate", transform=prof["transform"] @ Affine.translation(shift, shift))
    damage_block(p, 1, 1)
    rasters.inspect(p, role)  # metadata and the last block are fine
    rgb, target = (str(sample["rgb"]), p) if role == "target" else (p, str(sample["target"]))
    expect_refusal(rgb, target, str(tmp_path / "o.tif"), CFG,
                   rf"^{role} file .*{role}_blocks\.tif: unreadable \(truncated or damaged\?\): .*IReadBlock failed")


# ---------------------------------------------------------------- 10: rotated RGB


def test_rotated_rgb_says_the_output_grid_is_north_up(sample, tmp_path):
    rgb, prof = read(sample["rgb"])
    t = Affine.translation(601500.0, 4699020.0) @ Affine.rotation(30) @ Affine.translation(-1500, 1000) @ Affine.scale(10, -10)
    rot = write(tmp_path / "rgb_rotated.tif", rgb, prof, transform=t)
    job, msgs = prepare_warnings(rot, str(sample["target"]), str(tmp_path / "o.tif"))
    hits = [m for m in msgs if "rgb_rotated.tif" in m and "north-up" in m]
    assert len(hits) == 1, msgs
    assert "10 m" in hits[0] and "not the RGB's own grid" in hits[0]
    assert hits[0] in job.warnings


# ---------------------------------------------------------------- 11: non-integer / anisotropic ratios


def _nir_on(sample, path: Path, res_x: float, res_y: float) -> str:
    """The real 10 m NIR truth averaged onto a north-up grid of ``res_x`` x ``res_y`` m."""
    from rasterio.warp import Resampling, reproject

    with rasterio.open(Path(sample["truth"])) as ds:
        nir, prof = ds.read(1).astype(np.float32), ds.profile
    t0 = prof["transform"]
    w, h = int(3000 // res_x), int(2000 // res_y)
    dst_t = Affine(res_x, 0, t0.c, 0, -res_y, t0.f)
    out = np.full((h, w), np.nan, np.float32)
    reproject(nir, out, src_transform=t0, src_crs=prof["crs"], dst_transform=dst_t, dst_crs=prof["crs"],
              resampling=Resampling.average)
    return write(path, out[None], prof, dtype="float32", nodata=float("nan"), transform=dst_t, tiled=False)


def test_non_integer_gsd_ratio_warns_with_ratio_and_scale(sample, tmp_path):
    t15 = _nir_on(sample, tmp_path / "nir_15m.tif", 15, 15)
    job, msgs = prepare_warnings(str(sample["rgb"]), t15, str(tmp_path / "o.tif"))
    hits = [m for m in msgs if "nir_15m.tif" in m]
    assert len(hits) == 1 and "1.50" in hits[0] and "scale 2" in hits[0] and "--scale N" in hits[0], msgs
    assert job.scale == 2 and hits[0] in job.warnings
    # an explicit --scale is the user's choice: no warning
    _, msgs = prepare_warnings(str(sample["rgb"]), t15, str(tmp_path / "o2.tif"), CFG.replace(scale=2))
    assert not msgs


def test_anisotropic_pixels_warn_with_both_ratios(sample, tmp_path):
    t = _nir_on(sample, tmp_path / "nir_40x20m.tif", 40, 20)
    job, msgs = prepare_warnings(str(sample["rgb"]), t, str(tmp_path / "o.tif"))
    hits = [m for m in msgs if "nir_40x20m.tif" in m]
    assert len(hits) == 1, msgs
    assert "4.00" in hits[0] and "2.00" in hits[0] and f"scale {job.scale}" in hits[0] and "--scale N" in hits[0]


# ---------------------------------------------------------------- 12: one scale range


def test_ratio_20_states_the_supported_range_once(sample, tmp_path):
    t = _nir_on(sample, tmp_path / "nir_200m.tif", 200, 200)
    msg = expect_refusal(str(sample["rgb"]), t, str(tmp_path / "o.tif"), CFG, r"nir_200m\.tif: .*ratio .* 20\.00")
    assert "2..8" in msg and "16" not in msg and msg.count("--scale") == 1, msg
    r = runner.invoke(app, ["plan", str(sample["rgb"]), t, "--method", "bp"])
    line = one_error_line(r, "2..8")
    assert "16" not in line
    # a custom tile function is not bound by the core: tiling's own limit
    msg = expect_refusal(str(sample["rgb"]), t, str(tmp_path / "o.tif"),
                         CFG.replace(tile_fn="pipelines.tilefn:bicubic_tile_fn"), r"nir_200m\.tif")
    assert "2..16" in msg


def test_scale_override_above_the_core_is_one_message(sample, tmp_path):
    msg = expect_refusal(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "o.tif"), CFG.replace(scale=9),
                         r"--scale 9: out of range")
    assert "2..8" in msg and "16" not in msg


# ---------------------------------------------------------------- 13: GCP-only georeferencing


def test_gcp_georeferenced_raster_says_warp_first(sample, tmp_path):
    from rasterio.control import GroundControlPoint

    nir, prof = read(sample["target"])
    t = prof["transform"]
    gcps = [GroundControlPoint(row=r, col=c, x=(t @ (c, r))[0], y=(t @ (c, r))[1])
            for r in (0, 25, 50) for c in (0, 37, 75)]
    p = tmp_path / "thermal_gcps.tif"
    prof = {k: v for k, v in prof.items() if k not in ("transform", "crs")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(p, "w", **prof) as dst:
            dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(32719))
            dst.write(nir)
    with rasterio.open(p) as ds:
        assert ds.gcps[0] and ds.transform.is_identity  # really GCP-only
    for cfg in (CFG, CFG.replace(assume_crs="EPSG:32719")):
        msg = expect_refusal(str(sample["rgb"]), str(p), str(tmp_path / "o.tif"), cfg,
                             r"^target file .*thermal_gcps\.tif: georeferenced by 9 ground control points")
        assert "gdalwarp -tps" in msg and "--assume-crs" not in msg
