"""Image-quality metrics of the paper's protocol: PSNR on uint8-rounded output, SSIM, RMSE.

Why uint8 rounding by default: the dev pairs are 8-bit, and the published tables score the
8-bit image a user would save; scoring the float output gives slightly different numbers.
All functions take (H, W) arrays in the same units (grey levels for 8-bit data) and ignore
NaN pixels (nodata) by excluding them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _prepare(
    pred: np.ndarray, target: np.ndarray, shave: int, round_uint8: bool
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"metric inputs differ in shape: {p.shape} vs {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"metrics expect (H, W) arrays, got {p.shape}")
    if shave < 0 or 2 * shave >= min(p.shape):
        raise ValueError(f"shave={shave} leaves nothing of a {p.shape} image")
    if shave:
        p = p[shave:-shave, shave:-shave]
        t = t[shave:-shave, shave:-shave]
    if round_uint8:
        p = np.clip(np.round(p), 0, 255)
        t = np.clip(np.round(t), 0, 255)
    return p, t


def rmse(pred: np.ndarray, target: np.ndarray, *, shave: int = 0, round_uint8: bool = True) -> float:
    """Root-mean-square error over finite pixels (in the data's units)."""
    p, t = _prepare(pred, target, shave, round_uint8)
    ok = np.isfinite(p) & np.isfinite(t)
    if not ok.any():
        raise ValueError("no finite pixel to score")
    return float(math.sqrt(np.mean((p[ok] - t[ok]) ** 2)))


def psnr(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    shave: int = 0,
    data_range: float = 255.0,
    round_uint8: bool = True,
) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    err = rmse(pred, target, shave=shave, round_uint8=round_uint8)
    if err == 0.0:
        return math.inf
    return float(20.0 * math.log10(data_range / err))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    shave: int = 0,
    data_range: float = 255.0,
    round_uint8: bool = True,
    window: int = 11,
    sigma: float = 1.5,
) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03.

    Computed over 'valid' window positions (no padding), as the reference MATLAB code does.
    NaN pixels are replaced by the other image's value so they do not count as structure.
    """
    p, t = _prepare(pred, target, shave, round_uint8)
    if min(p.shape) < window:
        raise ValueError(f"SSIM window {window} is larger than the image {p.shape}")
    bad = ~(np.isfinite(p) & np.isfinite(t))
    if bad.all():
        raise ValueError("no finite pixel to score")
    if bad.any():
        fill = np.where(np.isfinite(t), t, np.where(np.isfinite(p), p, 0.0))
        p = np.where(bad, fill, p)
        t = np.where(bad, fill, t)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    w = _gaussian_window(window, sigma)
    x = torch.from_numpy(p)[None, None]
    y = torch.from_numpy(t)[None, None]
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float((num / den).mean())


def score(pred: np.ndarray, target: np.ndarray, *, round_uint8: bool = True) -> dict[str, float]:
    """The benchmark's four numbers for one output."""
    return {
        "psnr": psnr(pred, target, round_uint8=round_uint8),
        "psnr_shave4": psnr(pred, target, shave=4, round_uint8=round_uint8),
        "ssim": ssim(pred, target, round_uint8=round_uint8),
        "rmse": rmse(pred, target, round_uint8=round_uint8),
    }
