"""The internal transformer: a learned coarse-to-fine deformation of the guide.

Coordinates are ``grid_sample``'s normalised ones with ``align_corners=False``: (x, y) in
[-1, 1] spans the image *extent*, so every grid of the scene (LR, intermediate stage, HR guide)
shares them. The warp maps a location ``p`` of the output grid to the guide location it reads,
``phi(p) = A(V(T(p)))`` -- the official code's ``tps(cpab(affine(G)))`` expressed on points:

* ``A``: a global affine (6 parameters, identity at init), learning-rate ratio 1;
* ``V``: a mid-scale smooth diffeomorphism. The paper uses CPAB (a continuous piecewise-affine
  velocity field on a 4x4 tessellation integrated over t in [0, 1]). Here a *stationary velocity
  field* on a coarse ``svf_grid x svf_grid`` node grid (5x5 = the vertices of a 4x4 tessellation),
  bilinearly interpolated (continuous, piecewise-bilinear) onto an integration grid and integrated
  by scaling-and-squaring: ``exp(v) = (id + v / 2**K) composed with itself K times``. Like CPAB it
  is smooth, invertible for moderate velocities and the identity at zero. Learning-rate ratio 1;
* ``T``: a thin-plate spline whose control points sit on a regular ``tps_grid x tps_grid`` lattice;
  parameters are the control points' offsets (zero at init), learning-rate ratio 0.2.

All three are functions of points, so a training step evaluates ``phi`` only at the few thousand
points of a father crop (augmentation composed with the warp) and resamples the guide once there,
instead of warping the whole guide every iteration.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def pixel_centers(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(height, width, 2) normalised (x, y) of the pixel centres of a grid covering the extent."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float32, device=device) * 2 + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def to_normalized(coords_xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates (x = column, y = row, centre of pixel j at j) -> normalised coordinates."""
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=coords_xy.dtype, device=coords_xy.device)
    return (coords_xy + 0.5) * scale - 1.0


