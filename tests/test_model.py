"""Network layout, initialisation, and gradient isolation between F_sr and F_g + warp."""

from __future__ import annotations

import torch

from cmsr import model as M
from cmsr.train import compute_losses
from cmsr.warp import GuideWarp, pixel_centers, sample


def test_layer_specs_and_init() -> None:
    p = M.init_params(3, seed=0)
    sr = [p[f"sr.{i}"].shape for i in range(8)]
    assert sr[0] == (64, 1, 3, 3) and sr[-1] == (1, 64, 3, 3) and all(s == (64, 64, 3, 3) for s in sr[1:-1])
    assert [tuple(p[f"g.{i}"].shape) for i in range(4)] == [(16, 3, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (1, 16, 1, 1)]
    assert not any("bias" in k for k in p)
    w = p["sr.3"]  # N(0, 0.1 / fan_in), fan_in = 64 * 9
    assert abs(float(w.var()) - 0.1 / 576) < 0.1 * 0.1 / 576
    assert M.init_params(None)["sr.0"].shape == (64, 1, 3, 3) and not M.has_guide_branch(M.init_params(None))
    assert torch.equal(M.init_params(3, seed=5)["g.0"], M.init_params(3, seed=5)["g.0"])


def test_forward_is_residual_over_up_and_adds_the_guide_branch() -> None:
    p = M.init_params(4, seed=1)
    up, g = torch.rand(1, 1, 9, 13), torch.rand(1, 4, 9, 13)
    out = M.forward(p, up, g)
    assert out.shape == (1, 1, 9, 13)
    assert torch.allclose(out, up + M.sr_residual(p, up) + M.guide_residual(p, g))
    zero = {k: torch.zeros_like(v) for k, v in p.items()}
    assert torch.equal(M.forward(zero, up, g), up)


def test_gradient_isolation() -> None:
    torch.manual_seed(0)
    net = M.CMSRNet(M.init_params(3, seed=0))
    warp = GuideWarp()
    guide = torch.rand(3, 40, 40)
    crop = sample(guide, warp(pixel_centers(16, 16) * 0.5))
    up, father = torch.rand(16, 16), torch.rand(16, 16)
    mask = torch.ones(16, 16, dtype=torch.bool)
    loss_sr, loss_full = compute_losses(net.params(), up, father, mask, crop)
    assert loss_full is not None
    loss_full.backward(retain_graph=True)
    assert all(p.grad is None for p in net.sr_parameters())  # F_sr: nothing from the full-output loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.guide_parameters())
    assert warp.affine.grad is not None and warp.affine.grad.abs().sum() > 0
    for p in list(net.parameters()) + list(warp.parameters()):
        p.grad = None
    loss_sr.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.sr_parameters())
    assert all(p.grad is None for p in net.guide_parameters()) and warp.affine.grad is None


def test_state_round_trip() -> None:
    net = M.CMSRNet(M.init_params(3, seed=2))
    st = net.state()
    net2 = M.CMSRNet(st)
    x, g = torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8)
    assert torch.equal(net(x, g), net2(x, g))
