"""The public API: units round trip, nodata masking, guide checks, scale errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cmsr
from cmsr import InvalidInput, imresize
from cmsr.inputs import fill_nodata


def _read(pair: Path, kind: str) -> np.ndarray:
    return np.asarray(Image.open(f"{pair}_{kind}.png"))  # read-only: shared by the module's tests


@pytest.fixture(scope="module")
def thermal(shared_data: Path) -> Path:
    return shared_data / "pairs" / "ulb17vt_thermal_x4"


@pytest.fixture(scope="module")
def lr(thermal: Path) -> np.ndarray:
    return _read(thermal / "036", "lr")  # uint8 (60, 80)


@pytest.fixture(scope="module")
def guide(thermal: Path) -> np.ndarray:
    return _read(thermal / "036", "guide")  # uint8 RGBA (240, 320, 4)


def test_public_surface(lr: np.ndarray, guide: np.ndarray) -> None:
    assert cmsr.METHODS == ("cmsr", "zssr", "bicubic", "bp", "guided")
    # the default preset is one of the named ones and resolves to the same configuration
    assert cmsr.CMSRConfig.preset(cmsr.DEFAULT_PRESET) == getattr(cmsr.CMSRConfig, cmsr.DEFAULT_PRESET)()
    assert cmsr.CMSRConfig.preset("fast").max_iters < cmsr.CMSRConfig.preset("paper").max_iters
    with pytest.raises(ValueError, match="unknown preset"):
        cmsr.CMSRConfig.preset("quick")
    r = cmsr.run(lr, guide, 4, method="bicubic")
    assert isinstance(r, cmsr.SRResult) and r.displacement is None and r.stats["method"] == "bicubic"
    np.testing.assert_array_equal(cmsr.superresolve(lr, guide, 4, method="bicubic"), r.image)


def test_bicubic_is_exactly_imresize_in_target_units(lr: np.ndarray) -> None:
    out = cmsr.superresolve(lr, None, 4, method="bicubic")
    assert out.dtype == np.float32 and out.shape == (240, 320)
    np.testing.assert_allclose(out, imresize(lr.astype(np.float64), 4), atol=1e-3)


@pytest.mark.parametrize("method", ["bicubic", "bp", "guided"])
def test_units_round_trip_uint16_and_float_with_offset(method: str, lr: np.ndarray, guide: np.ndarray) -> None:
    ref = cmsr.superresolve(lr, guide, 4, method=method).astype(np.float64)
    u16 = (lr.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    out16 = cmsr.superresolve(u16, guide, 4, method=method)
    np.testing.assert_allclose(out16, ref * 200 + 1000, atol=2e-3 * 200)
    celsius = (lr.astype(np.float32) / 10 - 20.5).astype(np.float32)  # degrees C, below zero
    outc = cmsr.superresolve(celsius, guide, 4, method=method)
    assert outc.dtype == np.float32
    np.testing.assert_allclose(outc, ref / 10 - 20.5, atol=2e-4)
    # a survey-level range changes the normalisation, not the (linear) result
    outr = cmsr.superresolve(celsius, guide, 4, method=method, target_range=(-30.0, 10.0))
    np.testing.assert_allclose(outr, outc, atol=2e-4)


def test_back_projection_output_downscales_to_the_input(lr: np.ndarray) -> None:
    out = cmsr.superresolve(lr, None, 4, method="bp").astype(np.float64)
    assert np.abs(imresize(out, 0.25) - lr).mean() < 0.05
    assert np.abs(imresize(imresize(lr.astype(np.float64), 4), 0.25) - lr).mean() > 0.5


@pytest.mark.parametrize("method", ["bicubic", "bp", "guided"])
def test_nan_in_nan_out_at_exactly_the_expanded_positions(method: str, lr: np.ndarray, guide: np.ndarray) -> None:
    t = lr.astype(np.float32)
    t[10:20, 30:45] = np.nan
    t[0, 0] = np.nan
    t[59, 17] = np.nan
    out = cmsr.superresolve(t, guide, 4, method=method)
    expected = np.kron(np.isnan(t), np.ones((4, 4), bool))
    np.testing.assert_array_equal(np.isnan(out), expected)
    assert np.isfinite(out[~expected]).all()
    # away from the holes the result matches the hole-free one closely
    full = cmsr.superresolve(lr.astype(np.float32), guide, 4, method=method)
    assert np.abs(out[120:, 200:] - full[120:, 200:]).mean() < 0.5


def test_all_nodata_and_bad_targets_are_refused() -> None:
    with pytest.raises(InvalidInput, match="no valid pixel"):
        cmsr.run(np.full((6, 8), np.nan, np.float32), None, 2, method="bicubic")
    with pytest.raises(InvalidInput, match="single-band"):
        cmsr.run(np.zeros((6, 8, 3), np.uint8), None, 2, method="bicubic")


def test_fill_nodata_keeps_valid_pixels_and_fills_holes() -> None:
    import torch

    x = torch.arange(48.0).reshape(6, 8)
    valid = torch.ones(6, 8, dtype=torch.bool)
    valid[2:5, 1:7] = False
    filled = fill_nodata(torch.where(valid, x, torch.full_like(x, float("nan"))), valid)
    assert torch.isfinite(filled).all()
    torch.testing.assert_close(filled[valid], x[valid])
    assert float(filled[~valid].min()) >= float(x[valid].min()) and float(filled[~valid].max()) <= float(x[valid].max())


def test_guide_of_another_size_is_resampled_with_a_notice(lr: np.ndarray, guide: np.ndarray) -> None:
    big = np.asarray(Image.fromarray(guide).resize((480, 360), Image.BICUBIC))  # 1.5x, same aspect
    with pytest.warns(UserWarning, match="resampling the guide to 240x320"):
        r = cmsr.run(lr, big, 4, method="guided")
    assert r.image.shape == (240, 320) and r.stats["guide_resampled_from"] == [360, 480]


def test_guide_with_other_aspect_is_refused_naming_both_sizes(lr: np.ndarray) -> None:
    wide = np.zeros((240, 400, 3), np.uint8)
    with pytest.raises(InvalidInput, match=r"240x400.*60x80"):
        cmsr.run(lr, wide, 4, method="guided")


def test_alpha_band_is_dropped_and_guide_ranges_apply(lr: np.ndarray, guide: np.ndarray) -> None:
    rgba = cmsr.run(lr, guide, 4, method="guided")
    rgb = cmsr.run(lr, guide[..., :3], 4, method="guided")
    assert rgba.stats["guide_alpha_dropped"] and rgba.stats["guide_bands"] == 3
    np.testing.assert_allclose(rgba.image, rgb.image, atol=1e-5)
    as_float = cmsr.superresolve(lr, guide[..., :3].astype(np.float32), 4, method="guided",
                                 guide_range=np.tile([0.0, 255.0], (3, 1)))
    np.testing.assert_allclose(as_float, rgb.image, atol=1e-3)
    # a 4th band that is data (not 0/255) is kept as a fourth guide band
    extra = guide.copy()
    extra[..., 3] = guide[..., 0] // 2
    assert cmsr.run(lr, extra, 4, method="guided").stats["guide_bands"] == 4


@pytest.mark.parametrize("scale", [0, 1, 9, 2.5, True, "4"])
def test_scale_must_be_an_integer_from_2_to_8(scale: object, lr: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="scale"):
        cmsr.run(lr, None, scale, method="bicubic")  # type: ignore[arg-type]


def test_unknown_method_and_missing_guide(lr: np.ndarray, guide: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="unknown method"):
        cmsr.run(lr, guide, 4, method="nearest")
    with pytest.raises(InvalidInput, match="needs a guide"):
        cmsr.run(lr, None, 4, method="guided")


@pytest.mark.slow
def test_cmsr_end_to_end_small_budget_beats_bicubic(thermal: Path) -> None:
    """Real pair, one x4 stage of 40 iterations, no self-ensemble (a few CPU seconds)."""
    from cmsr.metrics import psnr

    pair = thermal / "006"
    lr = np.asarray(Image.open(f"{pair}_lr.png"))
    guide = np.asarray(Image.open(f"{pair}_guide.png"))
    gt = np.asarray(Image.open(f"{pair}_gt.png"))
    cfg = cmsr.CMSRConfig.fast().replace(max_iters=40, min_iters=20, self_ensemble=False, gradual=False)
    seen: list[tuple[int, float, float]] = []
    r = cmsr.run(lr, guide, 4, cfg, method="cmsr", seed=3, progress=lambda *a: seen.append(a))
    bic = cmsr.superresolve(lr, None, 4, method="bicubic")
    assert r.image.dtype == np.float32 and r.image.shape == gt.shape
    assert psnr(r.image, gt) > psnr(bic, gt) + 0.3
    assert r.displacement is not None and r.displacement.shape == (240, 320, 2)
    assert r.stats["method"] == "cmsr" and r.stats["iterations"] == 40 and seen and seen[-1][0] == 40
    z = cmsr.run(lr, guide, 4, cfg.replace(max_iters=10, min_iters=5), method="zssr")
    assert z.displacement is None and z.stats["use_guide"] is False
