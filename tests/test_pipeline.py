"""The job on real Sentinel-2 data: 40 m NIR (4x4 mean of the real 10 m NIR) + 10 m RGB.

Proves: per-tile == single-tile == whole-image (seam-free), the output grid is exactly the RGB
grid, the COG is valid, LR values are preserved under the area model, resume does only missing
tiles, feathering, multi-band targets; every method and custom tile function takes the one batch
path (``cmsr.run_many`` for the core); result files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rio_cogeo.cogeo import cog_validate

import pipelines
from pipelines import JobConfig, bicubic_tile_fn
from tiling.output import area_pool

from conftest import shared_data_root  # noqa: E402

DATA = shared_data_root() / "geo" / "sentinel2_10m"
#: every test here reads the real rasters: skipped cleanly (the fixture says why) without them
pytestmark = pytest.mark.usefixtures("shared_data")


@pytest.fixture(scope="module")
def s2(tmp_path_factory) -> dict[str, str]:
    """rgb.tif (10 m) as is; nir_40m.tif = mean of 4x4 blocks of the real nir.tif, float32."""
    d = tmp_path_factory.mktemp("s2")
    with rasterio.open(DATA / "nir.tif") as ds:
        nir = ds.read(1).astype(np.float64)
        prof = ds.profile
    lr = area_pool(nir, 4).astype(np.float32)
    p = dict(prof, dtype="float32", width=lr.shape[1], height=lr.shape[0], nodata=float("nan"),
             transform=prof["transform"] @ Affine.scale(4), blockxsize=16, blockysize=16)
    path = d / "nir_40m.tif"
    with rasterio.open(path, "w", **p) as dst:
        dst.write(lr, 1)
        dst.set_band_description(1, "nir")
    return {"rgb": str(DATA / "rgb.tif"), "nir40": str(path), "nir10": str(DATA / "nir.tif"), "dir": str(d)}


def read(path: str) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32), {"transform": ds.transform, "crs": ds.crs, "profile": ds.profile,
                                              "tags": ds.tags(), "nodata": ds.nodata, "units": ds.units,
                                              "descriptions": ds.descriptions}


def whole_image_bicubic(lr: np.ndarray, s: int) -> np.ndarray:
    from cmsr.resize import upsample_torch

    return upsample_torch(torch.from_numpy(lr.astype(np.float64)), s).numpy().astype(np.float32)


def seam_ratio(img: np.ndarray, T: int, s: int = 4) -> float:
    """Mean |difference| between neighbouring pixels across tile borders / across the other
    LR-pixel borders (every s-th pair; tile borders are LR-pixel borders too). 1 = no seam."""
    dx = np.abs(np.diff(img, axis=1))
    dy = np.abs(np.diff(img, axis=0))
    lx = np.zeros(dx.shape[1], bool)
    lx[s - 1 :: s] = True
    ly = np.zeros(dy.shape[0], bool)
    ly[s - 1 :: s] = True
    bx = np.zeros(dx.shape[1], bool)
    bx[T - 1 :: T] = True
    by = np.zeros(dy.shape[0], bool)
    by[T - 1 :: T] = True
    across = np.concatenate([dx[:, bx].ravel(), dy[by, :].ravel()])
    inside = np.concatenate([dx[:, lx & ~bx].ravel(), dy[ly & ~by, :].ravel()])
    return float(np.nanmean(across) / np.nanmean(inside))


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean((a.astype(np.float64) - b) ** 2)))


def test_bicubic_tiles_equal_single_tile_and_whole_image(s2, tmp_path):
    cfg = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False)
    tiled = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "tiled.tif"), cfg, tile_fn=bicubic_tile_fn)
    single = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "single.tif"),
                                    cfg.replace(tile_size=512), tile_fn=bicubic_tile_fn)
    a, meta = read(tiled.cog)
    b, _ = read(single.cog)
    lr, _ = read(s2["nir40"])
    whole = whole_image_bicubic(lr[0], 4)
    gt, _ = read(s2["nir10"])
    lo, hi = json.load(open(tiled.report))["target_range"][0]
    # seam-free: per-tile == single tile (centre crop and everywhere), in normalised units
    c = (slice(16, -16), slice(16, -16))
    assert np.max(np.abs(a[0][c] - b[0][c])) / (hi - lo) < 1e-4
    assert np.max(np.abs(a[0] - whole)) / (hi - lo) < 1e-4
    assert abs(rmse(a[0], gt[0]) - rmse(whole, gt[0])) < 1e-3
    assert abs(seam_ratio(a[0], 64) - seam_ratio(whole, 64)) < 0.01
    assert 0.9 < seam_ratio(a[0], 64) < 1.1  # tile borders look like any other LR-pixel border
    # the report carries the same seam metric, measured while stitching
    assert abs(json.load(open(tiled.report))["totals"]["seam_ratio"] - seam_ratio(a[0], 64)) < 1e-6
    # output on exactly the RGB's grid
    with rasterio.open(s2["rgb"]) as ds:
        assert meta["transform"] == ds.transform and meta["crs"] == ds.crs
        assert a.shape[1:] == (ds.height, ds.width)
    assert np.isnan(meta["nodata"]) and meta["profile"]["dtype"] == "float32"
    assert meta["profile"]["blockxsize"] == 512 or meta["profile"]["width"] < 512
    valid, errors, _ = cog_validate(tiled.cog, quiet=True)
    assert valid, errors
    tags = meta["tags"]
    assert tags["CMSR_SCALE"] == "4" and tags["CMSR_TILE_SIZE"] == "64" and tags["CMSR_HALO"] == "16"
    assert tags["CMSR_INPUT_TARGET_SHA256"] == pipelines.load_job(str(tmp_path / "tiled.tif.work" / "job.json")).checksums[
        os.path.abspath(s2["nir40"])]
    assert meta["descriptions"] == ("nir",)


def area_projection_tile_fn(target, guide, scale, ctx):
    """Bicubic then the exact area back-projection: area_pool_s(result) == target."""
    up = bicubic_tile_fn(target, guide, scale, ctx)
    resid = target - area_pool(up.astype(np.float64), scale)
    return (up + np.repeat(np.repeat(resid, scale, 0), scale, 1)).astype(np.float32)


def test_temperatures_preserved_and_feather(s2, tmp_path):
    """area_pool_s(output) == LR wherever valid: the LR grid is exactly the HR grid zoomed out."""
    cfg = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False)
    core = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "core.tif"), cfg, tile_fn=area_projection_tile_fn)
    out, _ = read(core.cog)
    lr, _ = read(s2["nir40"])
    d = np.abs(area_pool(out[0].astype(np.float64), 4) - lr[0])
    assert np.nanmax(d) < 1e-3 * (lr.max() - lr.min())
    rep = json.load(open(core.report))
    assert rep["totals"]["consistency_max"] < 1e-2
    # feathering of (identical-in-the-overlap) bicubic tiles changes nothing; of projected tiles, little
    fb = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "fb.tif"),
                                cfg.replace(stitch="feather"), tile_fn=bicubic_tile_fn)
    f, _ = read(fb.cog)
    whole = whole_image_bicubic(lr[0], 4)
    assert np.max(np.abs(f[0] - whole)) < 1e-3


def test_resume_runs_only_missing_tiles(s2, tmp_path):
    calls: list[int] = []

    def counting(target, guide, scale, ctx):
        calls.append(ctx.tile_index)
        return bicubic_tile_fn(target, guide, scale, ctx)

    out = str(tmp_path / "r.tif")
    cfg = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False)
    job = pipelines.prepare(s2["rgb"], s2["nir40"], out, cfg)
    todo = pipelines.pending(job)
    assert todo == list(range(len(job.plan.tiles)))
    pipelines.run_tiles(job.job_path, todo[:7], tile_fn=counting)  # "interrupted" after 7 tiles
    assert pipelines.pending(job.job_path) == todo[7:]
    with pytest.raises(RuntimeError, match="no result"):
        pipelines.finish(job.job_path, [])
    calls.clear()
    res = pipelines.superresolve(s2["rgb"], s2["nir40"], out, cfg, tile_fn=counting)
    assert sorted(calls) == todo[7:]
    rep = json.load(open(res.report))
    assert rep["totals"]["reused"] == 7
    # a setting that does not change tiles (stitch) reuses them all, and is the one used
    again = pipelines.prepare(s2["rgb"], s2["nir40"], out, cfg.replace(stitch="feather"))
    assert again.config.stitch == "feather" and pipelines.pending(again) == []
    assert pipelines.load_job(again.job_path).config.stitch == "feather"
    # another setting -> another plan key -> nothing reused
    calls.clear()
    pipelines.superresolve(s2["rgb"], s2["nir40"], out, cfg.replace(seed=1), tile_fn=counting)
    assert sorted(calls) == todo
    # --no-resume starts over
    fresh = pipelines.prepare(s2["rgb"], s2["nir40"], out, cfg.replace(resume=False))
    assert pipelines.pending(fresh) == todo
    # Job and TileResult round-trip through JSON
    job2 = pipelines.load_job(job.job_path)
    assert pipelines.Job.from_dict(json.loads(json.dumps(job2.to_dict()))) == job2


def test_multiband_target_processed_band_by_band(s2, tmp_path):
    with rasterio.open(s2["nir40"]) as ds:
        nir = ds.read(1)
        prof = ds.profile
    with rasterio.open(DATA / "rgb.tif") as ds:
        red = area_pool(ds.read(1).astype(np.float64), 4).astype(np.float32)
    two = tmp_path / "two.tif"
    with rasterio.open(two, "w", **dict(prof, count=2)) as dst:
        dst.write(np.stack([nir, red]))
    cfg = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False)
    o = pipelines.superresolve(s2["rgb"], str(two), str(tmp_path / "o2.tif"), cfg, tile_fn=bicubic_tile_fn)
    out, _ = read(o.cog)
    assert out.shape == (2, 200, 300)
    np.testing.assert_allclose(out[0], whole_image_bicubic(nir, 4), atol=2e-3)
    np.testing.assert_allclose(out[1], whole_image_bicubic(red, 4), atol=2e-3)


def test_quicklook_and_report(s2, tmp_path):
    from PIL import Image

    cfg = JobConfig(method="bicubic", tile_size=128, halo=16)
    o = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "q.tif"), cfg, tile_fn=bicubic_tile_fn)
    im = Image.open(o.quicklook)
    assert im.mode == "RGB" and im.width >= 3 * 300 and im.height >= 200
    rep = json.load(open(o.report))
    assert rep["scale"] == 4 and rep["totals"]["tiles"] == 6 and rep["totals"]["processed"] == 6
    assert all("consistency_mae" in t["stats"] for t in rep["tiles"])


def test_guided_tiles_score_what_whole_image_scores(s2, tmp_path):
    """The core's guided filter per 64-px tile (survey-level ranges) == on the whole image."""
    import cmsr

    from pipelines.tilefn import cmsr_config

    cfg = JobConfig(method="guided", tile_size=64, halo=16, quicklook=False)
    o = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "g.tif"), cfg)
    out, _ = read(o.cog)
    lr, _ = read(s2["nir40"])
    rgb, _ = read(s2["rgb"])
    gt, _ = read(s2["nir10"])
    job = pipelines.load_job(str(tmp_path / "g.tif.work" / "job.json"))
    whole = cmsr.run(lr[0], np.moveaxis(rgb, 0, -1), 4, cmsr_config(cfg), method="guided",
                     target_range=job.target_range[0], guide_range=np.asarray(job.guide_range)).image
    e_tiles, e_whole, e_bic = rmse(out[0], gt[0]), rmse(whole, gt[0]), rmse(whole_image_bicubic(lr[0], 4), gt[0])
    assert abs(e_tiles - e_whole) < 0.01 * e_whole
    assert e_tiles < 0.8 * e_bic  # the guide helps on this real pair
    assert abs(seam_ratio(out[0], 64) - seam_ratio(whole, 64)) < 0.02


