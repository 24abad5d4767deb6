"""Non-learned baselines that set the bar for CMSR: bicubic, back-projection, guided filter.

All work on normalised float tensors ((h, w) target, (C, H, W) guide) on any device, so the
API can run them through the same path as the learned methods.

* ``bicubic``: MATLAB ``imresize`` upsampling (``cmsr.resize``).
* ``back_projection``: Irani & Peleg's ``y += up(x - down(y))``; it enforces consistency with
  the LR under the chosen degradation model and gains ~1 dB on the dev pairs because their LR
  really is an antialiased bicubic downscale.
* ``guided_filter_upsample``: He, Sun & Tang's colour-guided filter (ECCV 2010 / TPAMI 2013)
  applied to the bicubic upsample, followed by back-projection; its settings are
  :class:`cmsr.config.GuidedFilterParams`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cmsr.config import Gate, GuidedFilterParams
from cmsr.resize import DegradationModel, degrade_torch, imresize_torch, upsample_torch


DEFAULT_BP_ROUNDS = 12


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-style bicubic upsampling of an (h, w) tensor onto the exact ``scale`` grid."""
    return upsample_torch(lr, scale)


def back_projection(
    sr: torch.Tensor,
    lr: torch.Tensor,
    scale: int,
    rounds: int = DEFAULT_BP_ROUNDS,
    degradation: DegradationModel = "bicubic",
) -> torch.Tensor:
    """Iterative back-projection: ``y += up(x - down(y))`` for ``rounds`` rounds."""
    y = sr
    for _ in range(rounds):
        y = y + upsample_torch(lr - degrade_torch(y, scale, degradation), scale)
    return y


# Below this size a box filter is two small matmuls with banded matrices: ~3x faster than
# avg_pool2d for the 12-96 px crops of every training iteration; above it the matmul's O(n) work
# per pixel loses to pooling.
_BOX_MATMUL_MAX = 384


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of the last two dims, border windows truncated (not padded)."""
    if radius <= 0:
        return x
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if max(h, w) <= _BOX_MATMUL_MAX and x.is_floating_point():
        rows = _box_matrix(h, radius, x.dtype, x.device, False)
        cols = _box_matrix(w, radius, x.dtype, x.device, True)
        return torch.matmul(torch.matmul(rows, x), cols)
    lead = x.shape[:-2]
    t = x.reshape(-1, 1, h, w)
    k = 2 * radius + 1
    t = F.avg_pool2d(t, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    t = F.avg_pool2d(t, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return t.reshape(*lead, h, w)


@functools.lru_cache(maxsize=64)
def _box_matrix(n: int, radius: int, dtype: torch.dtype, device: torch.device,
                transposed: bool) -> torch.Tensor:
    """(n, n) 1-D truncated box mean: row i averages the in-bounds j with |i - j| <= radius."""
    i = torch.arange(n)
    band = ((i[:, None] - i[None, :]).abs() <= radius).to(torch.float64)
    band = band / band.sum(1, keepdim=True)
    return (band.T if transposed else band).contiguous().to(dtype=dtype, device=device)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter of ``src`` (H, W) by a (C, H, W) guide (C = 1 gray, C >= 2 colour).

    Per window: ``src ~ a . guide + b`` by ridge regression (eps), then average a and b over the
    windows covering each pixel. The colour version solves a C x C system per pixel.
    """
    if guide.dim() == 2:
        guide = guide[None]
    fit = _local_linear_fit(guide, src, radius, eps)
    ab = box_filter(torch.cat([fit.a, fit.b[None]]), radius)
    return (ab[:-1] * guide).sum(0) + ab[-1]


def local_fit_r2(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float,
                 noise_var: float = 1e-4, pool: Literal["mean", "min"] = "mean",
                 flat_guide_var: float = 0.0) -> torch.Tensor:
    """Per-pixel share of ``src``'s local variance that a local linear model of the guide explains.

    The guided filter's ridge fit per window, its explained share ``(a.cov + eps |a|^2) / (var +
    noise_var)`` clamped to [0, 1], pooled over the windows covering each pixel. Why: near 1 where
    the guide's structure sits on the target's, near 0 where the guide shows something the target
    does not (a foreign object, RGB-only texture) or the target is flat. ``noise_var`` (normalised
    units^2) keeps flat windows from counting as explained.

    ``pool="mean"`` averages the covering windows (as the guided filter averages a and b);
    ``"min"`` takes the least explained one: a window that straddles a foreign object's outline is
    mostly explained by the genuine side, so the mean lets the outline through where the min does
    not. ``flat_guide_var`` > 0 counts a window whose guide variance (summed over bands) is below it
    as explained in proportion ``1 - var / flat_guide_var``: a flat guide can transfer nothing, so it
    is no evidence against the guide (without it the min would distrust every pixel near a flat window).
    """
    if guide.dim() == 2:
        guide = guide[None]
    fit = _local_linear_fit(guide, src, radius, eps)
    explained = (fit.a * fit.cov).sum(0) + eps * (fit.a * fit.a).sum(0)
    share = (explained / (fit.var_src + noise_var)).clamp(0.0, 1.0)
    if flat_guide_var > 0:
        share = torch.maximum(share, (1.0 - fit.var_guide / flat_guide_var).clamp(0.0, 1.0))
    if pool == "mean":
        return box_filter(share, radius)
    if pool == "min":
        k = 2 * radius + 1
        return -F.max_pool2d(-share[None, None], k, stride=1, padding=radius)[0, 0]
    raise ValueError(f"pool must be 'mean' or 'min', got {pool!r}")


