"""Internal training + inference: masking, determinism, odd sizes, and a real dev pair."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cmsr.augment import Augmentation, extract, sample_augmentation
from cmsr.config import DEFAULT_PRESET, CMSRConfig
from cmsr.resize import degrade_torch, upsample_torch
from cmsr.train import masked_l1, super_resolve_normalized

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs"
TINY = dataclasses.replace(CMSRConfig.best(), use_warp=True, warp_prealign_iters=0, warp_learn=True,
                           warp_min_registration_px=0.0, gradual=False, max_iters=6, crop_size=16, run_test_every=2)


def _scene(h: int, w: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(1, 1, h * s // 4 + 1, w * s // 4 + 1, generator=g)
    hr = torch.nn.functional.interpolate(hr, size=(h * s, w * s), mode="bilinear", align_corners=False)[0, 0]
    guide = torch.stack([hr, 1 - hr, hr * hr])
    return degrade_torch(hr, s, "bicubic").float(), guide.float()


def test_presets_and_schedule() -> None:
    assert CMSRConfig.preset("paper") == CMSRConfig.paper()
    assert CMSRConfig.preset(DEFAULT_PRESET) is not None
    with pytest.raises(ValueError):
        CMSRConfig.preset("nope")
    p = CMSRConfig.paper()
    assert p.stage_factors(4) == (2, 4) and p.stage_factors(2) == (2,) and p.stage_factors(8) == (2, 4, 8)
    assert p.stage_factors(6) == (2, 4, 6) and CMSRConfig.fast().stage_factors(4) == (2, 4)
    assert CMSRConfig.paper().base == "bicubic" and CMSRConfig.paper().use_warp
    b = CMSRConfig.best()
    assert b.base == "auto" and b.use_warp and b.warp_prealign_iters > 0 and not b.warp_learn
    assert CMSRConfig.paper().warp_learn and CMSRConfig.paper().base_gate is None and CMSRConfig.paper().guide_gate is None
    assert b.guide_gate is not None
    assert (p.crop_size, p.max_iters, p.back_projection_rounds, p.lr_ratio_tps) == (48, 800, 6, 0.2)


def test_invalid_pixels_do_not_affect_the_loss() -> None:
    rng = np.random.default_rng(0)
    img = torch.rand(30, 40)
    valid = torch.ones(30, 40, dtype=torch.bool)
    valid[5:12, 8:20] = False
    cfg = CMSRConfig.paper()
    for _ in range(20):
        aug = sample_augmentation(rng, [(30, 40)], [1], 2, cfg)
        f1, m1 = extract(img, valid, aug)
        garbage = img.clone()
        garbage[~valid] = 1e6
        f2, m2 = extract(garbage, valid, aug)
        assert torch.equal(m1, m2)
        pred = torch.rand_like(f1)
        assert torch.allclose(masked_l1(pred, f1, m1), masked_l1(pred, f2, m2))
    # out-of-source father pixels of an affine crop are masked too
    coords = np.stack(np.meshgrid(np.arange(-5.0, 11.0), np.arange(16.0), indexing="xy"), -1)
    _, m = extract(img, torch.ones_like(valid), Augmentation("affine", 0, coords))
    assert not m[:, :4].any() and m[:, 6:].all()


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    lr, guide = _scene(12, 16, 2)
    valid = torch.ones_like(lr, dtype=torch.bool)
    a = super_resolve_normalized(lr, guide, valid, 2, TINY, seed=3)
    b = super_resolve_normalized(lr, guide, valid, 2, TINY, seed=3)
    c = super_resolve_normalized(lr, guide, valid, 2, TINY, seed=4)
    assert torch.equal(a.image, b.image) and np.array_equal(a.displacement, b.displacement)
    assert not torch.equal(a.image, c.image)


@pytest.mark.parametrize("h,w,s,deg", [(13, 21, 3, "bicubic"), (9, 7, 5, "area"), (10, 15, 4, "bicubic")])
def test_odd_non_square_sizes_and_scales(h: int, w: int, s: int, deg: str) -> None:
    lr, guide = _scene(h, w, s)
    valid = torch.ones_like(lr, dtype=torch.bool)
    valid[0, 0] = False
    cfg = dataclasses.replace(CMSRConfig.paper(), degradation=deg, max_iters=4, crop_size=16, run_test_every=2)
    seen: list[tuple[int, float, float]] = []
    out = super_resolve_normalized(lr, guide, valid, s, cfg, progress=lambda i, l, r: seen.append((i, l, r)))
    assert out.image.shape == (h * s, w * s) and out.image.dtype == torch.float32
    assert torch.isfinite(out.image).all()
    assert out.displacement is not None and out.displacement.shape == (h * s, w * s, 2)
    assert seen and seen[-1][0] == out.stats["iterations"] == 4 * len(cfg.stage_factors(s))
    # back-projection makes the output consistent with the LR under the degradation model
    assert float((degrade_torch(out.image, s, deg) - lr).abs().mean()) < 0.01


def test_zssr_mode_without_guide() -> None:
    lr, _ = _scene(10, 12, 2)
    cfg = dataclasses.replace(TINY, use_guide=False, use_warp=False)
    out = super_resolve_normalized(lr, None, torch.ones_like(lr, dtype=torch.bool), 2, cfg)
    assert out.displacement is None and out.image.shape == (20, 24) and not out.stats["use_guide"]
    assert all(not k.startswith("g.") for k in out.weights)


def test_bad_inputs_are_refused() -> None:
    lr, guide = _scene(8, 8, 2)
    valid = torch.ones_like(lr, dtype=torch.bool)
    with pytest.raises(ValueError, match="guide"):
        super_resolve_normalized(lr, guide[:, :-1], valid, 2, TINY)
    with pytest.raises(ValueError, match="scale"):
        super_resolve_normalized(lr, guide, valid, 9, TINY)
    bad = lr.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        super_resolve_normalized(bad, guide, valid, 2, TINY)


def _psnr_u8(x: np.ndarray, gt: np.ndarray) -> float:
    x = np.clip(np.round(x * 255.0), 0, 255)
    return float(10 * np.log10(255.0**2 / np.mean((x - gt) ** 2)))


@pytest.mark.skipif(not DATA.is_dir(), reason="dev pairs not available")
def test_end_to_end_real_pair_beats_bicubic() -> None:
    from PIL import Image

    d = DATA / "ulb17vt_thermal_x4"
    lr = np.asarray(Image.open(d / "036_lr.png"), dtype=np.float32)
    gt = np.asarray(Image.open(d / "036_gt.png"), dtype=np.float32)
    rgb = np.asarray(Image.open(d / "036_guide.png"), dtype=np.float32)[..., :3]
    lr, gt = (lr[..., 0] if lr.ndim == 3 else lr), (gt[..., 0] if gt.ndim == 3 else gt)
    lr_t = torch.from_numpy(lr / 255.0)
    guide = torch.from_numpy(rgb / 255.0).permute(2, 0, 1).contiguous()
    cfg = dataclasses.replace(CMSRConfig.paper(), gradual=False, max_iters=30, self_ensemble=False)
    out = super_resolve_normalized(lr_t, guide, torch.ones_like(lr_t, dtype=torch.bool), 4, cfg, seed=0)
    bicubic = upsample_torch(lr_t, 4).numpy()
    assert _psnr_u8(out.image.numpy(), gt) > _psnr_u8(bicubic, gt) + 0.3


def test_warp_prealign_moves_the_affine_only_and_batches_identically() -> None:
    """``warp_prealign_iters`` registers the affine before training, and ``cmsr.batched`` does the same."""
    from cmsr.batched import train_tiles

    torch.set_num_threads(1)
    cfg = TINY.replace(warp_prealign_iters=5, max_iters=4, warp_warmup_iters=100, self_ensemble=False)
    pairs = [_scene(12, 14, 4, seed=i) for i in range(2)]
    valids = [torch.ones(12, 14, dtype=torch.bool) for _ in pairs]
    seq = [super_resolve_normalized(lr, g, v, 4, cfg, seed=i) for i, ((lr, g), v) in enumerate(zip(pairs, valids))]
    assert all(o.stats["mean_warp_px"] > 0 for o in seq)  # frozen in training: the move is the prealignment's
    got = train_tiles([p[0] for p in pairs], [p[1] for p in pairs], valids, 4, cfg, seeds=[0, 1])
    for a, b in zip(seq, got):
        torch.testing.assert_close(b.image, a.image, atol=2e-5, rtol=0)
        np.testing.assert_allclose(b.displacement, a.displacement, atol=1e-4)
    assert CMSRConfig.paper().warp_prealign_iters == 0


def test_frozen_pre_registered_warp_is_kept_or_dropped_by_its_size() -> None:
    """``make_warp``: a guide shifted by 6 HR px keeps its registration (about that size), a guide that
    is already registered is reset to the exact identity; with ``warp_learn=False`` training leaves
    the warp as registered, and the batched trainer does the same."""
    from cmsr.batched import train_tiles
    from cmsr.train import make_warp

    torch.set_num_threads(1)
    lr, guide = _scene(20, 24, 4, seed=3)
    valid = torch.ones_like(lr, dtype=torch.bool)
    cfg = TINY.replace(warp_prealign_iters=60, warp_learn=False, warp_min_registration_px=0.5, max_iters=4,
                       self_ensemble=False)
    same = make_warp(guide, lr, valid, 4, cfg)
    assert same.is_identity()
    shifted = torch.roll(guide, shifts=6, dims=-1)
    moved = make_warp(shifted, lr, valid, 4, cfg)
    assert not moved.is_identity() and 3.0 < moved.mean_displacement_px(80, 96) < 9.0
    before = moved.displacement_px(80, 96)
    out = super_resolve_normalized(lr, shifted, valid, 4, cfg, seed=0)
    np.testing.assert_allclose(out.displacement, before, atol=1e-6)  # not trained after registration
    got = train_tiles([lr, lr], [shifted, guide], [valid, valid], 4, cfg, seeds=[0, 1])
    np.testing.assert_allclose(got[0].displacement, before, atol=1e-6)
    assert not got[1].displacement.any()
    torch.testing.assert_close(got[0].image, out.image, atol=2e-5, rtol=0)


@pytest.mark.parametrize("gate", [dict(guide_gate=(0.2, 0.6)),
                                  dict(guide_gate=CMSRConfig.best().guide_gate,
                                       guide_gate_pool=CMSRConfig.best().guide_gate_pool,
                                       guide_gate_flat_var=CMSRConfig.best().guide_gate_flat_var)],
                         ids=["mean-pool", "as-in-best"])
def test_guide_gate_keeps_a_textured_guide_out_of_a_flat_target(gate: dict) -> None:
    """``guide_gate``: where the LR is flat under a textured guide the output is the network's own
    without the guide; where the guide explains the LR the guide's contribution is kept."""
    from cmsr import model as M
    from cmsr.baselines import guide_confidence
    from cmsr.train import _Guide, infer_stage

    torch.set_num_threads(1)
    lr, guide = _scene(16, 20, 4, seed=5)
    lr = lr.clone()
    lr[:, :8] = 0.5  # flat left part of the target...
    gen = torch.Generator().manual_seed(7)
    guide = guide.clone()
    guide[:, :, :32] = torch.rand(3, 64, 32, generator=gen)  # ...under foreign texture in the guide
    params = M.init_params(3, sr_depth=3, sr_width=8, guide_depth=3, guide_width=8, seed=0)
    for k in ("g.0", "g.1", "g.2"):  # a guide branch that clearly moves the output
        params[k] = params[k] * 30.0
    cfg = TINY.replace(sr_depth=3, sr_width=8, guide_depth=3, guide_width=8, self_ensemble=False, guide_gate=None)
    gd = _Guide(guide, tuple(lr.shape), None, "point")
    plain = infer_stage(params, lr, gd, 4, cfg, "bp")
    gated = infer_stage(params, lr, gd, 4, cfg.replace(**gate), "bp")
    own = infer_stage({k: v for k, v in params.items() if k.startswith("sr.")}, lr, None, 4, cfg, "bp")
    conf = guide_confidence(lr, guide, 4, gate["guide_gate"], pool=gate.get("guide_gate_pool", "mean"),
                            flat_guide_var=gate.get("guide_gate_flat_var", 0.0))
    assert float(conf[:, :12].max()) == 0.0 and float(conf[:, 52:].mean()) > 0.9
    flat = (slice(4, -4), slice(0, 12))
    d_plain, d_gated = float((plain - own)[flat].abs().mean()), float((gated - own)[flat].abs().mean())
    assert d_plain > 1e-2 and d_gated < 0.2 * d_plain, (d_plain, d_gated)  # ungated, the texture gets in
    scene = (slice(8, -8), slice(52, -8))
    assert float((gated - plain)[scene].abs().mean()) < 0.2 * float((plain - own)[scene].abs().mean())
