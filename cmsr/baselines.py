"""Non-learned baselines that set the bar for CMSR: bicubic, back-projection, guided filter.

All work on normalised float tensors ((h, w) target, (C, H, W) guide) on any device, so the
API can run them through the same path as the learned methods.

* ``bicubic``: MATLAB ``imresize`` upsampling (``cmsr.resize``).
* ``back_projection``: Irani & Peleg's ``y += up(x - down(y))``; it enforces consistency with
  the LR under the chosen degradation model and gains ~1 dB on the dev pairs because their LR
  really is an antialiased bicubic downscale.
* ``guided_filter_upsample``: He, Sun & Tang's colour-guided filter (ECCV 2010 / TPAMI 2013)
  applied to the bicubic upsample, followed by back-projection. Its default radius/eps were
  tuned on the dev pairs (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmsr.resize import DegradationModel, degrade_torch, imresize_torch, upsample_torch


@dataclass(frozen=True)
class GuidedFilterParams:
    """Guided-filter upsampling settings (normalised [0, 1] units).

    radius: window radius in HR pixels (window is 2r+1 square).
    eps: regularisation of the local linear model; larger = smoother, less guide texture.
    iterations: filter -> back-project cycles; each cycle transfers more guide structure.
    bp_rounds: back-projection rounds after each filter pass (restores LR consistency).

    Defaults tuned on the dev pairs (mean PSNR, uint8): EPFL NIR bicubic 26.69 -> 30.67 dB,
    ULB17-VT thermal 34.95 -> 35.43 dB. One setting cannot serve both: r=4/eps=1e-3/4 cycles
    reaches 31.84 dB on NIR but drops thermal to 34.48; r=2/eps=0.1/3 cycles reaches 35.98 dB on
    thermal but only 29.16 on NIR. The guide as a filter does not help thermal much.
    """

    gate: tuple[float, float] | None = None
    """Conservative transfer: (lo, hi) of the local-fit R^2 (:func:`local_fit_r2`) of the LR by the
    guide resized to the LR grid, radius ``gate_radius`` LR pixels. Where the guide explains less
    than ``lo`` of the LR's local variance the result is plain bicubic + back-projection, above
    ``hi`` the guided filter's, linear between. None: the guided filter everywhere (He et al.)."""
    gate_radius: int = 2
    gate_eps: float = 1e-3

    radius: int = 2
    eps: float = 1e-2
    iterations: int = 4
    bp_rounds: int = 12

    @classmethod
    def smooth(cls, gate: tuple[float, float] | None = None) -> "GuidedFilterParams":
        """Little guide transfer (radius 2, eps 0.1, 3 cycles): the best thermal setting of the tuning
        table (benchmarks/RESULTS.md); with a registered guide it is above back-projection there."""
        return cls(gate=gate, radius=2, eps=1e-1, iterations=3)


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


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of the last two dims, border windows truncated (not padded)."""
    if radius <= 0:
        return x
    lead = x.shape[:-2]
    t = x.reshape(-1, 1, *x.shape[-2:])
    k = 2 * radius + 1
    t = F.avg_pool2d(t, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    t = F.avg_pool2d(t, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return t.reshape(*lead, *t.shape[-2:])


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter of ``src`` (H, W) by a (C, H, W) guide (C = 1 gray, C >= 2 colour).

    Per window: ``src ~ a . guide + b`` by ridge regression (eps), then average a and b over the
    windows covering each pixel. The colour version solves a C x C system per pixel.
    """
    if guide.dim() == 2:
        guide = guide[None]
    a, b, _ = _local_linear_fit(guide, src, radius, eps)
    return (box_filter(a, radius) * guide).sum(0) + box_filter(b, radius)


def local_fit_r2(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float,
                 noise_var: float = 1e-4) -> torch.Tensor:
    """Per-pixel share of ``src``'s local variance that a local linear model of the guide explains.

    The guided filter's ridge fit per window, its explained share ``(a.cov + eps |a|^2) / (var +
    noise_var)`` clamped to [0, 1], averaged over the windows covering each pixel (as a and b are).
    Why: near 1 where the guide's structure sits on the target's, near 0 where the guide shows
    something the target does not (a foreign object, RGB-only texture) or the target is flat.
    ``noise_var`` (normalised units^2) keeps flat windows from counting as explained.
    """
    if guide.dim() == 2:
        guide = guide[None]
    a, _, cov_ip = _local_linear_fit(guide, src, radius, eps)
    mean_p = box_filter(src, radius)
    var_p = (box_filter(src * src, radius) - mean_p * mean_p).clamp_min(0.0)
    explained = (a * cov_ip).sum(0) + eps * (a * a).sum(0)
    return box_filter((explained / (var_p + noise_var)).clamp(0.0, 1.0), radius)


def _local_linear_fit(guide: torch.Tensor, src: torch.Tensor, radius: int,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-window ridge fit ``src ~ a . guide + b``: (a (C, H, W), b (H, W), cov(guide, src) (C, H, W))."""
    c = guide.shape[0]
    mean_i = box_filter(guide, radius)  # (C, H, W)
    mean_p = box_filter(src, radius)  # (H, W)
    cov_ip = box_filter(guide * src[None], radius) - mean_i * mean_p[None]  # (C, H, W)
    if c == 1:
        var_i = box_filter(guide * guide, radius) - mean_i * mean_i
        a = cov_ip / (var_i + eps)
    else:
        prod = guide[:, None] * guide[None, :]  # (C, C, H, W)
        sigma = box_filter(prod, radius) - mean_i[:, None] * mean_i[None, :]
        sigma = sigma.permute(2, 3, 0, 1)  # (H, W, C, C)
        eye = torch.eye(c, dtype=src.dtype, device=src.device)
        a = torch.linalg.solve(sigma + eps * eye, cov_ip.permute(1, 2, 0)[..., None])[..., 0]
        a = a.permute(2, 0, 1)  # (C, H, W)
    b = mean_p - (a * mean_i).sum(0)
    return a, b, cov_ip


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
    weight = guide_confidence(lr, guide, scale, params.gate, params.gate_radius, params.gate_eps)
    plain = back_projection(bicubic(lr, scale), lr, scale, params.bp_rounds, degradation)
    return back_projection(plain + weight * (y - plain), lr, scale, params.bp_rounds, degradation)


def guide_confidence(lr: torch.Tensor, guide: torch.Tensor, scale: int, gate: tuple[float, float],
                     radius: int = 2, eps: float = 1e-3) -> torch.Tensor:
    """(scale*h, scale*w) weight in [0, 1]: how far the guide may change the output here.

    :func:`local_fit_r2` of the LR by the guide resized to the LR grid (window radius ``radius`` LR
    pixels), mapped linearly from ``gate = (lo, hi)`` to [0, 1] and upsampled. Why: where the target
    is flat or its structure is not the guide's (a foreign object, RGB-only texture), whatever the
    guide would add is not the target's.
    """
    lo, hi = gate
    g_lr = imresize_torch(guide.detach().double(), output_shape=tuple(lr.shape[-2:]))
    r2 = local_fit_r2(g_lr, lr.detach().double(), radius, eps)
    w = ((r2 - lo) / max(hi - lo, 1e-6)).clamp(0.0, 1.0).to(lr.dtype)
    return upsample_torch(w, scale).clamp(0.0, 1.0)