def sample(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``image`` (C, H, W) at normalised ``points`` (..., 2) -> (C, ...)."""
    shape = points.shape[:-1]
    grid = points.reshape(1, 1, -1, 2).to(image.dtype)
    out = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(image.shape[0], *shape)


def _tps_kernel(points: torch.Tensor, ctrl: torch.Tensor) -> torch.Tensor:
    """U(|p - c|) = r^2 log r^2 (U(0) = 0) between points (N, 2) and control points (n, 2) -> (N, n).

    Why this form: it runs once per training iteration on a crop's ~2300 points; the expansion
    |p|^2 + |c|^2 - 2 p.c (one small matmul) and a clamp instead of masks halve its kernels. r^2 is
    clamped at 0 against rounding, and at r^2 = 0 the product is exactly 0.
    """
    r2 = (points * points).sum(-1, keepdim=True) + (ctrl * ctrl).sum(-1) - 2.0 * (points @ ctrl.t())
    r2 = r2.clamp_min(0.0)
    return r2 * torch.log(r2.clamp_min(1e-30))


def _tps_system_inverse(ctrl: np.ndarray) -> np.ndarray:
    """Inverse of the (n+3) x (n+3) TPS interpolation system for control points ``ctrl`` (n, 2)."""
    n = ctrl.shape[0]
    d2 = ((ctrl[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(d2 > 0, d2 * np.log(np.where(d2 > 0, d2, 1.0)), 0.0)
    p = np.concatenate([np.ones((n, 1)), ctrl], axis=1)
    lmat = np.zeros((n + 3, n + 3))
    lmat[:n, :n] = k
    lmat[:n, n:] = p
    lmat[n:, :n] = p.T
    return np.linalg.inv(lmat)


def _identity_affine(device: torch.device | str = "cpu") -> torch.Tensor:
    """The (2, 3) affine that maps every point to itself."""
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)


class GuideWarp(nn.Module):
    """Identity-initialised affine -> stationary-velocity-field -> TPS warp of normalised points."""

    def __init__(self, svf_grid: int = 5, svf_integration_grid: int = 33, svf_squarings: int = 6,
                 tps_grid: int = 8) -> None:
        super().__init__()
        self.svf_integration_grid = int(svf_integration_grid)
        self.svf_squarings = int(svf_squarings)
        self.affine = nn.Parameter(_identity_affine())
        self.velocity = nn.Parameter(torch.zeros(1, 2, svf_grid, svf_grid))
        t = np.linspace(-1.0, 1.0, tps_grid)
        gy, gx = np.meshgrid(t, t, indexing="ij")
        ctrl = np.stack([gx.ravel(), gy.ravel()], axis=1)
        self.tps_offsets = nn.Parameter(torch.zeros(ctrl.shape[0], 2))
        self.register_buffer("tps_ctrl", torch.tensor(ctrl, dtype=torch.float32))
        self.register_buffer("tps_inv", torch.tensor(_tps_system_inverse(ctrl)[:, : ctrl.shape[0]], dtype=torch.float32))

    # --- levels -----------------------------------------------------------------------------
    def tps_displacement(self, points: torch.Tensor) -> torch.Tensor:
        """TPS interpolant of the control offsets at ``points`` (N, 2) -> (N, 2)."""
        n = self.tps_ctrl.shape[0]
        coef = self.tps_inv @ self.tps_offsets  # (n + 3, 2): kernel weights, then [1, x, y]
        return _tps_kernel(points, self.tps_ctrl) @ coef[:n] + coef[n] + points @ coef[n + 1:]

    def svf_field(self) -> torch.Tensor:
        """Displacement of exp(velocity) on the integration grid, (1, 2, M, M), nodes at [-1, 1]."""
        m = self.svf_integration_grid
        disp = F.interpolate(self.velocity, size=(m, m), mode="bilinear", align_corners=True)
        disp = disp / (2 ** self.svf_squarings)
        lin = torch.linspace(-1.0, 1.0, m, device=disp.device, dtype=disp.dtype)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        ident = torch.stack([gx, gy], dim=-1).unsqueeze(0)  # (1, M, M, 2)
        for _ in range(self.svf_squarings):
            moved = ident + disp.permute(0, 2, 3, 1)
            disp = disp + F.grid_sample(disp, moved, mode="bilinear", padding_mode="border", align_corners=True)
        return disp

    def svf_displacement(self, points: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
        """exp(velocity) displacement at ``points`` (N, 2) -> (N, 2)."""
        field = self.svf_field() if field is None else field
        grid = points.reshape(1, 1, -1, 2)
        out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(2, -1).t()

    # --- whole warp -------------------------------------------------------------------------
    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """phi(points): (..., 2) normalised output locations -> (..., 2) guide locations."""
        shape = points.shape
        p = points.reshape(-1, 2)
        q = p + self.tps_displacement(p)
        q = q + self.svf_displacement(q)
        r = q @ self.affine[:, :2].t() + self.affine[:, 2]
        return r.reshape(shape)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"affine": [self.affine], "svf": [self.velocity], "tps": [self.tps_offsets]}

    def is_identity(self) -> bool:
        """True while every level is exactly at its identity (as initialised or after ``reset_``)."""
        with torch.no_grad():
            return bool(torch.equal(self.affine, _identity_affine(self.affine.device)) and not self.velocity.any()
                        and not self.tps_offsets.any())

    @torch.no_grad()
    def reset_(self) -> None:
        """Back to the identity map (every level)."""
        self.affine.copy_(_identity_affine(self.affine.device))
        self.velocity.zero_()
        self.tps_offsets.zero_()

    def mean_displacement_px(self, height: int, width: int) -> float:
        """Mean length of the displacement over a ``height x width`` grid, in its pixels."""
        d = self.displacement_px(height, width)
        return float(np.mean(np.hypot(d[..., 0], d[..., 1])))

    def displacement_px(self, height: int, width: int) -> np.ndarray:
        """(height, width, 2) learned displacement (dy, dx) in pixels of a ``height x width`` grid:
        the output pixel at (y, x) reads the guide at (y + dy, x + dx)."""
        with torch.no_grad():
            p = pixel_centers(height, width, self.affine.device)
            d = self.forward(p) - p
            out = torch.stack([d[..., 1] * height / 2.0, d[..., 0] * width / 2.0], dim=-1)
        return out.cpu().numpy().astype(np.float32)


def prealign(warp: GuideWarp, guide: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
             iters: int = 100, lr: float = 2e-3, radius: int = 2, eps: float = 1e-3,
             search: int = 0) -> list[float]:
    """Register the warp's global affine to the target before training (a deviation from the paper).

    Why: trained only through the full-output L1 of a small guide branch (the paper's scheme), the
    warp gets a weak, misleading gradient and does not recover a misalignment of a few pixels
    (benchmarks/RESULTS.md, stress tests). A cross-modal criterion with a wide, smooth basin is the
    residual of a *local linear fit* of the target by the warped guide: the guided filter
    (He et al.) of the target with the warped guide as its guide reproduces the target well exactly
    where the guide's edges sit on the target's. Minimised (L1, valid pixels) coarse to fine on
    the target's grid /4, /2 and /1 (the guide resized to each), ``iters`` Adam steps of the affine
    only per level. ``search`` > 0 first tries every whole-pixel shift of the target's grid within
    +-``search`` pixels by the same criterion and starts from the best (a gradient descent alone
    stalls on a weak cross-modal signal a few pixels away: thermal vs RGB). ``guide`` (C, H, W) on
    any grid of the scene, ``target`` (h, w). Returns the final loss of each level.
    """
    from .baselines import guided_filter
    from .resize import imresize_torch

    h, w = target.shape
    dev = warp.affine.device
    tgt0 = target.detach().to(dev, torch.float32)
    m0 = torch.ones_like(tgt0) if valid is None else valid.detach().to(dev, torch.float32)
    g0 = guide.detach().to(dev, torch.float32)

    def fit_loss(gl: torch.Tensor, tgt: torch.Tensor, msk: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        fit = guided_filter(sample(gl, warp(pts)).double(), tgt.double(), radius, eps)
        return ((fit - tgt.double()).abs() * msk).sum() / msk.sum().clamp_min(1.0)

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
    opt = torch.optim.Adam([warp.affine], lr=lr)
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
        for _ in range(int(iters)):
            loss = fit_loss(gl, tgt, msk, pts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            warp.velocity.grad = None
            warp.tps_offsets.grad = None
            opt.step()
        losses.append(float(loss.detach()))
    warp.zero_grad(set_to_none=True)
    return losses