# a tiny budget, by top-level CMSRConfig fields only (switches such as the warp are the preset's)
TINY = (("max_iters", 10), ("min_iters", 5), ("sr_width", 16), ("sr_depth", 4), ("self_ensemble", False),
        ("crop_size", 24), ("run_test_every", 5))


@pytest.mark.slow
def test_cmsr_method_tiny_budget_is_deterministic(tmp_path):
    """One small job through the real CMSR training (tiny budget): runs, keeps the LR values
    (area degradation + back-projection), and a tile re-run gives bit-identical results."""
    l8 = DATA.parent / "landsat_marburg_30m" / "LC08_L1TP_195025_20130707_20170503_01_T1_"
    cfg = JobConfig(method="cmsr", preset="fast", tile_size=32, halo=8, cmsr_overrides=TINY, quicklook=False,
                    survey_model=False)
    o = pipelines.superresolve(f"{l8}B8.TIF", f"{l8}B10.TIF", str(tmp_path / "c.tif"), cfg)
    rep = json.load(open(o.report))
    assert rep["totals"]["processed"] == 9
    # survey_model=False: every tile trains from scratch with the whole budget, nothing learned once
    assert all(t["stats"]["iterations"] == 10 and t["stats"]["method"] == "cmsr" and not t["stats"]["survey_model"]
               for t in rep["tiles"])
    assert rep["survey_model"]["used"] is False and rep["survey_model"]["mode"] == "off"
    assert not (tmp_path / "c.model.pt").exists()
    assert rep["totals"]["consistency_max"] < 0.01 * (rep["target_range"][0][1] - rep["target_range"][0][0])
    _, meta = read(o.cog)
    assert meta["tags"]["CMSR_PRESET"] == "fast" and meta["tags"]["CMSR_METHOD"] == "cmsr"
    job = pipelines.load_job(str(tmp_path / "c.tif.work" / "job.json"))
    first = np.load(job.tile_paths(4)[0])
    os.unlink(job.tile_paths(4)[1])
    again = pipelines.run_tile(job.job_path, 4)
    assert not again.reused
    # the job trained its 9 tiles as one batch; alone, tile 4 gets the same seed and the same
    # training, equal up to float summation order of the batched convolutions
    np.testing.assert_allclose(np.load(again.path), first, rtol=1e-6)
    os.unlink(job.tile_paths(4)[1])
    np.testing.assert_array_equal(np.load(pipelines.run_tile(job.job_path, 4).path), np.load(again.path))


