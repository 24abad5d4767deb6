"""The MATLAB imresize protocol on every shipped dev pair, and the degradation operators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmsr import imresize
from cmsr.resize import degrade_torch, imresize_torch, upsample_torch

# The 26 shipped dev pairs (folder/name under shared/data/pairs), listed rather than globbed so
# that collecting this module reads nothing; test_dev_pairs_present checks the list is complete.
DEV_PAIRS = (
    [f"epfl_rgbnir_x4/{n}" for n in ("indoor_0001", "mountain_0017")]
    + [f"middlebury_depth_x4/Aloe_{v}_{i}" for v in (1, 2) for i in (16, 17, 18, 19)]
    + [f"ulb17vt_thermal_x4/{n:03d}" for n in (6, 36, 64, 86, 128, 157, 173, 196, 239, 259, 277, 310, 334, 353,
                                               371, 381)]
)
# The Middlebury depth LRs were additionally min-max stretched to 0..255 after the bicubic
# downscale (their GT spans e.g. 0..209 while every LR spans exactly 0..255), so for them the
# protocol holds up to a per-image affine intensity map, fitted below on unclipped pixels.
STRETCHED = {"middlebury_depth_x4"}


@pytest.fixture(scope="module")
def pairs(shared_data: Path) -> Path:
    return shared_data / "pairs"


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_dev_pairs_present(pairs: Path) -> None:
    shipped = sorted(f"{p.parent.name}/{p.name[: -len('_gt.png')]}" for p in pairs.glob("*/*_gt.png"))
    assert len(DEV_PAIRS) == 26 and shipped == sorted(DEV_PAIRS), f"the dev pairs under {pairs} are not DEV_PAIRS"


@pytest.mark.parametrize("pair", DEV_PAIRS)
def test_imresize_reproduces_shipped_lr(pairs: Path, pair: str) -> None:
    gt_path = pairs / f"{pair}_gt.png"
    gt = _load(gt_path)
    lr = _load(gt_path.with_name(gt_path.name.replace("_gt", "_lr"))).astype(np.float64)
    if gt_path.parent.name in STRETCHED:
        down = imresize(gt.astype(np.float64), 0.25)
        assert down.shape == lr.shape
        inner = (lr > 0) & (lr < 255)
        a, b = np.linalg.lstsq(np.stack([down[inner], np.ones(inner.sum())], 1), lr[inner], rcond=None)[0]
        assert a > 1.0  # a real stretch, not the identity: the finding this branch documents
        ours = np.clip(np.round(a * down + b), 0, 255)
    else:
        ours = imresize(gt, 0.25).astype(np.float64)  # uint8 in -> rounded uint8 out
        assert ours.shape == lr.shape
    assert np.abs(ours - lr).mean() < 0.1


def test_imresize_uint8_equals_rounded_float(pairs: Path) -> None:
    gt = _load(pairs / f"{DEV_PAIRS[0]}_gt.png")
    assert np.array_equal(imresize(gt, 0.25), np.clip(np.round(imresize(gt.astype(np.float64), 0.25)), 0, 255))


def test_numpy_and_torch_agree_and_shapes_are_exact() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((37, 53))
    t = imresize_torch(torch.from_numpy(x), 3.0).numpy()
    assert t.shape == (111, 159)
    np.testing.assert_allclose(imresize(x, 3), t, atol=1e-12)
    assert upsample_torch(torch.from_numpy(x), 3).shape == (111, 159)
    assert degrade_torch(torch.from_numpy(t), 3, "bicubic").shape == (37, 53)


def test_upsample_preserves_constants_and_area_is_block_mean() -> None:
    c = torch.full((9, 7), 0.3, dtype=torch.float64)
    np.testing.assert_allclose(upsample_torch(c, 4).numpy(), 0.3, atol=1e-12)
    x = torch.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(degrade_torch(x, 2, "area").numpy(), [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError):
        degrade_torch(x, 2, "nearest")  # type: ignore[arg-type]
