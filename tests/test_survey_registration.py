"""The survey's guide registration: the core takes a tile's affine from outside and trains as its
own registration would (bit for bit); the job's registration stage recovers a known shift of the
RGB on the bundled real sample and writes it as a georeferenced map on the LR grid."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

import cmsr
import pipelines
from cmsr.config import CMSRConfig
from cmsr.inputs import prepare_tiles
from cmsr.registration import register
from pipelines import JobConfig, MisalignmentWarning

TINY_CORE = CMSRConfig.fast().replace(max_iters=4, min_iters=2, sr_width=8, sr_depth=3, self_ensemble=False,
                                      crop_size=16, run_test_every=2)
TINY_JOB = (("max_iters", 4), ("min_iters", 2), ("sr_width", 8), ("sr_depth", 3), ("self_ensemble", False),
            ("crop_size", 16), ("run_test_every", 2))


def scene(seed: int, shift_hr: int) -> tuple[np.ndarray, np.ndarray]:
    """A 16 x 16 LR target and its x4 guide, the guide rolled ``shift_hr`` HR pixels along x."""
    g = torch.Generator().manual_seed(seed)
    hr = F.interpolate(torch.rand(1, 1, 17, 17, generator=g), size=(64, 64), mode="bilinear")[0, 0].numpy()
    guide = np.roll(np.stack([hr, 1 - hr, hr * hr], -1), shift_hr, axis=1).astype(np.float32)
    return hr.reshape(16, 4, 16, 4).mean((1, 3)).astype(np.float32), guide


def test_handed_registrations_train_exactly_as_the_tiles_own() -> None:
    torch.set_num_threads(1)
    (lr0, g0), (lr1, g1) = scene(1, 6), scene(2, 0)
    own = cmsr.run_many([lr0, lr1], [g0, g1], 4, TINY_CORE, seeds=[0, 1])
    prepared = prepare_tiles([lr0, lr1], [g0, g1], 4, needs_guide=True, target_range=None, guide_range=None)
    affines = [register(p.guide, p.target.lr, p.target.valid, 4, TINY_CORE.registration) for p in prepared]
    assert affines[0] is not None and affines[1] is None  # the shifted guide moves, the other stays as given
    ests = cmsr.estimate_registrations([lr0, lr1], [g0, g1], 4, TINY_CORE)
    assert np.array_equal(ests[0].affine, affines[0].numpy()) and [e.moves_guide for e in ests] == [True, False]
    handed = cmsr.run_many([lr0, lr1], [g0, g1], 4, TINY_CORE, seeds=[0, 1],
                           registrations=[ests[0].affine, None])
    for a, b in zip(own, handed):
        assert np.array_equal(a.image, b.image, equal_nan=True)
        assert a.stats["mean_warp_px"] == b.stats["mean_warp_px"]
    assert ests[0].guide_texture > 0.01 and ests[0].search_contrast > 0.1
    with pytest.raises(ValueError, match="registrations apply to method 'cmsr'"):
        cmsr.run_many([lr0], [g0], 4, TINY_CORE, method="zssr", seeds=[0], registrations=[None])


def shifted_rgb(sample: dict[str, Path], folder: Path, east_m: float, north_m: float) -> str:
    """The sample's RGB with its geotransform moved: it then shows every place ``east_m`` east and
    ``north_m`` north of where the target shows it."""
    with rasterio.open(sample["rgb"]) as src:
        profile, data = src.profile, src.read()
    t = profile["transform"]
    profile["transform"] = Affine(t.a, t.b, t.c + east_m, t.d, t.e, t.f + north_m)
    path = folder / "rgb_shifted.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def registered_job(rgb: str, target: str, out: Path, **changes) -> pipelines.Job:
    fields = {"method": "cmsr", "preset": "fast", "tile_size": 96, "halo": 16, "cmsr_overrides": TINY_JOB,
              "quicklook": False, **changes}
    cfg = JobConfig(**fields)
    return pipelines.prepare(rgb, target, str(out), cfg)


def test_a_shifted_rgb_is_recovered_in_metres_on_the_lr_grid(sample, tmp_path) -> None:
    """1.5 target px east and 0.5 south (60 m, 20 m at 40 m pixels): the map says so, on exactly
    the LR grid, NaN where a tile measured nothing (the sample's edge tiles are mostly outside)."""
    torch.set_num_threads(1)
    from pipelines.job.registration import write_registration_map

    rgb = shifted_rgb(sample, tmp_path, 60.0, -20.0)
    job = registered_job(rgb, str(sample["target"]), tmp_path / "sr.tif")
    summary = pipelines.register_survey(job.job_path)
    assert summary["tiles"]["measured"] >= 4 and summary["tiles"]["outlier"] == 0 and summary["warning"] is None
    assert summary["shift_m"]["median"] == pytest.approx(np.hypot(60.0, 20.0), abs=6.0)
    assert summary["shift_target_px"]["median"] == pytest.approx(np.hypot(1.5, 0.5), abs=0.15)
    path = write_registration_map(job)
    with rasterio.open(path) as m:
        lr = job.plan.lr_grid
        assert m.crs.to_string() == lr.crs and tuple(m.transform)[:6] == lr.transform and m.shape == lr.shape
        assert m.count == 2 and m.dtypes == ("float32", "float32") and "east" in m.descriptions[0]
        assert m.units == ("metre", "metre")
        east, north = m.read().astype(np.float64)
    ok = np.isfinite(east)
    assert 0.5 < ok.mean() < 1.0 and np.array_equal(ok, np.isfinite(north))
    assert np.median(east[ok]) == pytest.approx(60.0, abs=6.0) and np.median(north[ok]) == pytest.approx(-20.0, abs=6.0)
    # resume: the field is read back, not estimated again
    field = Path(job.work_dir) / "registration" / "field.json"
    stamp = field.stat().st_mtime_ns
    assert pipelines.register_survey(job.job_path) == summary and field.stat().st_mtime_ns == stamp


def test_a_shift_at_the_search_limit_is_a_warning_naming_where(sample, tmp_path) -> None:
    torch.set_num_threads(1)
    rgb = shifted_rgb(sample, tmp_path, 3.7 * 40.0, 0.0)  # 3.7 target px; the search covers +-4
    job = registered_job(rgb, str(sample["target"]), tmp_path / "far.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = pipelines.register_survey(job.job_path)
    said = [str(w.message) for w in caught if issubclass(w.category, MisalignmentWarning)]
    assert len(said) == 1 and said[0] == summary["warning"]
    assert "at the limit of the shift search (+-4 target px)" in said[0] and "far.registration.tif" in said[0]
    assert "across the survey (x 6" in said[0] and "EPSG:32719" in said[0] and "\n" not in said[0]


def test_a_job_trains_every_tile_with_its_field_value_and_reports_it(sample, tmp_path) -> None:
    """The whole job in process: the field first, then the tiles (each handed its affine), the map
    and the report's summary; a one-tile job's field is exactly the tile's own registration."""
    torch.set_num_threads(1)
    rgb = shifted_rgb(sample, tmp_path, 60.0, 0.0)
    out = tmp_path / "sr.tif"
    cfg = JobConfig(method="cmsr", preset="fast", tile_size=96, halo=16, cmsr_overrides=TINY_JOB, quicklook=False,
                    survey_model=False)  # each tile's own training, with its field value
    o = pipelines.superresolve(rgb, str(sample["target"]), str(out), cfg)
    rep = json.loads(Path(o.report).read_text())
    reg = rep["registration"]
    assert reg["map"] == str(tmp_path / "sr.registration.tif") and Path(reg["map"]).exists()
    assert reg["shift_target_px"]["median"] == pytest.approx(1.5, abs=0.15)
    assert rep["totals"]["processed"] == 12
    assert all(t["stats"]["use_warp"] and 5.0 < t["stats"]["mean_warp_px"] < 7.0 for t in rep["tiles"])

    one = registered_job(rgb, str(sample["target"]), tmp_path / "one.tif", tile_size=512)
    assert len(one.plan.tiles) == 1
    pipelines.register_survey(one.job_path)
    field = json.loads((Path(one.work_dir) / "registration" / "field.json").read_text())
    from pipelines.job.tile_inputs import read_tile_inputs
    from pipelines.tilefn import cmsr_config

    inp = read_tile_inputs(one, 0)
    (p,) = prepare_tiles([inp.lr[0]], [inp.guide], 4, needs_guide=True, target_range=one.target_range[0],
                         guide_range=np.asarray(one.guide_range))
    alone = register(p.guide, p.target.lr, p.target.valid, 4, cmsr_config(one.config).registration)
    assert field["tiles"][0]["source"] == "field"
    assert np.array_equal(np.array(field["tiles"][0]["affine"], dtype=np.float32), alone.numpy())


def test_jobs_that_do_not_register_keep_their_plan_key(sample, tmp_path) -> None:
    a = pipelines.prepare(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "a.tif"),
                          JobConfig(method="bp", quicklook=False))
    b = pipelines.prepare(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "b.tif"),
                          JobConfig(method="bp", quicklook=False).replace(registration={"smooth": False}))
    assert a.key == b.key and pipelines.pending_estimates(a) == []
    c = registered_job(str(sample["rgb"]), str(sample["target"]), tmp_path / "c.tif")
    d = registered_job(str(sample["rgb"]), str(sample["target"]), tmp_path / "d.tif",
                       registration=pipelines.SurveyRegistration(smooth=False))
    assert c.key != d.key
    with pytest.raises(RuntimeError, match="run pipelines.register_survey first"):
        pipelines.run_tile(c.job_path, 5)