def test_cog_overviews_are_averages(s2, tmp_path):
    """A >512 px output gets internal overviews made with ``average`` (and stays a valid COG)."""
    from tiling.grid import Grid
    from tiling.output import create_stitch_target, write_cog

    with rasterio.open(s2["nir10"]) as ds:
        nir = ds.read(1).astype(np.float32)
        g = Grid.from_affine(800, 1200, ds.transform, ds.crs)
    big = np.tile(nir, (4, 4))  # 800 x 1200 of real NIR
    big[:10, :10] = np.nan
    src = tmp_path / "scratch.tif"
    create_stitch_target(str(src), g, 1, ["nir"], ["DN"])
    with rasterio.open(src, "r+") as dst:
        dst.write(big[None])
    write_cog(str(src), str(tmp_path / "cog.tif"), {"CMSR_SCALE": "4"}, "zstd")
    assert cog_validate(str(tmp_path / "cog.tif"), quiet=True)[0]
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.overviews(1)[0] == 2 and ds.units == ("DN",) and ds.tags()["CMSR_SCALE"] == "4"
        assert ds.profile["compress"] == "zstd" and ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        full = ds.read(1)
        ov = ds.read(1, out_shape=(400, 600))  # served from the overview
    np.testing.assert_array_equal(full[np.isfinite(big)], big[np.isfinite(big)])
    ref = area_pool(big.astype(np.float64), 2)
    ok = np.isfinite(ref)
    np.testing.assert_allclose(ov[ok], ref[ok], rtol=1e-5)


