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
from .runtime import DevicePolicy


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
    diff = rng.standard_normal() * config.sampling.scale_diff_sigma
    reflect = np.sign(rng.standard_normal()) if config.sampling.allow_rotation else 1.0
    theta = rng.random() * 2 * math.pi if config.sampling.allow_rotation else 0.0
    shx, shy = rng.standard_normal(2) * config.sampling.shear_sigma
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
    if u < config.sampling.leave_as_is_probability:
        mode = "as_is"
    elif u < config.sampling.leave_as_is_probability + config.sampling.no_interpolate_probability:
        mode = "no_interp"
    else:
        mode = "affine"
    max_scale = float(source_bases[-1])
    scale = 1.0 if mode == "as_is" else config.sampling.min_scale + rng.random() * (max_scale - config.sampling.min_scale)
    index = next(i for i, b in enumerate(source_bases) if b > scale - 1e-6)
    shape = source_shapes[index]
    side = crop_side(config, factor, shape)
    if mode == "affine":
        coords = _affine_coords(rng, shape, side, scale / source_bases[index], config)
    elif mode == "no_interp":
        k = int(rng.integers(4)) if config.sampling.allow_rotation else 0
        flip = bool(rng.integers(2)) if config.sampling.allow_rotation else False
        coords = _integer_coords(rng, shape, side, k, flip)
    else:
        coords = _integer_coords(rng, shape, side, 0, False)
    return Augmentation(mode=mode, source_index=index, coords=coords)


def source_scale(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(2/w, 2/h) as a cached float32 device tensor: pixel coords -> ``grid_sample``'s normalised ones
    (``cmsr.warp.to_normalized``) without building the constant in every training iteration."""
    key = (height, width, str(device))
    if key not in _SCALES:
        _SCALES[key] = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float32).to(device)
    return _SCALES[key]


_SCALES: dict[tuple, torch.Tensor] = {}


def extract(sources: torch.Tensor, coords: torch.Tensor, interpolate: list[bool],
            policy: DevicePolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """n fathers and their valid masks from stacked sources (n, 2, H, W) (image, valid as 0/1) at
    source pixel coordinates (n, s, s, 2).

    Integer modes gather exactly; affine mode samples bilinearly, and a father pixel is valid only
    when it lies inside the source and every LR pixel it interpolates from is valid.
    """
    n, _, h, w = sources.shape
    side = coords.shape[1]
    fathers = torch.empty((n, side, side), dtype=sources.dtype, device=sources.device)
    masks = torch.empty((n, side, side), dtype=torch.bool, device=sources.device)
    interp = [i for i, f in enumerate(interpolate) if f]
    exact = [i for i, f in enumerate(interpolate) if not f]
    if exact:
        ei = policy.to_device(np.asarray(exact), torch.long)
        c = coords.index_select(0, ei).round().long()
        flat = (c[..., 1] * w + c[..., 0]).reshape(len(exact), 1, -1).expand(-1, 2, -1)
        vals = torch.gather(sources.index_select(0, ei).reshape(len(exact), 2, -1), 2, flat)
        vals = vals.reshape(len(exact), 2, side, side)
        fathers.index_copy_(0, ei, vals[:, 0])
        masks.index_copy_(0, ei, vals[:, 1] > 0.5)
    if interp:
        ii = policy.to_device(np.asarray(interp), torch.long)
        pts = coords.index_select(0, ii)
        grid = (pts + 0.5) * source_scale(h, w, sources.device) - 1.0
        out = F.grid_sample(sources.index_select(0, ii), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        inside = (pts[..., 0] >= -0.5) & (pts[..., 0] <= w - 0.5) & (pts[..., 1] >= -0.5) & (pts[..., 1] <= h - 0.5)
        fathers.index_copy_(0, ii, out[:, 0])
        masks.index_copy_(0, ii, (out[:, 1] > 0.999) & inside)
    return fathers, masks
