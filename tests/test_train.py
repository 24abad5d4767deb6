"""The one trainer: config shape, masking, determinism, batch invariance, the loss against a tiny
reference, registration, the guide gate, and a real dev pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmsr import model as M
from cmsr.augment import Augmentation, extract, sample_augmentation
from cmsr.bases import BACK_PROJECTED
from cmsr.config import (AutoBase, BackProjected, Bicubic, CMSRConfig, Gate, GuidedBase, LearnedWarp,
                         Registration)
from cmsr.guide import TileGuide
from cmsr.infer import infer_stage
from cmsr.registration import register
from cmsr.resize import degrade_torch, upsample_torch
from cmsr.runtime import device_policy
from cmsr.losses import masked_l1
from cmsr.train import train
from cmsr.warp import AffineWarp, GuideWarp
from dev_tiles import dev_tiles

TINY = CMSRConfig.paper().replace(gradual=False, max_iters=6, crop_size=16, run_test_every=2)
# a budget where the lr policy really acts (it drops inside the run) yet CI-cheap
POLICY = CMSRConfig.paper().replace(max_iters=24, min_iters=6, crop_size=16, run_test_every=3,
                                    lr_policy_check_every=6, lr_slope_points=4)


def _scene(h: int, w: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(1, 1, h * s // 4 + 1, w * s // 4 + 1, generator=g)
    hr = F.interpolate(hr, size=(h * s, w * s), mode="bilinear", align_corners=False)[0, 0]
    guide = torch.stack([hr, 1 - hr, hr * hr])
    return degrade_torch(hr, s, "bicubic").float(), guide.float()


def _one(lr, guide, valid, scale, config, seed=0, **kw):  # type: ignore[no-untyped-def]
    return train([lr], [guide], [valid], scale, config, seeds=[seed], **kw)[0]


def test_presets_read_as_groups_and_invalid_combinations_are_refused() -> None:
    p, b = CMSRConfig.paper(), CMSRConfig.best()
    assert p.stage_factors(4) == (2, 4) and p.stage_factors(8) == (2, 4, 8) and p.stage_factors(6) == (2, 4, 6)
    assert isinstance(p.base, Bicubic) and p.registration is None and p.guide_gate is None
    assert p.warp == LearnedWarp() and p.warp.lr_ratio_tps == 0.2
    assert isinstance(b.base, AutoBase) and [c.name for c in b.base.candidates] == ["bp", "guided", "guided_smooth"]
    assert b.registration == Registration(search_px=4, descent_iters=100, min_px=0.5) and b.warp is None
    assert b.guide_gate == Gate(0.02, 0.1, pool="min", flat_guide_var=0.01)
    assert CMSRConfig.fast() == b.replace(max_iters=250, min_iters=120)
    with pytest.raises(ValueError, match="registration, warp"):
        CMSRConfig(guide=None, registration=Registration())
    with pytest.raises(ValueError, match="GuidedBase"):
        CMSRConfig(guide=None, warp=None, base=GuidedBase())
    with pytest.raises(ValueError):
        Gate(0.6, 0.2)
    z = b.without_guide()
    assert z.guide is None and z.base == BackProjected() and z.registration is None and z.guide_gate is None
    assert b.without_warp().registration is None and b.without_warp().warp is None


def test_invalid_pixels_do_not_affect_the_loss() -> None:
    rng = np.random.default_rng(0)
    policy = device_policy("cpu")
    img = torch.rand(30, 40)
    valid = torch.ones(30, 40, dtype=torch.bool)
    valid[5:12, 8:20] = False
    garbage = img.clone()
    garbage[~valid] = 1e6
    for _ in range(20):
        aug = sample_augmentation(rng, [(30, 40)], [1], 2, CMSRConfig.paper())
        coords = torch.from_numpy(aug.coords).float()[None]
        f1, m1 = extract(torch.stack([img, valid.float()])[None], coords, [aug.interpolate], policy)
        f2, m2 = extract(torch.stack([garbage, valid.float()])[None], coords, [aug.interpolate], policy)
        assert torch.equal(m1, m2)
        pred = torch.rand_like(f1)
        assert torch.allclose(masked_l1(pred, f1, m1), masked_l1(pred, f2, m2))
    # out-of-source father pixels of an affine crop are masked too
    coords = np.stack(np.meshgrid(np.arange(-5.0, 11.0), np.arange(16.0), indexing="xy"), -1)
    aug = Augmentation("affine", 0, coords)
    _, m = extract(torch.stack([img, torch.ones(30, 40)])[None], torch.from_numpy(coords).float()[None], [True],
                   policy)
    assert aug.interpolate and not m[0, :, :4].any() and m[0, :, 6:].all()


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    lr, guide = _scene(12, 16, 2)
    valid = torch.ones_like(lr, dtype=torch.bool)
    a, b, c = (_one(lr, guide, valid, 2, TINY, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.image, b.image) and np.array_equal(a.displacement, b.displacement)
    assert not torch.equal(a.image, c.image)


@pytest.mark.parametrize("h,w,s,deg", [(13, 21, 3, "bicubic"), (9, 7, 5, "area"), (10, 15, 4, "bicubic")])
def test_odd_non_square_sizes_and_scales(h: int, w: int, s: int, deg: str) -> None:
    lr, guide = _scene(h, w, s)
    valid = torch.ones_like(lr, dtype=torch.bool)
    valid[0, 0] = False
    cfg = CMSRConfig.paper().replace(degradation=deg, max_iters=4, crop_size=16, run_test_every=2)
    seen: list[tuple[int, int, float, float]] = []
    out = _one(lr, guide, valid, s, cfg, progress=lambda *a: seen.append(a))
    assert out.image.shape == (h * s, w * s) and out.image.dtype == torch.float32 and torch.isfinite(out.image).all()
    assert out.displacement is not None and out.displacement.shape == (h * s, w * s, 2)
    stages = len(cfg.stage_factors(s))
    assert out.stats["iterations"] == 4 * stages
    assert [x[1] for x in seen] == [i for st in range(stages) for i in (4 * st + 1, 4 * st + 3, 4 * st + 4)]
    # back-projection makes the output consistent with the LR under the degradation model
    assert float((degrade_torch(out.image, s, deg) - lr).abs().mean()) < 0.01


def test_zssr_mode_without_guide() -> None:
    lr, guide = _scene(10, 12, 2)
    out = _one(lr, guide, torch.ones_like(lr, dtype=torch.bool), 2, TINY.without_guide())
    assert out.displacement is None and out.image.shape == (20, 24) and not out.stats["use_guide"]
    assert out.weights is not None and all(not k.startswith("g.") for k in out.weights)


def test_bad_inputs_are_refused() -> None:
    lr, guide = _scene(8, 8, 2)
    valid = torch.ones_like(lr, dtype=torch.bool)
    with pytest.raises(ValueError, match="guide"):
        _one(lr, guide[:, :-1], valid, 2, TINY)
    with pytest.raises(ValueError, match="scale"):
        _one(lr, guide, valid, 9, TINY)
    bad = lr.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _one(bad, guide, valid, 2, TINY)
    with pytest.raises(ValueError, match="seeds"):
        train([lr, lr], [guide, guide], [valid, valid], 2, TINY, seeds=[0])


def _assert_same(a, b, atol: float = 2e-5) -> None:  # type: ignore[no-untyped-def]
    torch.testing.assert_close(a.image, b.image, atol=atol, rtol=0)
    assert a.stats["iterations"] == b.stats["iterations"]
    assert [s["iterations"] for s in a.stats["stages"]] == [s["iterations"] for s in b.stats["stages"]]
    if a.displacement is not None:
        np.testing.assert_allclose(a.displacement, b.displacement, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "best"])
def test_batch_invariance(shared_data, preset: str) -> None:  # type: ignore[no-untyped-def]
    """K = 1 and K = 3 give each tile the same result, and a tile's result does not depend on its batch
    neighbours (to float rounding), with the lr policy acting (drops and stops inside the run)."""
    torch.set_num_threads(1)
    lrs, guides, valids = dev_tiles(shared_data, 4)
    cfg = POLICY if preset == "paper" else CMSRConfig.best().replace(
        max_iters=24, min_iters=6, crop_size=16, run_test_every=3, lr_policy_check_every=6, lr_slope_points=4,
        registration=Registration(search_px=1, descent_iters=5))
    alone = [_one(lr, g, v, 4, cfg, seed=10 + i) for i, (lr, g, v) in enumerate(zip(lrs[:3], guides, valids))]
    together = train(lrs[:3], guides[:3], valids[:3], 4, cfg, seeds=[10, 11, 12])
    for a, b in zip(alone, together):
        _assert_same(a, b)
        assert b.stats["batch_size"] == 3
    other = train([lrs[0], lrs[3]], [guides[0], guides[3]], [valids[0], valids[3]], 4, cfg, seeds=[10, 99])
    _assert_same(together[0], other[0])
    if preset == "paper":  # the policy really acted: the learning rate dropped inside the run
        assert any(s["final_lr"] < cfg.learning_rate for o in together for s in o.stats["stages"])
    else:
        assert {o.stats["base"] for o in together} <= {"bp", "guided", "guided_smooth"}


def _reference_losses(weights: M.Params, up: torch.Tensor, father: torch.Tensor, mask: torch.Tensor,
                      guide_crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's two losses for one father, written plainly: (L1 of up + F_sr, L1 of the full output
    with F_sr detached)."""
    def chain(prefix: str, x: torch.Tensor) -> torch.Tensor:
        keys = sorted((k for k in weights if k.startswith(prefix)), key=lambda k: int(k.split(".")[1]))
        for j, k in enumerate(keys):
            x = F.conv2d(x, weights[k], padding=weights[k].shape[-1] // 2)
            x = F.relu(x) if j < len(keys) - 1 else x
        return x

    sr = up + chain("sr.", up[None, None])[0, 0]
    m = mask.float()
    full = sr.detach() + chain("g.", guide_crop[None])[0, 0]
    return ((sr - father).abs() * m).sum() / m.sum(), ((full - father).abs() * m).sum() / m.sum()


def test_the_batched_losses_equal_the_reference_and_isolate_the_gradients() -> None:
    """``M.conv_chain`` over K stacked tiles gives every tile the reference losses of its own weights;
    loss_sr reaches only F_sr, loss_full only F_g and the warp."""
    torch.manual_seed(0)
    ws = [M.init_params(3, sr_depth=3, sr_width=8, guide_depth=3, guide_width=8, seed=s) for s in range(3)]
    stacked = {k: torch.stack([w[k] for w in ws]).requires_grad_() for k in ws[0]}
    up, father, guide = torch.rand(3, 16, 16), torch.rand(3, 16, 16), torch.rand(3, 3, 16, 16)
    mask = torch.rand(3, 16, 16) > 0.2
    warp = GuideWarp()
    moved = F.grid_sample(guide, warp(torch.rand(3, 256, 2) * 1.6 - 0.8).reshape(3, 16, 16, 2), align_corners=False)
    sr = up + M.conv_chain(stacked, "sr", up[:, None])[:, 0]
    loss_sr = masked_l1(sr, father, mask)
    loss_full = masked_l1(sr.detach() + M.conv_chain(stacked, "g", moved)[:, 0], father, mask)
    for i in range(3):
        ref_sr, ref_full = _reference_losses(ws[i], up[i], father[i], mask[i], moved[i].detach())
        torch.testing.assert_close(loss_sr[i], ref_sr, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(loss_full[i], ref_full, atol=1e-6, rtol=1e-5)
    loss_full.sum().backward(retain_graph=True)
    assert all(stacked[k].grad is None for k in stacked if k.startswith("sr."))
    assert all(float(stacked[k].grad.abs().sum()) > 0 for k in stacked if k.startswith("g."))
    assert warp.affine.grad is not None and float(warp.affine.grad.abs().sum()) > 0
    for v in stacked.values():
        v.grad = None
    loss_sr[1].backward()
    g = stacked["sr.0"].grad
    assert g is not None and float(g[1].abs().sum()) > 0 and not g[0].any() and not g[2].any()
    assert all(stacked[k].grad is None for k in stacked if k.startswith("g."))


@pytest.mark.slow
def test_end_to_end_real_pair_beats_bicubic(shared_data) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    d = shared_data / "pairs" / "ulb17vt_thermal_x4"
    lr = np.asarray(Image.open(d / "036_lr.png").convert("L"), dtype=np.float32)
    gt = np.asarray(Image.open(d / "036_gt.png").convert("L"), dtype=np.float32)
    rgb = np.asarray(Image.open(d / "036_guide.png").convert("RGB"), dtype=np.float32)
    lr_t = torch.from_numpy(lr / 255.0)
    guide = torch.from_numpy(rgb / 255.0).permute(2, 0, 1).contiguous()
    cfg = CMSRConfig.paper().replace(gradual=False, max_iters=30, self_ensemble=False)
    out = _one(lr_t, guide, torch.ones_like(lr_t, dtype=torch.bool), 4, cfg)

    def psnr(x: np.ndarray) -> float:
        return float(10 * np.log10(255.0**2 / np.mean((np.clip(np.round(x * 255.0), 0, 255) - gt) ** 2)))

    assert psnr(out.image.numpy()) > psnr(upsample_torch(lr_t, 4).numpy()) + 0.3


def test_registration_is_kept_or_dropped_by_its_size_and_frozen_in_training() -> None:
    """A guide shifted by 6 HR px keeps its registration (about that size), an already registered guide
    is used as given; without a learned warp the registration is all the geometry training sees, and
    the paper's learned levels are not built."""
    torch.set_num_threads(1)
    lr, guide = _scene(20, 24, 4, seed=3)
    valid = torch.ones_like(lr, dtype=torch.bool)
    reg = Registration(search_px=4, descent_iters=60, min_px=0.5)
    assert register(guide, lr, valid, 4, reg) is None
    shifted = torch.roll(guide, shifts=6, dims=-1)
    affine = register(shifted, lr, valid, 4, reg)
    assert affine is not None
    warp = AffineWarp(affine)
    from cmsr.warp import displacement_px, mean_displacement_px

    assert 3.0 < mean_displacement_px(warp, 80, 96) < 9.0
    cfg = TINY.replace(registration=reg, warp=None, max_iters=4, self_ensemble=False)
    got = train([lr, lr], [shifted, guide], [valid, valid], 4, cfg, seeds=[0, 1])
    np.testing.assert_allclose(got[0].displacement, displacement_px(warp, 80, 96), atol=1e-6)
    assert got[1].displacement is None and got[1].stats["mean_warp_px"] == 0.0 and not got[1].stats["use_warp"]
    learned = train([lr], [shifted], [valid], 4, cfg.replace(warp=LearnedWarp(warmup_iters=100)), seeds=[0])[0]
    np.testing.assert_allclose(learned.displacement, displacement_px(warp, 80, 96), atol=1e-5)  # warm-up: frozen


@pytest.mark.parametrize("gate", [Gate(0.2, 0.6), CMSRConfig.best().guide_gate], ids=["mean-pool", "as-in-best"])
def test_guide_gate_keeps_a_textured_guide_out_of_a_flat_target(gate: Gate) -> None:
    """Where the LR is flat under a textured guide the output is the network's own without the guide;
    where the guide explains the LR the guide's contribution is kept."""
    from cmsr.baselines import guide_confidence

    torch.set_num_threads(1)
    lr, guide = _scene(16, 20, 4, seed=5)
    lr = lr.clone()
    lr[:, :8] = 0.5  # flat left part of the target...
    guide = guide.clone()
    guide[:, :, :32] = torch.rand(3, 64, 32, generator=torch.Generator().manual_seed(7))  # ...under foreign texture
    params = M.init_params(3, sr_depth=3, sr_width=8, guide_depth=3, guide_width=8, seed=0)
    for k in ("g.0", "g.1", "g.2"):  # a guide branch that clearly moves the output
        params[k] = params[k] * 30.0
    cfg = TINY.replace(self_ensemble=False, guide_gate=None)
    tile_guide = TileGuide(guide, tuple(lr.shape), None, "point")
    plain = infer_stage(params, lr, tile_guide, 4, cfg, BACK_PROJECTED)
    gated = infer_stage(params, lr, tile_guide, 4, cfg.replace(guide_gate=gate), BACK_PROJECTED)
    own = infer_stage({k: v for k, v in params.items() if k.startswith("sr.")}, lr, None, 4, cfg, BACK_PROJECTED)
    conf = guide_confidence(lr, guide, 4, gate)
    assert float(conf[:, :12].max()) == 0.0 and float(conf[:, 52:].mean()) > 0.9
    flat = (slice(4, -4), slice(0, 12))
    d_plain, d_gated = float((plain - own)[flat].abs().mean()), float((gated - own)[flat].abs().mean())
    assert d_plain > 1e-2 and d_gated < 0.2 * d_plain, (d_plain, d_gated)  # ungated, the texture gets in
    scene = (slice(8, -8), slice(52, -8))
    assert float((gated - plain)[scene].abs().mean()) < 0.2 * float((plain - own)[scene].abs().mean())


def test_gate_reference_ensemble_switch_runs_one_reference_member(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """gate_reference_ensemble=False: the guided run keeps its 8 members, the gate's reference one;
    True (shipped): 8 + 8. Where the gate is closed the output follows that reference."""
    lr, guide = _scene(16, 20, 4, seed=5)
    lr = lr.clone()
    lr[:, :8] = 0.5 + 0.05 * torch.rand(16, 8, generator=torch.Generator().manual_seed(3))  # the gate closes here
    guide = guide.clone()
    guide[:, :, :32] = torch.rand(3, 64, 32, generator=torch.Generator().manual_seed(7))
    params = M.init_params(3, sr_depth=3, sr_width=8, guide_depth=3, guide_width=8, seed=0)
    tile_guide = TileGuide(guide, tuple(lr.shape), None, "point")
    calls: list[bool] = []
    real = M.forward

    def counting(batch, up, g):  # type: ignore[no-untyped-def]
        calls.append(g is not None)
        return real(batch, up, g)

    monkeypatch.setattr(M, "forward", counting)
    cfg = TINY.replace(guide_gate=Gate(0.2, 0.6))
    full = infer_stage(params, lr, tile_guide, 4, cfg, BACK_PROJECTED)
    assert (calls.count(True), calls.count(False)) == (8, 8)
    calls.clear()
    cut = infer_stage(params, lr, tile_guide, 4, cfg.replace(gate_reference_ensemble=False), BACK_PROJECTED)
    assert (calls.count(True), calls.count(False)) == (8, 1)
    assert full.shape == cut.shape and not torch.equal(full, cut)