def test_tile_fn_by_import_path(s2, tmp_path):
    """``JobConfig.tile_fn`` names a function importable in any worker ("module:function")."""
    cfg = JobConfig(tile_fn="pipelines.tilefn:bicubic_tile_fn", tile_size=128, halo=16, quicklook=False)
    o = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "p.tif"), cfg)
    out, meta = read(o.cog)
    lr, _ = read(s2["nir40"])
    np.testing.assert_allclose(out[0], whole_image_bicubic(lr[0], 4), atol=2e-3)
    assert meta["tags"]["CMSR_METHOD"] == "pipelines.tilefn:bicubic_tile_fn"
    job = pipelines.prepare(s2["rgb"], s2["nir40"], str(tmp_path / "bad.tif"), cfg.replace(tile_fn="pipelines.tilefn"))
    with pytest.raises(ValueError, match="expected 'module:function'"):
        pipelines.run_tile(job.job_path, 0)


# --------------------------------------------------------------------------------------------
# one execution path for every method; atomic result files


def test_core_methods_and_custom_functions_take_the_one_batch_path(s2, tmp_path, monkeypatch):
    """Method bicubic goes through ``cmsr.run_many`` (seeds ``seed + i``, one call per batch of
    ``tiles_per_batch``); a custom function is called per tile inside the same batch path and
    never reaches the core; ``run_tile`` is ``run_tiles`` of one tile; the results agree."""
    import cmsr
    from pipelines.job import execute

    runs: list[tuple[str, list[int]]] = []
    real_run_many = cmsr.run_many

    def spy_run_many(targets, guides, scale, config=None, **kw):
        runs.append((kw["method"], list(kw["seeds"])))
        return real_run_many(targets, guides, scale, config, **kw)

    batches: list[list[int]] = []
    real_batch = execute._run_batch

    def spy_batch(job, indices, batch_fn, weights):
        batches.append(list(indices))
        return real_batch(job, indices, batch_fn, weights)

    monkeypatch.setattr(cmsr, "run_many", spy_run_many)
    monkeypatch.setattr(execute, "_run_batch", spy_batch)
    cfg = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False, seed=3)
    core = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "core.tif"), cfg)
    n = len(pipelines.load_job(str(tmp_path / "core.tif.work" / "job.json")).plan.tiles)
    assert runs == [("bicubic", [3 + i]) for i in range(n)]  # a per-tile method: batches of one
    assert batches == [[i] for i in range(n)]
    runs.clear(), batches.clear()
    grouped = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "grouped.tif"), cfg.replace(batch_tiles=4))
    assert [len(seeds) for _, seeds in runs] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert [i for b in batches for i in b] == list(range(n))
    runs.clear(), batches.clear()
    custom = pipelines.superresolve(s2["rgb"], s2["nir40"], str(tmp_path / "custom.tif"),
                                    cfg.replace(tile_fn="pipelines.tilefn:bicubic_tile_fn", batch_tiles=4))
    assert runs == [] and [len(b) for b in batches][0] == 4  # the function, adapted; not the core
    a, _ = read(core.cog)
    b, _ = read(grouped.cog)
    c, _ = read(custom.cog)
    lo, hi = json.load(open(core.report))["target_range"][0]
    np.testing.assert_array_equal(a, b)  # batching changes nothing for a per-tile method
    assert np.nanmax(np.abs(a - c)) / (hi - lo) < 1e-4  # the core's bicubic == the pipeline's
    # run_tile(i) is run_tiles([i]): same file, same stats; a finished tile is reused by both
    job = pipelines.load_job(str(tmp_path / "custom.tif.work" / "job.json"))
    first = np.load(job.tile_paths(2)[0])
    os.unlink(job.tile_paths(2)[1])
    batches.clear()
    again = pipelines.run_tile(job.job_path, 2)
    assert batches == [[2]] and not again.reused
    np.testing.assert_array_equal(np.load(again.path), first)
    assert pipelines.run_tiles(job.job_path, [2])[0].reused and pipelines.run_tile(job.job_path, 2).reused
    assert batches == [[2]]


