"""Survey-level learning in a job, on the real Landsat 8 pair (15 m pan guide, 30 m thermal, x2):
prepare decides once (auto from 4 active tiles, forced, off, a reused file), the model is learned
once across the plan, every tile fine-tunes from it, the model is written beside the output and
reused by the next job (checked first, refused naming the file), and a resumed job learns nothing."""

from __future__ import annotations

import json
import os

import pytest

import cmsr.survey_model
import pipelines
from cmsr.survey_model import load_models
from pipelines import JobConfig

from conftest import shared_data_root  # noqa: E402

L8 = shared_data_root() / "geo" / "landsat_marburg_30m" / "LC08_L1TP_195025_20130707_20170503_01_T1_"
RGB, TARGET = f"{L8}B8.TIF", f"{L8}B10.TIF"
pytestmark = pytest.mark.usefixtures("shared_data")

#: a tiny budget: tiles (10 iterations from scratch) and survey learning (3 sample tiles,
#: 6 iterations per stage, 4 fine-tune iterations per tile)
TINY = (("max_iters", 10), ("min_iters", 5), ("sr_width", 16), ("sr_depth", 4), ("self_ensemble", False),
        ("crop_size", 24), ("run_test_every", 5))
LEARNING = (("sample_tiles", 3), ("iterations_per_stage", 6), ("finetune_iters", 4), ("finetune_min_iters", 2))
FINETUNE_ITERS = 4


def config(**changes) -> JobConfig:  # type: ignore[no-untyped-def]
    fields = {"method": "cmsr", "preset": "fast", "tile_size": 32, "halo": 8, "quicklook": False,
              "cmsr_overrides": TINY, "survey_learning": LEARNING, **changes}
    return JobConfig(**fields)


