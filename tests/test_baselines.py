"""Baselines on real dev pairs and the guided filter's defining property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmsr.baselines import (
    GuidedFilterParams,
    back_projection,
    bicubic,
    box_filter,
    guided_filter,
    guided_filter_upsample,
    local_fit_r2,
)
from cmsr.config import Gate
from cmsr.metrics import psnr
from cmsr.resize import degrade_torch


@pytest.fixture(scope="module")
def pairs(shared_data: Path) -> Path:
    return shared_data / "pairs"


def _pair(pairs: Path, folder: str, name: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    base = pairs / folder / name
    lr = np.asarray(Image.open(f"{base}_lr.png")).astype(np.float64) / 255
    guide = np.asarray(Image.open(f"{base}_guide.png"))[..., :3].astype(np.float64) / 255
    gt = np.asarray(Image.open(f"{base}_gt.png")).astype(np.float64)
    return torch.from_numpy(lr), torch.from_numpy(guide).permute(2, 0, 1), gt


def test_guided_filter_beats_bicubic_on_epfl_nir(pairs: Path) -> None:
    gains = []
    for name in ("indoor_0001", "mountain_0017"):
        lr, guide, gt = _pair(pairs, "epfl_rgbnir_x4", name)
        p_bic = psnr(bicubic(lr, 4).numpy() * 255, gt)
        p_gf = psnr(guided_filter_upsample(lr, guide, 4).numpy() * 255, gt)
        gains.append(p_gf - p_bic)
    assert min(gains) > 1.0 and np.mean(gains) > 2.5, gains


def test_back_projection_beats_bicubic_on_thermal_and_is_lr_consistent(pairs: Path) -> None:
    lr, _, gt = _pair(pairs, "ulb17vt_thermal_x4", "006")
    up = bicubic(lr, 4)
    bp = back_projection(up, lr, 4, rounds=12)
    assert psnr(bp.numpy() * 255, gt) > psnr(up.numpy() * 255, gt) + 0.5
    r0 = (degrade_torch(up, 4, "bicubic") - lr).abs().mean()
    r1 = (degrade_torch(bp, 4, "bicubic") - lr).abs().mean()
    assert r1 < 0.2 * r0
    bp_area = back_projection(up, lr, 4, rounds=12, degradation="area")
    assert (degrade_torch(bp_area, 4, "area") - lr).abs().mean() < (degrade_torch(up, 4, "area") - lr).abs().mean()


def test_guided_filter_reproduces_a_linear_function_of_the_guide() -> None:
    rng = np.random.default_rng(0)
    guide = torch.from_numpy(rng.random((3, 30, 40)))
    src = 0.3 * guide[0] - 0.5 * guide[2] + 0.2
    out = guided_filter(guide, src, radius=3, eps=1e-10)
    torch.testing.assert_close(out, src, atol=1e-5, rtol=0)
    # a flat guide carries no structure: the output is the (twice) box-smoothed source
    flat = torch.full((1, 30, 40), 0.5, dtype=torch.float64)
    noisy = torch.from_numpy(rng.random((30, 40)))
    torch.testing.assert_close(guided_filter(flat, noisy, 2, 1e-2), box_filter(box_filter(noisy, 2), 2))


def test_guided_upsample_rejects_a_wrong_size_guide() -> None:
    lr = torch.zeros(10, 12)
    with pytest.raises(ValueError, match="not 4x"):
        guided_filter_upsample(lr, torch.zeros(3, 40, 40), 4, GuidedFilterParams())


def test_local_fit_r2_separates_explained_from_foreign_structure() -> None:
    rng = np.random.default_rng(1)
    guide = torch.from_numpy(rng.random((3, 40, 40)))
    linear = 0.4 * guide[0] - 0.3 * guide[1] + 0.1
    assert float(local_fit_r2(guide, linear, 2, 1e-6)[3:-3, 3:-3].min()) > 0.95
    unrelated = torch.from_numpy(rng.random((40, 40)))
    assert float(local_fit_r2(guide, unrelated, 2, 1e-3).mean()) < 0.25  # ~3/24 by chance for 3 bands
    flat = torch.full((40, 40), 0.5, dtype=torch.float64)
    assert float(local_fit_r2(guide, flat, 2, 1e-3).max()) < 1e-6


def test_min_pooled_fit_distrusts_a_foreign_patch_outline() -> None:
    """Windows straddling a pasted patch's outline are mostly explained by the genuine side, so the
    mean over covering windows half-trusts the patch's border; the least-explained window does not."""
    rng = np.random.default_rng(0)
    guide = torch.from_numpy(rng.random((3, 40, 40)))
    target = 0.5 * guide[0] - 0.2 * guide[1] + 0.1  # explained by the genuine guide everywhere
    pasted = guide.clone()
    pasted[:, 10:30, 10:30] = torch.from_numpy(rng.random((3, 20, 20)))
    mean = local_fit_r2(pasted, target, 2, 1e-3)
    least = local_fit_r2(pasted, target, 2, 1e-3, pool="min")
    band = torch.zeros(40, 40, dtype=torch.bool)
    band[10:30, 10:30] = True
    band[12:28, 12:28] = False  # the patch's outer 2 px
    assert float(mean[band].mean()) > 0.2
    assert float(least[band].max()) < 0.2
    assert float(least[:5].min()) > 0.95  # far from the patch both pools trust the guide


def test_flat_guide_windows_count_as_explained_only_when_asked() -> None:
    flat = torch.full((3, 40, 40), 0.5, dtype=torch.float64)
    target = torch.from_numpy(np.random.default_rng(3).random((40, 40)))
    assert float(local_fit_r2(flat, target, 2, 1e-3, pool="min").max()) < 1e-6
    assert float(local_fit_r2(flat, target, 2, 1e-3, pool="min", flat_guide_var=0.01).min()) == 1.0
    with pytest.raises(ValueError, match="pool"):
        local_fit_r2(flat, target, 2, 1e-3, pool="median")  # type: ignore[arg-type]


def test_gated_guided_upsample_does_not_transfer_a_foreign_object(pairs: Path) -> None:
    """A patch of another scene pasted into the RGB only: ungated, the guided filter writes its edges
    into the NIR output; gated by the LR-scale local fit, the region stays near plain back-projection,
    while outside it the result stays within 0.1 dB of the ungated filter."""
    lr, guide, gt = _pair(pairs, "epfl_rgbnir_x4", "indoor_0001")
    donor = _pair(pairs, "ulb17vt_thermal_x4", "006")[1]
    pasted = guide.clone()
    y0, x0, size = 60, 100, 96
    pasted[:, y0:y0 + size, x0:x0 + size] = donor[:, 40:40 + size, 60:60 + size]
    region = (slice(y0, y0 + size), slice(x0, x0 + size))
    plain = back_projection(bicubic(lr, 4), lr, 4, rounds=12)
    free = guided_filter_upsample(lr, pasted, 4)
    gated = guided_filter_upsample(lr, pasted, 4, GuidedFilterParams(gate=Gate(0.2, 0.6)))
    d_free = float((free - plain)[region].abs().mean())
    d_gated = float((gated - plain)[region].abs().mean())
    assert d_gated < 0.5 * d_free, (d_gated, d_free)
    clean_free = guided_filter_upsample(lr, guide, 4).numpy() * 255
    clean_gated = guided_filter_upsample(lr, guide, 4, GuidedFilterParams(gate=Gate(0.2, 0.6))).numpy() * 255
    assert psnr(clean_gated, gt) > psnr(clean_free, gt) - 0.1