@dataclass(frozen=True)
class _LocalFit:
    a: torch.Tensor  # (C, H, W) slopes
    b: torch.Tensor  # (H, W) offsets
    cov: torch.Tensor  # (C, H, W) cov(guide, src) per window
    var_src: torch.Tensor  # (H, W) var(src) per window, >= 0
    var_guide: torch.Tensor  # (H, W) guide variance per window, summed over bands, >= 0


def _local_linear_fit(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> _LocalFit:
    """Per-window ridge fit ``src ~ a . guide + b``.

    Every window moment comes from one box filter of the stacked products (one call instead of
    five: this runs inside every training iteration of a guided base); 3-band guides solve their
    3 x 3 systems in closed form (adjugate), which is exact for these symmetric positive-definite
    matrices and ~10x cheaper than a batched LU on CPU.
    """
    c = guide.shape[0]
    pairs = [(i, j) for i in range(c) for j in range(i, c)]
    stacked = torch.cat([guide, src[None], guide * src[None], (src * src)[None],
                         torch.stack([guide[i] * guide[j] for i, j in pairs])])
    m = box_filter(stacked, radius)
    mean_i, mean_p = m[:c], m[c]
    cov_ip = m[c + 1:2 * c + 1] - mean_i * mean_p[None]
    var_p = (m[2 * c + 1] - mean_p * mean_p).clamp_min(0.0)
    sig = {ij: m[2 * c + 2 + k] - mean_i[ij[0]] * mean_i[ij[1]] + (eps if ij[0] == ij[1] else 0.0)
           for k, ij in enumerate(pairs)}
    if c == 1:
        a = cov_ip / sig[(0, 0)]
    elif c == 3:
        s00, s01, s02, s11, s12, s22 = (sig[k] for k in pairs)
        q0, q1, q2 = cov_ip
        c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
        c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
        det = s00 * c00 + s01 * c01 + s02 * c02
        a = torch.stack([c00 * q0 + c01 * q1 + c02 * q2,
                         c01 * q0 + c11 * q1 + c12 * q2,
                         c02 * q0 + c12 * q1 + c22 * q2]) / det
    else:
        rows = [torch.stack([sig[(min(i, j), max(i, j))] for j in range(c)], -1) for i in range(c)]
        sigma = torch.stack(rows, -2)  # (H, W, C, C)
        a = torch.linalg.solve(sigma, cov_ip.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)
    b = mean_p - (a * mean_i).sum(0)
    var_guide = sum((sig[(i, i)] - eps for i in range(c)), torch.zeros_like(mean_p)).clamp_min(0.0)
    return _LocalFit(a, b, cov_ip, var_p, var_guide)


def guided_filter_upsample(
    lr: torch.Tensor,
    guide: torch.Tensor,
    scale: int,
    params: GuidedFilterParams = GuidedFilterParams(),
    degradation: DegradationModel = "bicubic",
) -> torch.Tensor:
    """Alternate guided filtering (by the HR guide) and back-projection onto the LR.

    Starts from the bicubic upsample; ``params.iterations`` cycles of filter + back-projection.
    """
    if guide.shape[-2:] != (lr.shape[-2] * scale, lr.shape[-1] * scale):
        raise ValueError(
            f"guide {tuple(guide.shape[-2:])} is not {scale}x the target {tuple(lr.shape[-2:])}"
        )
    y = bicubic(lr, scale)
    g64 = guide.double()
    for _ in range(params.iterations):
        # float64 for the per-pixel normal equations: small eps on flat windows is ill-conditioned.
        y = guided_filter(g64, y.double(), params.radius, params.eps).to(lr.dtype)
        y = back_projection(y, lr, scale, params.bp_rounds, degradation)
    if params.gate is None:
        return y
    weight = guide_confidence(lr, guide, scale, params.gate)
    plain = back_projection(bicubic(lr, scale), lr, scale, params.bp_rounds, degradation)
    return back_projection(plain + weight * (y - plain), lr, scale, params.bp_rounds, degradation)


def guide_confidence(lr: torch.Tensor, guide: torch.Tensor, scale: int, gate: Gate) -> torch.Tensor:
    """(scale*h, scale*w) weight in [0, 1]: how far the guide may change the output here.

    :func:`local_fit_r2` of the LR by the guide resized to the LR grid (the gate's window, eps,
    noise floor, pooling and flat-guide rule), mapped linearly from ``(gate.lo, gate.hi)`` to [0, 1]
    and upsampled (see :class:`cmsr.config.Gate` for why).
    """
    g_lr = imresize_torch(guide.detach().double(), output_shape=tuple(lr.shape[-2:]))
    r2 = local_fit_r2(g_lr, lr.detach().double(), gate.radius, gate.eps, noise_var=gate.noise_var, pool=gate.pool,
                      flat_guide_var=gate.flat_guide_var)
    w = ((r2 - gate.lo) / max(gate.hi - gate.lo, 1e-6)).clamp(0.0, 1.0).to(lr.dtype)
    return upsample_torch(w, scale).clamp(0.0, 1.0)
