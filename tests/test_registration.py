"""The guide registration's choice between the whole affine and the shift alone, on real dev pairs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmsr.config import CMSRConfig, Registration
from cmsr.inputs import prepare_tiles
from cmsr.registration import fit_affine, register
from cmsr.warp import AffineWarp

pytestmark = pytest.mark.usefixtures("shared_data")
SCALE = 4


def _pair(shared_data: Path, scene: str, rotate_deg: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = shared_data / "pairs" / "ulb17vt_thermal_x4"
    lr = np.asarray(Image.open(folder / f"{scene}_lr.png"), dtype=np.float32)
    lr = lr[..., 0] if lr.ndim == 3 else lr
    guide_img = Image.open(folder / f"{scene}_guide.png").convert("RGB")
    if rotate_deg:
        guide_img = guide_img.rotate(rotate_deg, resample=Image.BILINEAR)
    guide = np.asarray(guide_img, dtype=np.float32)
    t = prepare_tiles([lr], [guide], SCALE, needs_guide=True, target_range=None, guide_range=None)[0]
    return t.guide, t.target.lr, t.target.valid


def _criterion(affine: torch.Tensor, guide: torch.Tensor, lr: torch.Tensor, valid: torch.Tensor) -> float:
    """The registration's own full-resolution criterion at ``affine`` (no descent: zero iterations
    are not allowed, so one step of learning rate 0)."""
    settings = Registration(search_px=0, descent_iters=1, learning_rate=0.0, translation_fallback=False)
    warp = AffineWarp(affine)
    return fit_affine(warp, guide, lr, valid, settings)[-1]


def test_the_shift_alone_is_kept_where_the_affine_descent_ends_worse(shared_data: Path) -> None:
    """ULB17-VT 310: the affine's descent ends in a 16 % vertical squeeze with a higher criterion
    than the shift alone; the registration must return the shift (linear part exactly the identity),
    and without the fallback it returns the worse affine (the behaviour before)."""
    guide, lr, valid = _pair(shared_data, "310")
    settings = CMSRConfig.preset("best").registration
    chosen = register(guide, lr, valid, SCALE, settings)
    affine_only = register(guide, lr, valid, SCALE, Registration(translation_fallback=False))
    assert chosen is not None and affine_only is not None
    assert torch.equal(chosen[:, :2], torch.eye(2)), chosen
    assert abs(float(affine_only[1, 1]) - 1.0) > 0.05  # the spurious squeeze the fallback replaces
    assert _criterion(chosen, guide, lr, valid) < _criterion(affine_only, guide, lr, valid)


def test_a_real_rotation_keeps_the_affine(shared_data: Path) -> None:
    """A guide rotated by 3 degrees is no shift: the affine wins and recovers the rotation."""
    guide, lr, valid = _pair(shared_data, "006", rotate_deg=3.0)
    affine = register(guide, lr, valid, SCALE, CMSRConfig.preset("best").registration)
    assert affine is not None
    h, w = lr.shape
    linear_px = affine[:, :2].double().numpy() * np.array([[1.0, w / h], [h / w, 1.0]])  # normalised -> pixels
    angle = math.degrees(math.atan2(linear_px[1, 0] - linear_px[0, 1], linear_px[0, 0] + linear_px[1, 1]))
    assert abs(abs(angle) - 3.0) < 0.75, (angle, affine)
