"""Network layout, initialisation, and the stacked (K-tile) forward pass."""

from __future__ import annotations

import torch

from cmsr import model as M


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
    p = M.stacked(M.init_params(4, seed=1))
    up, g = torch.rand(1, 1, 9, 13), torch.rand(1, 4, 9, 13)
    out = M.forward(p, up, g)
    assert out.shape == (1, 1, 9, 13)
    assert torch.allclose(out, up + M.conv_chain(p, "sr", up) + M.conv_chain(p, "g", g))
    zero = {k: torch.zeros_like(v) for k, v in p.items()}
    assert torch.equal(M.forward(zero, up, g), up)


def test_stacked_tiles_see_only_their_own_weights() -> None:
    """The grouped convolution of K tiles equals each tile's own plain convolution stack."""
    ws = [M.init_params(3, sr_depth=3, sr_width=8, guide_depth=3, guide_width=8, seed=s) for s in range(3)]
    stacked = {k: torch.stack([w[k] for w in ws]) for k in ws[0]}
    x = torch.rand(3, 1, 10, 12)
    both = M.conv_chain(stacked, "sr", x)
    for i in range(3):
        torch.testing.assert_close(both[i:i + 1], M.conv_chain(M.stacked(ws[i]), "sr", x[i:i + 1]))