def test_a_failing_tile_keeps_every_finished_batch(s2, tmp_path):
    """Per-tile functions run one tile per batch, so every tile before a failure is on disk;
    with ``batch_tiles`` the failing tile's batch is lost, the batches before it are kept."""

    def crash_on_5(target, guide, scale, ctx):
        if ctx.tile_index == 5:
            raise IndexError("simulated bad window")
        return bicubic_tile_fn(target, guide, scale, ctx)

    cfg = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False)
    job = pipelines.prepare(s2["rgb"], s2["nir40"], str(tmp_path / "f.tif"), cfg)
    todo = pipelines.pending(job)
    with pytest.raises(IndexError, match="simulated"):
        pipelines.run_tiles(job.job_path, todo, tile_fn=crash_on_5)
    assert pipelines.pending(job) == todo[5:]
    res = pipelines.run_tiles(job.job_path, todo, tile_fn=bicubic_tile_fn)
    assert [r.reused for r in res] == [True] * 5 + [False] * (len(todo) - 5)
    grouped = pipelines.prepare(s2["rgb"], s2["nir40"], str(tmp_path / "g.tif"), cfg.replace(batch_tiles=4))
    with pytest.raises(IndexError, match="simulated"):
        pipelines.run_tiles(grouped.job_path, todo, tile_fn=crash_on_5)
    assert pipelines.pending(grouped) == todo[4:]  # tiles 4..7 were one batch
    assert not [f for f in os.listdir(os.path.join(grouped.work_dir, "tiles")) if f.startswith(".")]  # no temp left


