"""The guide weight map (``SRResult.guide_weight``): where the guide was allowed to shape the output.

On a real thermal pair (ULB17-VT 036): 0 for the methods that never read the guide, the gates'
own weight for the guided filter and for gated CMSR, 1 for the ungated paper configuration; in
[0, 1], NaN exactly at nodata, asked for only (None by default) and never changing the image;
and low on a foreign object pasted into the guide only (the gate's whole point).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cmsr
from cmsr.baselines import guide_confidence
from cmsr.config import CMSRConfig, Gate, GuidedFilterParams
from cmsr.guide_weight import guided_filter_weight

# the shipped gated preset with a tiny budget: the gates are the preset's, only the training is short
TINY_BEST = CMSRConfig.best().replace(max_iters=4, min_iters=2, sr_width=16, sr_depth=4, self_ensemble=False,
                                      crop_size=24, run_test_every=2)
TINY_PAPER = CMSRConfig.paper().replace(max_iters=4, min_iters=2, sr_width=16, sr_depth=4, self_ensemble=False,
                                        crop_size=24, run_test_every=2, gradual=False)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def pair(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    p = shared_data / "pairs" / "ulb17vt_thermal_x4" / "036"
    return _png(Path(f"{p}_lr.png")), _png(Path(f"{p}_guide.png"))[..., :3]  # (60, 80) uint8, (240, 320, 3)


@pytest.fixture(scope="module")
def donor(shared_data: Path) -> np.ndarray:
    """Another scene's guide (EPFL indoor NIR pair's RGB): real foreign content."""
    return _png(shared_data / "pairs" / "epfl_rgbnir_x4" / "indoor_0001_guide.png")[..., :3]


def test_weight_only_when_asked(pair) -> None:
    lr, guide = pair
    assert cmsr.run(lr, guide, 4, method="guided").guide_weight is None
    assert cmsr.run(lr, guide, 4, TINY_BEST.replace(registration=None)).guide_weight is None


@pytest.mark.parametrize("method", ["bicubic", "bp", "zssr"])
def test_methods_without_a_guide_weigh_zero(pair, method: str) -> None:
    lr, guide = pair
    r = cmsr.run(lr, guide, 4, TINY_BEST, method=method, guide_weight=True)
    assert r.guide_weight is not None and r.guide_weight.shape == r.image.shape and r.guide_weight.dtype == np.float32
    assert np.all(r.guide_weight == 0.0)


def test_guided_filter_weight_is_its_gate(pair) -> None:
    lr, guide = pair
    r = cmsr.run(lr, guide, 4, method="guided", guide_weight=True)
    assert np.all(r.guide_weight == 1.0)  # the API's guided filter is ungated: the guide everywhere
    lr_t = torch.from_numpy(lr.astype(np.float32) / 255.0)
    g_t = torch.from_numpy(guide.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
    gate = Gate(0.2, 0.6)
    w = guided_filter_weight(lr_t, g_t, 4, GuidedFilterParams(gate=gate))
    torch.testing.assert_close(w, guide_confidence(lr_t, g_t, 4, gate))
    assert 0.0 < float(w.mean()) < 1.0


def test_gated_cmsr_weight_in_range_same_image_nan_at_nodata(pair) -> None:
    lr, guide = pair
    target = lr.astype(np.float32)
    target[:6, :10] = np.nan  # nodata corner
    plain = cmsr.run(target, guide, 4, TINY_BEST)
    r = cmsr.run(target, guide, 4, TINY_BEST, guide_weight=True)
    np.testing.assert_array_equal(r.image, plain.image)  # asking for the weight changes nothing
    w = r.guide_weight
    assert w.shape == r.image.shape and w.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(w), np.isnan(r.image))
    valid = w[np.isfinite(w)]
    assert valid.min() >= 0.0 and valid.max() <= 1.0
    assert 0.05 < valid.mean() < 0.95  # the gate trusts the guide in places, not everywhere


def test_ungated_paper_cmsr_trusts_the_guide_everywhere(pair) -> None:
    lr, guide = pair
    r = cmsr.run(lr, guide, 4, TINY_PAPER, guide_weight=True)
    assert np.all(r.guide_weight == 1.0)


def test_weight_is_low_on_a_foreign_patch_pasted_into_the_guide(pair, donor) -> None:
    """A 64 px square of another scene pasted into the guide only: the gate (and so the band)
    must not trust the guide there, where the same place without the paste is trusted."""
    lr, guide = pair
    clean = cmsr.run(lr, guide, 4, TINY_BEST, guide_weight=True).guide_weight
    for y0, x0, dy, dx in ((88, 128, 40, 60), (40, 40, 100, 100)):
        pasted = guide.copy()
        pasted[y0:y0 + 64, x0:x0 + 64] = donor[dy:dy + 64, dx:dx + 64]
        w = cmsr.run(lr, pasted, 4, TINY_BEST, guide_weight=True).guide_weight
        inside = np.s_[y0 + 8:y0 + 56, x0 + 8:x0 + 56]  # the patch less its outline band
        assert w[inside].mean() < 0.25
        assert w[inside].mean() < 0.5 * clean[inside].mean()


def test_run_many_gives_each_tile_its_own_weight(pair) -> None:
    """A batch of two tiles (what a job's core batch function runs): each weight is the tile's alone."""
    lr, guide = pair
    cfg = TINY_BEST.replace(registration=None)
    tiles = [(lr[:, :40], guide[:, :160]), (lr[:, 40:], guide[:, 160:])]
    many = cmsr.run_many([t for t, _ in tiles], [g for _, g in tiles], 4, cfg, seeds=[1, 2], guide_weight=True)
    for (t, g), seed, r in zip(tiles, (1, 2), many):
        alone = cmsr.run(t, g, 4, cfg, seed=seed, guide_weight=True)
        np.testing.assert_allclose(r.guide_weight, alone.guide_weight, atol=1e-5)
    assert not np.allclose(many[0].guide_weight, many[1].guide_weight)
