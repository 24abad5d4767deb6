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
from tiling import borders, rasters
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


# ---------------------------------------------------------------- 3: undeclared constant borders


@pytest.fixture(scope="module")
def zero_border(sample, tmp_path_factory) -> dict[str, str]:
    """The real sample with the outside of a survey footprint set to 0 and no nodata declared:
    a target (float, like a degC thermal export) and an RGB without alpha."""
    d = tmp_path_factory.mktemp("zero_border")
    nir, nprof = read(sample["target"])
    inside_lr = footprint(50, 75)
    t = np.where(inside_lr, nir[0], 0).astype(np.float32)[None]
    rgb, rprof = read(sample["rgb"])
    inside_hr = np.repeat(np.repeat(inside_lr, 4, 0), 4, 1)
    r = np.where(inside_hr, rgb, 0).astype(rgb.dtype)
    return {
        "target": write(d / "thermal_zero_border.tif", t, nprof, nodata=None),
        "rgb": write(d / "rgb_zero_border.tif", r, rprof, nodata=None),
        "inside_lr": inside_lr, "inside_hr": inside_hr,
    }


def test_target_zero_border_without_nodata_warns_naming_the_option(zero_border, sample, tmp_path):
    job, msgs = prepare_warnings(str(sample["rgb"]), zero_border["target"], str(tmp_path / "o.tif"))
    hits = [m for m in msgs if "thermal_zero_border.tif" in m]
    assert len(hits) == 1, msgs
    m = hits[0]
    share = 100 * (1 - zero_border["inside_lr"].mean())
    got = float(re.search(r"fills about (\d+)% of the raster", m).group(1))  # type: ignore[union-attr]
    assert abs(got - share) < 8, (m, share)
    assert "--target-nodata 0" in m and "no nodata" in m
    assert m in job.warnings  # also listed in the job (-> the report, the CLI's stderr)


def test_declared_target_nodata_masks_the_border(zero_border, sample, tmp_path):
    cfg = CFG.replace(target_nodata=0.0)
    job, msgs = prepare_warnings(str(sample["rgb"]), zero_border["target"], str(tmp_path / "o.tif"), cfg)
    assert not msgs and not job.warnings
    assert job.target.nodata_value == 0.0
    with rasterio.open(job.target_lr) as ds:
        lr = ds.read(1)
    np.testing.assert_array_equal(np.isfinite(lr), zero_border["inside_lr"])
    outs = pipelines.superresolve(str(sample["rgb"]), zero_border["target"], str(tmp_path / "o.tif"), cfg)
    with rasterio.open(outs.cog) as ds:
        out = ds.read(1)
    nir = read(sample["target"])[0][0][zero_border["inside_lr"]]
    assert not np.isfinite(out[~zero_border["inside_hr"]]).any()
    # no ringing towards a fake 0 next to the edge: the output stays in the data's own range
    lo, hi = float(nir.min()), float(nir.max())
    assert lo - 0.1 * (hi - lo) < np.nanmin(out) and np.nanmax(out) < hi + 0.1 * (hi - lo)


def test_rgb_black_border_without_alpha_warns_and_rgb_nodata_masks_it(zero_border, sample, tmp_path):
    job, msgs = prepare_warnings(zero_border["rgb"], str(sample["target"]), str(tmp_path / "o.tif"))
    hits = [m for m in msgs if "rgb_zero_border.tif" in m]
    assert len(hits) == 1 and "--rgb-nodata 0" in hits[0] and hits[0].startswith("RGB file"), msgs
    cfg = CFG.replace(rgb_nodata=0)
    outs = pipelines.superresolve(zero_border["rgb"], str(sample["target"]), str(tmp_path / "o2.tif"), cfg)
    job = pipelines.load_job(str(tmp_path / "o2.tif.work" / "job.json"))
    assert not job.warnings and job.rgb.nodata_value == 0.0
    with rasterio.open(outs.cog) as ds:
        out = ds.read(1)
    assert not np.isfinite(out[~zero_border["inside_hr"]]).any()
    assert np.isfinite(out[zero_border["inside_hr"]]).mean() > 0.99


def test_clean_and_alpha_masked_inputs_do_not_warn(sample, tmp_path):
    """No false alarm on the real sample, nor on an ODM-style RGBA whose outside is black but
    transparent."""
    _, msgs = prepare_warnings(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "a.tif"))
    assert not msgs
    rgb, prof = read(sample["rgb"])
    inside = np.repeat(np.repeat(footprint(50, 75), 4, 0), 4, 1)
    rgba = np.concatenate([np.where(inside, rgb, 0), np.where(inside, 65535, 0)[None]]).astype(np.uint16)
    p = write(tmp_path / "odm_rgba.tif", rgba, prof, photometric="RGB", ALPHA="YES")
    _, msgs = prepare_warnings(p, str(sample["target"]), str(tmp_path / "b.tif"))
    assert not msgs