def test_batch_sizes_survey_model_file_and_result_counts(s2, tmp_path, monkeypatch):
    """``tiles_per_batch``: ``batch_tiles`` when set, ``cmsr.choose_batch_size`` for cmsr/zssr,
    1 for other methods and custom functions. A missing survey model file and a batch function
    that answers for the wrong number of tiles are errors before anything is written."""
    import cmsr
    from pipelines import tilefn
    from pipelines.job import tiles_per_batch

    monkeypatch.setattr(cmsr, "choose_batch_size", lambda *a, **k: 7)
    base = JobConfig(method="cmsr", preset="fast", tile_size=64, halo=16, quicklook=False, work_dir=str(tmp_path / "w"))

    def job(**changes):
        return pipelines.prepare(s2["rgb"], s2["nir40"], str(tmp_path / "j.tif"), base.replace(**changes))

    assert tiles_per_batch(job(), 20) == 7 and tiles_per_batch(job(), 1) == 1
    assert tiles_per_batch(job(method="zssr"), 20) == 7
    assert tiles_per_batch(job(batch_tiles=3), 20) == 3
    assert tiles_per_batch(job(method="guided"), 20) == 1
    assert tiles_per_batch(job(tile_fn="pipelines.tilefn:bicubic_tile_fn"), 20) == 1
    assert tiles_per_batch(job(), 20, tile_fn=bicubic_tile_fn) == 1
    learning = job(survey_model=True, preset="paper")  # paper: no registration field to make first
    assert learning.survey_model.used and learning.survey_model.mode == "forced"
    with pytest.raises(RuntimeError, match="run pipelines.learn_survey first"):
        pipelines.run_tile(learning.job_path, 0)
    bad = job(method="bicubic")
    monkeypatch.setattr(tilefn, "resolve", lambda config, override=None: lambda t, g, s, c: [])
    with pytest.raises(RuntimeError, match="returned 0 results for 1 tiles"):
        pipelines.run_tile(bad.job_path, 0)
    assert pipelines.pending(bad) == [t.index for t in bad.plan.tiles]


def test_batch_of_adapts_a_tile_function():
    """``batch_of``: the function on each tile in turn, each answer as (image, stats)."""
    from pipelines import batch_of

    seen = []

    def fn(target, guide, scale, ctx):
        seen.append(ctx)
        return (target * 2, {"k": 1}) if ctx == "b" else target + 1

    out = batch_of(fn)([np.zeros(2), np.ones(2)], [None, None], 4, ["a", "b"])
    assert seen == ["a", "b"]
    np.testing.assert_array_equal(out[0][0], [1, 1])
    assert out[0][1] == {} and out[1][1] == {"k": 1}
    np.testing.assert_array_equal(out[1][0], [2, 2])


def test_atomic_output_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    from tiling.files import atomic_output

    p = tmp_path / "a.npy"
    with atomic_output(p) as tmp:
        # beside the target (one file system), with its extension (np.save would append .npy)
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".npy") and not p.exists()
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(p), np.arange(3))
    with pytest.raises(ZeroDivisionError):
        with atomic_output(p) as tmp:
            np.save(tmp, np.arange(5))
            1 / 0
    np.testing.assert_array_equal(np.load(p), np.arange(3))  # the old file, untouched
    with pytest.raises(RuntimeError):
        with atomic_output(str(tmp_path / "b.tif")):
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == ["a.npy"]  # no temp, no half-written b.tif