def _never_learn(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise AssertionError("the survey model was learned again")


@pytest.mark.slow
def test_auto_learns_once_every_tile_fine_tunes_and_the_next_job_reuses_it(tmp_path, monkeypatch):
    out = tmp_path / "week1.tif"
    o = pipelines.superresolve(RGB, TARGET, str(out), config())  # 9 active tiles: auto is on
    job = pipelines.load_job(str(tmp_path / "week1.tif.work" / "job.json"))
    assert (job.survey_model.used, job.survey_model.mode) == (True, "auto")
    learned = [f for f in os.listdir(job.work_dir) if f.endswith(".pt")]
    assert learned == [os.path.basename(job.survey_model_path)] and job.key[:16] in learned[0]
    rep = json.loads(open(o.report).read())
    tiles = [t["stats"] for t in rep["tiles"]]
    assert len(tiles) == 9 and all(t["survey_model"] and 0 < t["iterations"] <= FINETUNE_ITERS for t in tiles)
    (models, info) = load_models(o.model)
    assert o.model == str(tmp_path / "week1.model.pt") and len(models) == 1 and info["plan_key"] == job.key
    assert {t["base"] for t in tiles} == {models[0].base}  # the survey's base, voted once
    section = rep["survey_model"]
    assert section["used"] and section["mode"] == "auto" and "9 active tiles" in section["reason"]
    assert section["file"] == o.model and section["reused_from"] is None
    (band,) = section["bands"]
    assert band["base"] == models[0].base and band["iterations"] == models[0].iterations > 0
    assert len(band["sample_tiles"]) == 3 and band["learning_seconds"] > 0
    assert rep["totals"]["consistency_max"] < 0.01 * (rep["target_range"][0][1] - rep["target_range"][0][0])

    # resume: an interrupted job (some tiles done, the model in the work dir) does not learn again
    monkeypatch.setattr(cmsr.survey_model, "learn", _never_learn)
    stamp = os.stat(job.survey_model_path).st_mtime_ns
    for i in (2, 5):
        os.unlink(job.tile_paths(i)[1])
    again = pipelines.superresolve(RGB, TARGET, str(out), config())
    rep = json.loads(open(again.report).read())
    assert rep["totals"]["reused"] == 7 and os.stat(job.survey_model_path).st_mtime_ns == stamp

    # next week's flight: the model reused, nothing learned, every tile fine-tunes from it
    reuse = config(model=o.model)
    second = pipelines.superresolve(RGB, TARGET, str(tmp_path / "week2.tif"), reuse)
    job2 = pipelines.load_job(str(tmp_path / "week2.tif.work" / "job.json"))
    assert job2.key != job.key and job2.survey_model.mode == "reused"
    assert job2.survey_model.reused_from == o.model and os.path.exists(job2.survey_model_path)
    rep2 = json.loads(open(second.report).read())
    assert all(t["stats"]["survey_model"] and t["stats"]["iterations"] <= FINETUNE_ITERS
               and t["stats"]["base"] == models[0].base for t in rep2["tiles"])
    assert rep2["survey_model"]["reused_from"] == o.model and rep2["survey_model"]["bands"][0]["learning_seconds"] is None
    assert load_models(second.model)[1]["plan_key"] == job.key  # the model as learned by week 1
    # another file's content is another plan (resume never mixes tiles of two models)
    from cmsr.survey_model import save_models

    other = tmp_path / "other.model.pt"
    save_models(str(other), [models[0].__class__(**{**models[0].__dict__, "weights": {
        k: v + 1e-3 for k, v in models[0].weights.items()}})], info)
    job3 = pipelines.prepare(RGB, TARGET, str(tmp_path / "week2.tif"), config(model=str(other)))
    assert job3.key not in (job.key, job2.key)


def test_prepare_decides_once_and_keys_the_decision(tmp_path):
    """Auto: on from 4 active tiles, off below; forced and auto share a key, off has another;
    the reused file's content is in the key; other methods never use one, and cannot be forced."""
    auto = pipelines.prepare(RGB, TARGET, str(tmp_path / "a.tif"), config())
    forced = pipelines.prepare(RGB, TARGET, str(tmp_path / "f.tif"), config(survey_model=True))
    off = pipelines.prepare(RGB, TARGET, str(tmp_path / "o.tif"), config(survey_model=False))
    assert (auto.survey_model.used, forced.survey_model.mode, off.survey_model.mode) == (True, "forced", "off")
    assert auto.key == forced.key != off.key
    assert pipelines.load_job(auto.job_path).survey_model == auto.survey_model  # recorded in job.json
    small = pipelines.prepare(RGB, TARGET, str(tmp_path / "s.tif"), config(tile_size=96))
    assert len(small.plan.tiles) == 1 and not small.survey_model.used and small.survey_model.mode == "auto"
    assert "fewer than 4" in small.survey_model.reason
    assert pipelines.prepare(RGB, TARGET, str(tmp_path / "s2.tif"), config(tile_size=96, survey_model=True)
                             ).survey_model.used
    other = pipelines.prepare(RGB, TARGET, str(tmp_path / "b.tif"), JobConfig(method="bp", tile_size=32, halo=8))
    assert other.survey_model.mode == "not applicable" and not other.survey_model.used
    for bad in ({"method": "bicubic", "survey_model": True}, {"method": "zssr", "model": "m.pt"},
                {"tile_fn": "pipelines.tilefn:bicubic_tile_fn", "survey_model": True},
                {"model": "m.pt", "survey_model": False}):
        with pytest.raises(ValueError, match="survey model|survey_model"):
            JobConfig(**bad)
    with pytest.raises(ValueError, match="survey_learning"):
        pipelines.prepare(RGB, TARGET, str(tmp_path / "x.tif"), config(survey_learning=(("nope", 1),)))
    # the same decision again (resume) keeps the job
    assert pipelines.prepare(RGB, TARGET, str(tmp_path / "a.tif"), config()).key == auto.key


def test_a_job_without_survey_model_trains_each_tile_from_scratch(tmp_path):
    job = pipelines.prepare(RGB, TARGET, str(tmp_path / "o.tif"), config(survey_model=False))
    assert pipelines.learn_survey(job.job_path) is None
    pipelines.register_survey(job.job_path)
    r = pipelines.run_tile(job.job_path, 4)
    assert r.stats["survey_model"] is False and r.stats["iterations"] == 10
