"""Metric sanity against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmsr.metrics import psnr, rmse, score, ssim


def _img(seed: int = 0, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float64)


def test_identical_images() -> None:
    a = _img()
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert rmse(a, a) == 0.0


def test_psnr_hand_values() -> None:
    gt = np.full((20, 20), 100.0)
    assert psnr(gt + 1, gt) == pytest.approx(20 * math.log10(255.0))  # rmse 1
    # one pixel off by 20 in 400: mse = 1 -> same number
    off = gt.copy()
    off[3, 4] += 20
    assert rmse(off, gt) == pytest.approx(1.0)
    assert psnr(off, gt) == pytest.approx(48.1308036, abs=1e-6)
    # the shave removes the border: the error at (3, 4) is gone with shave=4
    assert psnr(off, gt, shave=4) == math.inf
    assert psnr(off, gt, shave=3) < math.inf


def test_uint8_rounding_is_the_default() -> None:
    gt = np.full((16, 16), 50.0)
    assert psnr(gt + 0.4, gt) == math.inf  # rounds to the same 8-bit image
    assert psnr(gt + 0.4, gt, round_uint8=False) == pytest.approx(20 * math.log10(255 / 0.4))
    assert psnr(gt + 300, gt) == pytest.approx(20 * math.log10(255 / 205))  # clipped to 255


def test_ssim_hand_value_on_constant_images() -> None:
    # constant images: variances and covariance are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 100.0, 120.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((20, 20), a), np.full((20, 20), b)) == pytest.approx(expected, rel=1e-9)


def test_ssim_range_and_ordering() -> None:
    a = _img(1)
    noisy = np.clip(a + np.random.default_rng(2).normal(0, 20, a.shape), 0, 255)
    noisier = np.clip(a + np.random.default_rng(3).normal(0, 60, a.shape), 0, 255)
    inverted = 255 - a
    for other in (noisy, noisier, inverted, _img(4)):
        assert -1.0 <= ssim(other, a) <= 1.0
    assert ssim(noisy, a) > ssim(noisier, a) > ssim(inverted, a)
    assert ssim(inverted, a) < 0


def test_nan_pixels_are_excluded_and_shapes_checked() -> None:
    gt = np.full((20, 20), 10.0)
    pred = gt + 2
    pred[:5] = np.nan
    assert rmse(pred, gt) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        psnr(gt[:10], gt)
    s = score(gt + 1, gt)
    assert set(s) == {"psnr", "psnr_shave4", "ssim", "rmse"} and s["rmse"] == pytest.approx(1.0)