def test_border_check_reads_strips_not_the_raster(tmp_path):
    """The check decodes only the outer edges and a few rows: a damaged block away from them
    (which a full read would hit) is never touched, so a mosaic of any size costs a few strips."""
    rows, cols = np.mgrid[0:4096, 0:512]
    data = ((rows * 7 + cols * 3) % 251).astype(np.uint8)[None]
    prof = dict(driver="GTiff", crs="EPSG:32719", transform=Affine(1, 0, 600000, 0, -1, 4700000), tiled=True,
                blockxsize=16, blockysize=16, compress="deflate")
    p = write(tmp_path / "tall.tif", data, prof)
    sampled = {int(r) // 16 for r in np.linspace(0, 4095, borders.SAMPLE_ROWS).round()}
    block_row = next(r for r in range(1, 256) if r not in sampled)
    damage_block(p, block_row, 10)
    with pytest.raises(rasterio.errors.RasterioIOError):
        with rasterio.open(p) as ds:
            ds.read()
    assert borders.constant_border(rasters.inspect(p, "target"), (1,)) is None


@pytest.mark.parametrize("flag", ["--target-nodata", "--rgb-nodata"])
def test_nodata_options_on_run_plan_submit(flag, zero_border, sample):
    import typer.main

    cmds = typer.main.get_command(app).commands
    helps = set()
    for c in ("run", "plan", "submit"):
        opt = next(p for p in cmds[c].params if flag in p.opts)
        helps.add(opt.help)
    assert len(helps) == 1
    rgb = zero_border["rgb"] if flag == "--rgb-nodata" else str(sample["rgb"])
    target = zero_border["target"] if flag == "--target-nodata" else str(sample["target"])
    r = runner.invoke(app, ["plan", rgb, target, "--method", "bicubic", "--tile-size", "64", "--halo", "8"])
    assert r.exit_code == 0, r.output
    assert f"{flag} 0" in r.stderr
    r = runner.invoke(app, ["plan", rgb, target, "--method", "bicubic", "--tile-size", "64", "--halo", "8",
                            flag, "0"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr


def test_nodata_options_reach_the_job_from_run_and_submit(monkeypatch, sample, tmp_path):
    """``run`` and ``submit`` hand the declared values to the job's config (engine stubbed)."""
    import flows.submit
    import flows.survey

    seen: list = []

    class Done:
        def result(self, raise_on_failure=True):
            return {"cog": "o.tif", "quicklook": None, "report": "r.json", "processed": 0, "reused": 0}

    monkeypatch.setattr(flows.survey, "run_survey", lambda rgb, target, out, config, options, on_cluster=None, notice=None:
                        seen.append(config.to_dict()) or Done())
    monkeypatch.setattr(flows.submit, "to_scheduler", lambda addr, rgb, target, out, config:
                        seen.append(config) or "run-id")
    common = [str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / "o.tif"), "--target-nodata", "-9999",
              "--rgb-nodata", "255"]
    r = runner.invoke(app, ["run", *common, "--method", "bicubic", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["submit", *common, "--scheduler", "tcp://127.0.0.1:1"])
    assert r.exit_code == 0, r.output
    assert [(c["target_nodata"], c["rgb_nodata"]) for c in seen] == [(-9999.0, 255.0)] * 2
    r = runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), "--target-nodata", "nan"])
    one_error_line(r, "target_nodata nan: NaN pixels are always nodata")


def test_nodata_option_not_representable_is_one_line(shared_data, tmp_path):
    l8 = shared_data / "geo" / "landsat_marburg_30m"
    pan, b10 = str(l8 / "LC08_L1TP_195025_20130707_20170503_01_T1_B8.TIF"), str(
        l8 / "LC08_L1TP_195025_20130707_20170503_01_T1_B10.TIF")
    expect_refusal(pan, b10, str(tmp_path / "o.tif"), CFG.replace(target_nodata=0.5),
                   r"--target-nodata 0\.5: target file .*B10\.TIF holds int16 values")
    expect_refusal(pan, b10, str(tmp_path / "o.tif"), CFG.replace(rgb_nodata=40000),
                   r"--rgb-nodata 40000: RGB file .*B8\.TIF holds int16 values")


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
