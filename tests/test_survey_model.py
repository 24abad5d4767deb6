"""Survey-level learning: the stratified sample, the survey's base, the model file and its refusals,
and that tiles really start from the survey model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmsr import InvalidInput
from cmsr import model as M
from cmsr.config import BackProjected, CMSRConfig
from cmsr.survey_model import (SurveyLearning, SurveyModel, base_named, check_fits, finetune_config, learn,
                               load_models, save_models, stratified_sample, tile_config, vote_base)
from cmsr.train import choose_bases, train
from dev_tiles import dev_tiles


def test_finetune_and_tile_config() -> None:
    cfg = CMSRConfig.best()
    ft = finetune_config(cfg, SurveyLearning(finetune_iters=77, finetune_min_iters=20))
    assert (ft.max_iters, ft.min_iters, ft.stage_factors(4)) == (77, 20, (4,))
    assert ft.crop_size == cfg.crop_size and ft.learning_rate == cfg.learning_rate and ft.base == cfg.base
    keep = finetune_config(cfg, SurveyLearning(finetune_gradual=True, finetune_learning_rate=3e-5))
    assert keep.stage_factors(4) == (2, 4) and keep.learning_rate == 3e-5
    model = SurveyModel(weights={}, base="guided_smooth", scale=4, guide_bands=3)
    assert tile_config(cfg, model).base == cfg.base.candidates[2]  # the survey's base, fixed for every tile
    with pytest.raises(ValueError, match="nope"):
        base_named(cfg, "nope")
    with pytest.raises(ValueError):
        SurveyLearning(sample_tiles=0)


def test_stratified_sample_covers_the_texture_range_and_prefers_valid_tiles() -> None:
    g = torch.Generator().manual_seed(0)
    amps = [0.1 * (k + 1) for k in range(12)]  # texture rises with the index
    lrs = [torch.rand(10, 10, generator=g) * a for a in amps]
    valids = [torch.ones(10, 10, dtype=torch.bool) for _ in lrs]
    picks = stratified_sample(lrs, valids, 4)
    assert sorted(picks) == [1, 4, 7, 10]  # one per stratum of 3, its median (all equally valid)
    assert picks[-1] in (4, 7) and picks[0] in (1, 10)  # outer strata first, training ends typical
    valids[4][:2] = False  # 80 % valid: its stratum gives a fully valid tile instead
    assert 4 not in stratified_sample(lrs, valids, 4)
    valids[0][:8] = False  # 20 % valid: never sampled while others qualify
    assert 0 not in stratified_sample(lrs, valids, 12) and len(stratified_sample(lrs, valids, 12)) == 11
    assert len(stratified_sample(lrs, valids, 50)) == 11


def test_vote_base_weighted_with_fallback_on_ties() -> None:
    cfg = CMSRConfig.best()
    bp, guided, smooth = cfg.base.candidates
    assert vote_base(cfg, [guided, smooth, smooth], [1, 1, 1]) == smooth
    assert vote_base(cfg, [guided, smooth, smooth], [5, 1, 1]) == guided
    assert vote_base(cfg, [guided, bp], [1, 1]) == bp  # a tie goes to the fallback candidate
    assert vote_base(CMSRConfig.paper(), [], []).name == "bicubic"


@pytest.mark.slow
def test_survey_model_learns_across_tiles_and_tiles_start_from_it(shared_data) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    lrs, guides, valids = dev_tiles(shared_data, 3, side=12)
    cfg = CMSRConfig.best().replace(max_iters=8, min_iters=4, crop_size=16, run_test_every=2)
    learning = SurveyLearning(sample_tiles=3, iterations_per_stage=9, finetune_iters=3, finetune_learning_rate=0.0)
    model = learn(lrs, guides, valids, 4, cfg, seed=0, learning=learning)
    assert sorted(model.sample) == [0, 1, 2] and model.iterations == 3 * 2 * 3  # 9 per stage over 3 tiles
    assert model.guide_bands == 3 and model.scale == 4
    bases = choose_bases(lrs, guides, valids, 4, cfg)
    assert model.base == vote_base(cfg, bases, [float(v.sum()) for v in valids]).name
    assert set(model.weights) == {f"sr.{i}" for i in range(8)} | {f"g.{i}" for i in range(4)}
    outs = train(lrs, guides, valids, 4, tile_config(cfg, model, learning), seeds=[5, 6, 7], init_state=model.weights)
    for o in outs:
        # zero fine-tune lr: every tile's networks are exactly the survey model, over the survey's base
        assert o.weights is not None and all(torch.equal(o.weights[k], v) for k, v in model.weights.items())
        assert o.stats["base"] == model.base and o.stats["iterations"] <= 3 and len(o.stats["stages"]) == 1


def test_choose_bases_is_what_train_chooses(shared_data) -> None:  # type: ignore[no-untyped-def]
    lrs, guides, valids = dev_tiles(shared_data, 2, side=16)
    cfg = CMSRConfig.best().replace(max_iters=1, crop_size=16, self_ensemble=False)
    outs = train(lrs, guides, valids, 4, cfg, seeds=[0, 1])
    assert [b.name for b in choose_bases(lrs, guides, valids, 4, cfg)] == [o.stats["base"] for o in outs]
    assert [b.name for b in choose_bases(lrs, guides, valids, 4, cfg.without_guide())] == ["bp", "bp"]


def _model(bands: int = 3, cfg: CMSRConfig | None = None, **kw) -> SurveyModel:  # type: ignore[no-untyped-def]
    cfg = cfg or CMSRConfig.best()
    w = M.init_params(bands, sr_depth=cfg.sr_depth, sr_width=cfg.sr_width, seed=1)
    return SurveyModel(weights=w, base=kw.pop("base", "bp"), scale=kw.pop("scale", 4), guide_bands=bands, **kw)


def test_model_file_round_trip_and_refusals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = CMSRConfig.best()
    path = str(tmp_path / "last_week.pt")
    m = _model(sample=(3, 1), iterations=42)
    save_models(path, [m], {"survey": "farm 7"})
    (back,), info = load_models(path)
    assert info == {"survey": "farm 7"} and back.meta() == m.meta()
    assert all(torch.equal(back.weights[k], m.weights[k]) for k in m.weights)
    check_fits([back], path, target_bands=1, scale=4, guide_bands=3, config=cfg)
    for kwargs, words in [({"target_bands": 2}, "1 target band(s), this job has 2"),
                          ({"scale": 2}, "scale x4, this job is x2"),
                          ({"guide_bands": 4}, "3 guide band(s), this job has 4")]:
        args = {"target_bands": 1, "scale": 4, "guide_bands": 3, **kwargs}
        with pytest.raises(InvalidInput, match="last_week.pt") as err:
            check_fits([back], path, config=cfg, **args)
        assert words in str(err.value)
    with pytest.raises(InvalidInput, match="network shapes"):
        check_fits([back], path, target_bands=1, scale=4, guide_bands=3, config=cfg.replace(sr_width=32))
    with pytest.raises(InvalidInput, match="base 'guided'"):
        check_fits([_model(base="guided")], path, target_bands=1, scale=4, guide_bands=3,
                   config=cfg.replace(base=BackProjected()))
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(InvalidInput, match="bad.pt: not a cmsr survey model"):
        load_models(str(tmp_path / "bad.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="junk.pt"):
        load_models(str(tmp_path / "junk.pt"))
    with pytest.raises(InvalidInput, match="not found"):
        load_models(str(tmp_path / "missing.pt"))
    assert np.isfinite(back.weights["sr.0"].numpy()).all()
