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

Without learning (a registration alone) only the affine exists: :class:`AffineWarp`. All three
levels are functions of points, so a training step evaluates ``phi`` only at the few thousand
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
                 tps_grid: int = 8, affine: torch.Tensor | None = None) -> None:
        super().__init__()
        self.svf_integration_grid = int(svf_integration_grid)
        self.svf_squarings = int(svf_squarings)
        start = _identity_affine() if affine is None else affine.detach().to("cpu", torch.float32).clone()
        self.affine = nn.Parameter(start)
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

    def displacement_px(self, height: int, width: int) -> np.ndarray:
        """(height, width, 2) displacement (dy, dx) in pixels of a ``height x width`` grid."""
        return displacement_px(self, height, width)


class AffineWarp(nn.Module):
    """A global affine of normalised points: what a registration finds, on its own (the learned
    levels of :class:`GuideWarp` are neither built nor evaluated when they are not trained)."""

    def __init__(self, affine: torch.Tensor | None = None) -> None:
        super().__init__()
        self.affine = nn.Parameter(_identity_affine() if affine is None else affine.detach().clone())

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """phi(points): (..., 2) -> (..., 2), as the last level of :meth:`GuideWarp.forward`."""
        shape = points.shape
        r = points.reshape(-1, 2) @ self.affine[:, :2].t() + self.affine[:, 2]
        return r.reshape(shape)


def displacement_px(warp: nn.Module, height: int, width: int) -> np.ndarray:
    """(height, width, 2) displacement (dy, dx) in pixels of a ``height x width`` grid: the output
    pixel at (y, x) reads the guide at (y + dy, x + dx)."""
    with torch.no_grad():
        p = pixel_centers(height, width, next(warp.parameters()).device)
        d = warp(p) - p
        out = torch.stack([d[..., 1] * height / 2.0, d[..., 0] * width / 2.0], dim=-1)
    return out.cpu().numpy().astype(np.float32)


def mean_displacement_px(warp: nn.Module, height: int, width: int) -> float:
    """Mean length of the displacement over a ``height x width`` grid, in its pixels."""
    d = displacement_px(warp, height, width)
    return float(np.mean(np.hypot(d[..., 0], d[..., 1])))
