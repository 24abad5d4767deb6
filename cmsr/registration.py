"""Registration of the guide to the LR before training (a deviation from the paper).

Why: trained only through the full-output L1 of a small guide branch (the paper's scheme), the
warp gets a weak, misleading gradient and does not recover a misalignment of a few pixels
(benchmarks/RESULTS.md, stress tests). A cross-modal criterion with a wide, smooth basin is the
residual of a *local linear fit* of the target by the warped guide: the guided filter (He et al.)
of the target with the warped guide as its guide reproduces the target well exactly where the
guide's edges sit on the target's. It is minimised over the guide's global affine, after a search
over whole-pixel shifts (a descent alone stalls on the weak signal a few pixels away), coarse to
fine on the target's grid /4, /2 and /1 (the guide resized to each).
"""

from __future__ import annotations

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
    h, w = target.shape
    if mean_displacement_px(warp, scale * h, scale * w) < settings.min_px:
        return None
    return warp.affine.detach().clone()


def fit_affine(warp: AffineWarp, guide: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
               settings: Registration) -> list[float]:
    """Minimise the local-fit residual over ``warp.affine`` in place; the final loss of each level."""
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
    if search > 0:
        gl, pts = imresize_torch(g0, output_shape=(h, w)), pixel_centers(h, w, dev)
        start = warp.affine.detach().clone()
        best, best_t = float("inf"), start[:, 2].clone()
        shifts = sorted(((dy, dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)),
                        key=lambda d: (d[0] ** 2 + d[1] ** 2, d))  # nearest first: a tie keeps the smaller shift
        with torch.no_grad():
            for dy, dx in shifts:
                warp.affine[:, 2] = start[:, 2] + torch.tensor([2.0 * dx / w, 2.0 * dy / h], device=dev)
                loss = float(fit_loss(gl, tgt0, m0, pts))
                if loss < best - 1e-12:
                    best, best_t = loss, warp.affine[:, 2].clone()
            warp.affine[:, 2] = best_t
    opt = torch.optim.Adam([warp.affine], lr=settings.learning_rate)
    losses: list[float] = []
    for div in (4, 2, 1):
        hh, ww = h // div, w // div
        if min(hh, ww) < 4 * radius + 2:
            continue
        tgt = tgt0 if div == 1 else imresize_torch(tgt0, output_shape=(hh, ww))
        msk = m0 if div == 1 else (imresize_torch(m0, output_shape=(hh, ww)) > 0.999).to(torch.float32)
        gl = imresize_torch(g0, output_shape=(hh, ww))
        pts = pixel_centers(hh, ww, dev)
        loss = torch.zeros((), device=dev)
        for _ in range(int(settings.descent_iters)):
            loss = fit_loss(gl, tgt, msk, pts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    warp.zero_grad(set_to_none=True)
    return losses
