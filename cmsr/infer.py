"""Inference of one stage: self-ensembled, back-projected, optionally guide-gated.

``up(LR) + F_sr + F_g(deformed guide on the stage grid)`` for each of the 8 geometric ensemble
members, each back-projected onto the LR, the pixel-wise median, back-projected again. With a
guide gate the same is run without F_g on the back-projection base, and the output is blended
towards that reference wherever the guide does not explain the LR (:class:`cmsr.config.Gate`).
"""

from __future__ import annotations

import torch

from . import model as M
from .baselines import back_projection, guide_confidence
from .bases import BACK_PROJECTED, make_base
from .config import CMSRConfig, FixedBase
from .guide import TileGuide


def _transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Ensemble member k of 8: rotate by k % 4 quarter turns, then flip when k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def _untransform(x: torch.Tensor, k: int) -> torch.Tensor:
    y = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def _median(stack: torch.Tensor) -> torch.Tensor:
    """Pixel-wise median over dim 0 (mean of the two middle values for an even count, as numpy)."""
    s, _ = torch.sort(stack, dim=0)
    n = s.shape[0]
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


@torch.no_grad()
def infer_stage(weights: M.Params, lr: torch.Tensor, guide: TileGuide | None, factor: int, config: CMSRConfig,
                base: FixedBase) -> torch.Tensor:
    """One tile's output on the grid ``factor`` x the LR; ``weights`` are the tile's own (unstacked)."""
    g = guide.stage_grid(factor) if guide is not None else None
    y = _ensemble(weights, lr, g, factor, config, base)
    if g is None or config.guide_gate is None or not M.has_guide_branch(weights):
        return y
    without_guide = {k: v for k, v in weights.items() if not k.startswith("g.")}
    reference = _ensemble(without_guide, lr, None, factor, config, BACK_PROJECTED,
                          members=8 if config.self_ensemble and config.gate_reference_ensemble else 1)
    c = guide_confidence(lr, g, factor, config.guide_gate)
    return back_projection(reference + c * (y - reference), lr, factor, config.back_projection_rounds,
                           config.degradation)


def _ensemble(weights: M.Params, lr: torch.Tensor, g: torch.Tensor | None, factor: int, config: CMSRConfig,
              base: FixedBase, members: int | None = None) -> torch.Tensor:
    """The median of ``members`` geometric ensemble members (default: 8 with ``self_ensemble``, else 1)."""
    up = make_base(lr, factor, base, g, config.degradation)
    batch = M.stacked(weights)
    outs = []
    for k in range(members if members is not None else (8 if config.self_ensemble else 1)):
        gk = _transform(g, k)[None] if g is not None else None
        o = _untransform(M.forward(batch, _transform(up, k)[None, None], gk)[0, 0], k)
        outs.append(back_projection(o, lr, factor, config.back_projection_rounds, config.degradation))
    y = _median(torch.stack(outs)) if len(outs) > 1 else outs[0]
    return back_projection(y, lr, factor, config.back_projection_rounds, config.degradation)
