"""The non-learned image the residuals are added to, and its per-image choice (``auto``).

CMSR's networks learn a residual over ``up(T)`` (the paper's bicubic). Over a better base they
learn less and fail less: back-projection (consistency with the LR under the degradation model),
or a colour-guided filter that transfers guide edges where a local linear fit says the guide
explains the LR (:class:`cmsr.config.GuidedBase`). Which one a pair wants differs (registered
thermal: little transfer; NIR: much), so :class:`cmsr.config.AutoBase` decides per image by how
well each candidate reconstructs the LR from its own degraded copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .baselines import back_projection, guided_filter_upsample
from .config import AutoBase, BackProjected, Base, Bicubic, Degradation, FixedBase, GuidedBase
from .resize import degrade_torch, upsample_torch


def make_base(small: torch.Tensor, factor: int, base: FixedBase, guide: torch.Tensor | None,
              degradation: Degradation) -> torch.Tensor:
    """``base`` of an (h, w) image on the ``factor`` x grid; ``guide`` (C, fh, fw) for a guided base."""
    if isinstance(base, GuidedBase):
        if guide is None:
            raise ValueError("a guided base needs the guide")
        return guided_filter_upsample(small, guide.detach(), factor, base.filter, degradation=degradation)
    up = upsample_torch(small, factor)
    if isinstance(base, Bicubic):
        return up
    return back_projection(up, small, factor, base.rounds, degradation)


@torch.no_grad()
def make_bases(small: torch.Tensor, factor: int, bases: Sequence[FixedBase], guides: torch.Tensor | None,
               degradation: Degradation) -> torch.Tensor:
    """The bases of n images at once: small (n, h, w), one base each, guides (n, C, fh, fw).

    Bicubic and back-projection with one setting for the whole batch run as one computation; a
    guided base (a per-pixel float64 filter) image by image.
    """
    first = bases[0]
    if all(b == first for b in bases) and not isinstance(first, GuidedBase):
        up = upsample_torch(small, factor)
        return up if isinstance(first, Bicubic) else back_projection(up, small, factor, first.rounds, degradation)
    return torch.stack([make_base(small[i], factor, b, None if guides is None else guides[i], degradation)
                        for i, b in enumerate(bases)])


@torch.no_grad()
def choose_base(lr: torch.Tensor, valid: torch.Tensor, base: Base, guide_at_lr: torch.Tensor | None,
                degradation: Degradation) -> FixedBase:
    """The base of this image: ``base`` itself, or for :class:`AutoBase` the candidate with the
    least squared error (valid pixels) reconstructing ``lr`` from ``degrade(lr, factor)`` (on the
    largest top-left crop divisible by the factor).

    ``guide_at_lr``: the (deformed) guide sampled at the LR's pixel centres (C, h, w), or None."""
    if not isinstance(base, AutoBase):
        return base
    f = base.factor
    h, w = lr.shape
    hc, wc = (h // f) * f, (w // f) * f
    if guide_at_lr is None or hc < f or wc < f:
        return base.candidates[0]
    target, mask, guide = lr[:hc, :wc], valid[:hc, :wc], guide_at_lr[:, :hc, :wc]
    son = degrade_torch(target, f, degradation)
    errors = {}
    for cand in base.candidates:
        out = make_base(son, f, cand, guide if cand.needs_guide else None, degradation)
        errors[cand.name] = float((((out - target) ** 2) * mask).sum())
    best = min(errors, key=errors.__getitem__)
    return next(c for c in base.candidates if c.name == best)


BACK_PROJECTED = BackProjected()
"""The base of the guide gate's reference run (the network without F_g)."""
