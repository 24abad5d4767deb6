"""ZSSR father/son sampling, expressed as per-pixel source coordinates.

An augmentation is the map "father pixel -> (continuous) source pixel". Keeping it as explicit
coordinates rather than a warped image lets the same map be composed with the learned guide warp
(``guide(phi(normalise(coords)))``), so the deformed guide is sampled only where the crop needs it,
and lets the valid mask travel through exactly the same map.

Modes, as in ZSSR's ``random_augment`` (probabilities from the config):
* ``as_is`` (p = 0.05): an integer crop of the LR source;
* ``no_interp`` (p = 0.45): one of the 8 rotations/flips and an integer crop;
* ``affine`` (else): zoom in [min_scale, max_scale] (picking the smallest father source whose base
  scale covers it, then zooming relative to it), x/y anisotropy ~ N(0, 0.25), shear ~ N(0, 0.1),
  a uniform rotation and a random reflection; bilinear sampling. Father pixels that fall outside
  the source are masked out of the loss (the official code fills them with zeros and trains on
  them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import CMSRConfig


@dataclass(frozen=True)
class Augmentation:
    """One father: which source, how it is sampled, and its (ch, cw, 2) source (x, y) coordinates."""

    mode: str
    source_index: int
    coords: np.ndarray  # float64 (ch, cw, 2): x = column, y = row, pixel centre j at j

    @property
    def interpolate(self) -> bool:
        return self.mode == "affine"


def crop_side(config: CMSRConfig, factor: int, source_shape: tuple[int, int]) -> int:
    """Father side: ``crop_size`` rounded up to a multiple of ``factor``, capped by the source."""
    want = int(math.ceil(config.crop_size / factor) * factor)
    cap = (min(source_shape) // factor) * factor
    return max(factor, min(want, cap))


def _integer_coords(rng: np.random.Generator, shape: tuple[int, int], side: int, k: int, flip: bool) -> np.ndarray:
    h, w = shape
    idx = np.arange(h * w).reshape(h, w)
    idx = np.rot90(idx, k)
    if flip:
        idx = idx[:, ::-1]
    hh, ww = idx.shape
    y0 = int(rng.integers(0, hh - side + 1))
    x0 = int(rng.integers(0, ww - side + 1))
    crop = idx[y0:y0 + side, x0:x0 + side]
    return np.stack([crop % w, crop // w], axis=-1).astype(np.float64)


def _affine_coords(rng: np.random.Generator, shape: tuple[int, int], side: int, zoom: float,
                   config: CMSRConfig) -> np.ndarray:
    h, w = shape
    diff = rng.standard_normal() * config.augment_scale_diff_sigma
    reflect = np.sign(rng.standard_normal()) if config.augment_allow_rotation else 1.0
    theta = rng.random() * 2 * math.pi if config.augment_allow_rotation else 0.0
    shx, shy = rng.standard_normal(2) * config.augment_shear_sigma
    sx = reflect * max(zoom + diff / 2, 0.1)
    sy = max(zoom - diff / 2, 0.1)
    c, s = math.cos(theta), math.sin(theta)
    fwd = np.array([[1.0, shx], [shy, 1.0]]) @ np.array([[c, s], [-s, c]]) @ np.diag([sx, sy])  # source -> father
    inv = np.linalg.inv(fwd)
    half = (side - 1) / 2.0
    corners = inv @ np.array([[-half, half, -half, half], [-half, -half, half, half]])
    ex, ey = np.abs(corners).max(axis=1) + 0.5
    lo_x, hi_x = sorted((ex - 0.5, w - 0.5 - ex))
    lo_y, hi_y = sorted((ey - 0.5, h - 0.5 - ey))
    cx = lo_x + rng.random() * (hi_x - lo_x)
    cy = lo_y + rng.random() * (hi_y - lo_y)
    r, q = np.meshgrid(np.arange(side) - half, np.arange(side) - half, indexing="ij")
    off = np.stack([q.ravel(), r.ravel()])  # (2, N) father offsets (x, y)
    src = inv @ off
    return np.stack([src[0] + cx, src[1] + cy], axis=-1).reshape(side, side, 2)


def sample_augmentation(rng: np.random.Generator, source_shapes: list[tuple[int, int]],
                        source_bases: list[int], factor: int, config: CMSRConfig) -> Augmentation:
    """Draw one father. ``source_bases[i]`` is the scale of source i relative to the LR (1 = LR)."""
    u = rng.random()
    if u < config.augment_leave_as_is_probability:
        mode = "as_is"
    elif u < config.augment_leave_as_is_probability + config.augment_no_interpolate_probability:
        mode = "no_interp"
    else:
        mode = "affine"
    max_scale = float(source_bases[-1])
    scale = 1.0 if mode == "as_is" else config.augment_min_scale + rng.random() * (max_scale - config.augment_min_scale)
    index = next(i for i, b in enumerate(source_bases) if b > scale - 1e-6)
    shape = source_shapes[index]
    side = crop_side(config, factor, shape)
    if mode == "affine":
        coords = _affine_coords(rng, shape, side, scale / source_bases[index], config)
    elif mode == "no_interp":
        k = int(rng.integers(4)) if config.augment_allow_rotation else 0
        flip = bool(rng.integers(2)) if config.augment_allow_rotation else False
        coords = _integer_coords(rng, shape, side, k, flip)
    else:
        coords = _integer_coords(rng, shape, side, 0, False)
    return Augmentation(mode=mode, source_index=index, coords=coords)


def extract(image: torch.Tensor, valid: torch.Tensor, aug: Augmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """The father (ch, cw) and its valid mask (bool) from a source image (H, W) and mask (H, W).

    Integer modes gather exactly; affine mode samples bilinearly, and a father pixel is valid only
    when it lies inside the source and every LR pixel it interpolates from is valid.
    """
    h, w = image.shape
    if not aug.interpolate:
        xs = torch.as_tensor(aug.coords[..., 0], dtype=torch.long, device=image.device)
        ys = torch.as_tensor(aug.coords[..., 1], dtype=torch.long, device=image.device)
        return image[ys, xs], valid[ys, xs]
    pts = torch.as_tensor(aug.coords, dtype=torch.float32, device=image.device)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=image.device)
    grid = ((pts + 0.5) * scale - 1.0).unsqueeze(0)
    both = torch.stack([image, valid.to(image.dtype)]).unsqueeze(0)
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    inside = ((pts[..., 0] >= -0.5) & (pts[..., 0] <= w - 0.5) & (pts[..., 1] >= -0.5) & (pts[..., 1] <= h - 0.5))
    return out[0], (out[1] > 0.999) & inside
