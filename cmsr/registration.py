"""Registration of the guide to the LR before training (a deviation from the paper).

Why: trained only through the full-output L1 of a small guide branch (the paper's scheme), the
warp gets a weak, misleading gradient and does not recover a misalignment of a few pixels
(benchmarks/RESULTS.md, stress tests). A cross-modal criterion with a wide, smooth basin is the
residual of a *local linear fit* of the target by the warped guide: the guided filter (He et al.)
of the target with the warped guide as its guide reproduces the target well exactly where the
guide's edges sit on the target's. It is minimised over the guide's global affine, after a search
over whole-pixel shifts (a descent alone stalls on the weak signal a few pixels away), coarse to
fine on the target's grid /4, /2 and /1 (the guide resized to each). The descent is run twice from
the searched shift, once for the shift alone and once for the whole affine, and the affine is kept
only when it ends with the lower criterion: on 2 of the 16 thermal dev pairs the affine's descent
ends in a worse minimum than the shift alone (a 9 % zoom, a 16 % squeeze), and a pasted object can
tip a pair into one (benchmarks/RESULTS.md, issue 14 part 2).

A survey registers every tile first (``estimate``: the fit plus how far it can be trusted), makes
one consistent field of them (``pipelines``) and hands each tile its affine back
(``cmsr.run_many(..., registrations=)``); ``register`` is the same fit for a tile alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .baselines import guided_filter
from .config import Registration
from .resize import imresize_torch
from .warp import AffineWarp, mean_displacement_px, pixel_centers, sample


def register(guide: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, scale: int,
             settings: Registration) -> torch.Tensor | None:
    """The (2, 3) affine of normalised coordinates that registers ``guide`` (C, H, W, any grid of
    the scene) to ``target`` (h, w), or None when it would move the guide by less than
    ``settings.min_px`` HR pixels on average (the guide is then used as given)."""
    warp = AffineWarp().to(target.device)
    fit_affine(warp, guide, target, valid, settings)
    affine = warp.affine.detach().clone()
    return affine if moves_guide(affine, tuple(target.shape), scale, settings) else None


def moves_guide(affine: torch.Tensor, lr_shape: tuple[int, int], scale: int, settings: Registration) -> bool:
    """Whether ``affine`` moves the guide by at least ``settings.min_px`` HR pixels on average: the
    one rule that decides between an affine and the guide as given (``register`` and a survey's field)."""
    h, w = lr_shape
    return mean_displacement_px(AffineWarp(affine), scale * h, scale * w) >= settings.min_px


@dataclass(frozen=True)
class RegistrationEstimate:
    """One tile's registration as a survey needs it: the fit, and what says whether to trust it."""

    affine: np.ndarray
    """(2, 3) float32 affine of normalised coordinates, as fitted (``min_px`` not applied)."""
    moves_guide: bool
    """The fit moves the guide by at least ``min_px`` HR pixels on average (``register`` keeps it)."""
    guide_texture: float
    """Mean absolute difference between neighbouring LR pixels of the guide's band mean (the guide
    resized to the LR grid, normalised units, over the target's valid pixels): ~0 for a flat guide,
    whose shift nothing can measure."""
    search_contrast: float | None
    """(median - minimum) / median of the criterion over the whole-pixel shifts searched: how clearly
    one shift wins (0: a flat criterion, no shift measurable). None without a search."""


def estimate(guide: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, scale: int,
             settings: Registration) -> RegistrationEstimate:
    """``register``'s fit (the same computation, the same affine) with the measures a survey uses
    to tell a measured shift from a guess."""
    warp = AffineWarp().to(target.device)
    trace = _fit(warp, guide, target, valid, settings)
    affine = warp.affine.detach().clone()
    return RegistrationEstimate(
        affine=affine.cpu().numpy().astype(np.float32), moves_guide=moves_guide(affine, tuple(target.shape), scale,
                                                                                settings),
        guide_texture=guide_texture(guide, valid, tuple(target.shape)), search_contrast=trace.search_contrast)


def guide_texture(guide: torch.Tensor, valid: torch.Tensor | None, lr_shape: tuple[int, int]) -> float:
    """See ``RegistrationEstimate.guide_texture``."""
    with torch.no_grad():
        g = imresize_torch(guide.detach().to(torch.float32), output_shape=lr_shape).mean(0).double()
        m = torch.ones(lr_shape, dtype=torch.bool, device=g.device) if valid is None else valid.to(g.device, torch.bool)
        dx, mx = (g[:, 1:] - g[:, :-1]).abs(), m[:, 1:] & m[:, :-1]
        dy, my = (g[1:, :] - g[:-1, :]).abs(), m[1:, :] & m[:-1, :]
        count = int(mx.sum()) + int(my.sum())
        return float((dx[mx].sum() + dy[my].sum()) / count) if count else 0.0


@dataclass(frozen=True)
class _FitTrace:
    level_losses: list[float]
    search_contrast: float | None


def fit_affine(warp: AffineWarp, guide: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
               settings: Registration) -> list[float]:
    """Minimise the local-fit residual over ``warp.affine`` in place; the final loss of each level."""
    return _fit(warp, guide, target, valid, settings).level_losses


def _fit(warp: AffineWarp, guide: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
         settings: Registration) -> _FitTrace:
    """``fit_affine``, also returning how clearly the shift search found its minimum."""
    radius, eps = settings.radius, settings.eps
    h, w = target.shape
    dev = warp.affine.device
    tgt0 = target.detach().to(dev, torch.float32)
    m0 = torch.ones_like(tgt0) if valid is None else valid.detach().to(dev, torch.float32)
    g0 = guide.detach().to(dev, torch.float32)

    def fit_loss(gl: torch.Tensor, tgt: torch.Tensor, msk: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        fit = guided_filter(sample(gl, warp(pts)).double(), tgt.double(), radius, eps)
        return ((fit - tgt.double()).abs() * msk).sum() / msk.sum().clamp_min(1.0)

    search = settings.search_px
    contrast: float | None = None
    full_guide, full_pts = imresize_torch(g0, output_shape=(h, w)), pixel_centers(h, w, dev)
    if search > 0:
        gl, pts = full_guide, full_pts
        start = warp.affine.detach().clone()
        best, best_t = float("inf"), start[:, 2].clone()
        shifts = sorted(((dy, dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)),
                        key=lambda d: (d[0] ** 2 + d[1] ** 2, d))  # nearest first: a tie keeps the smaller shift
        searched: list[float] = []
        with torch.no_grad():
            for dy, dx in shifts:
                warp.affine[:, 2] = start[:, 2] + torch.tensor([2.0 * dx / w, 2.0 * dy / h], device=dev)
                loss = float(fit_loss(gl, tgt0, m0, pts))
                searched.append(loss)
                if loss < best - 1e-12:
                    best, best_t = loss, warp.affine[:, 2].clone()
            warp.affine[:, 2] = best_t
        median = float(np.median(searched))
        contrast = (median - min(searched)) / median if median > 0 else 0.0
    if not settings.translation_fallback:
        losses = _descend(warp, g0, tgt0, m0, settings, fit_loss, linear=True)
        return _FitTrace(losses, contrast)
    searched_affine = warp.affine.detach().clone()
    shift_losses = _descend(warp, g0, tgt0, m0, settings, fit_loss, linear=False)
    shift_only = warp.affine.detach().clone()
    with torch.no_grad():
        shift_error = float(fit_loss(full_guide, tgt0, m0, full_pts))
        warp.affine.copy_(searched_affine)
    losses = _descend(warp, g0, tgt0, m0, settings, fit_loss, linear=True)
    with torch.no_grad():
        if shift_error <= float(fit_loss(full_guide, tgt0, m0, full_pts)):
            warp.affine.copy_(shift_only)  # the affine's descent ended no better than the shift alone
            losses = shift_losses
    return _FitTrace(losses, contrast)


def _descend(warp: AffineWarp, g0: torch.Tensor, tgt0: torch.Tensor, m0: torch.Tensor, settings: Registration,
             fit_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
             linear: bool) -> list[float]:
    """Adam on ``warp.affine`` coarse to fine (the LR grid /4, /2, /1) from where it stands; with
    ``linear`` False only its translation moves (the linear part's gradient is zeroed, so Adam
    leaves it exactly as it is). The final loss of each level."""
    radius = settings.radius
    h, w = tgt0.shape
    opt = torch.optim.Adam([warp.affine], lr=settings.learning_rate)
    losses: list[float] = []
    for div in (4, 2, 1):
        hh, ww = h // div, w // div
        if min(hh, ww) < 4 * radius + 2:
            continue
        tgt = tgt0 if div == 1 else imresize_torch(tgt0, output_shape=(hh, ww))
        msk = m0 if div == 1 else (imresize_torch(m0, output_shape=(hh, ww)) > 0.999).to(torch.float32)
        gl = imresize_torch(g0, output_shape=(hh, ww))
        pts = pixel_centers(hh, ww, tgt0.device)
        loss = torch.zeros((), device=tgt0.device)
        for _ in range(int(settings.descent_iters)):
            loss = fit_loss(gl, tgt, msk, pts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not linear:
                warp.affine.grad[:, :2] = 0.0  # type: ignore[index]
            opt.step()
        losses.append(float(loss.detach()))
    warp.zero_grad(set_to_none=True)
    return losses
