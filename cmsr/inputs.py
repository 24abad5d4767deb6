"""Between a user's arrays and the normalised tensors the methods work on.

Robust normalisation (and its exact inverse), nodata filling and masking, guide band / alpha /
range handling and guide size checks, written once for every entry (``cmsr.run``,
``cmsr.run_many``, the survey warm start). Bad input raises :class:`cmsr.InvalidInput` with a
message that says what is wrong.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmsr.errors import InputWarning, InvalidInput
from cmsr.resize import imresize_torch

MIN_SCALE, MAX_SCALE = 2, 8
ROBUST_PERCENTILES = (0.5, 99.5)
"""Percentiles of the valid pixels mapped to 0 and 1: robust to a few hot/dead pixels."""
ASPECT_TOLERANCE = 0.05
"""A guide whose aspect ratio differs from the target's by more than this is refused."""


# ---------------------------------------------------------------------------------------------
# argument checks


def check_scale(scale: object) -> int:
    """The integer scale in 2..8, or InvalidInput."""
    if isinstance(scale, bool):
        raise InvalidInput(f"scale must be an integer in {MIN_SCALE}..{MAX_SCALE}, got {scale!r}")
    if isinstance(scale, numbers.Integral):
        s = int(scale)
    elif isinstance(scale, numbers.Real) and float(scale).is_integer():
        s = int(scale)
    else:
        raise InvalidInput(f"scale must be an integer in {MIN_SCALE}..{MAX_SCALE}, got {scale!r}")
    if not MIN_SCALE <= s <= MAX_SCALE:
        raise InvalidInput(f"scale must be an integer in {MIN_SCALE}..{MAX_SCALE}, got {s}")
    return s


def check_guide_size(guide_hw: tuple[int, int], target_hw: tuple[int, int], scale: int) -> bool:
    """True if the guide must be resampled to ``scale`` x target; InvalidInput if aspects differ.

    Sizes in messages are rows x columns.
    """
    gh, gw = (int(v) for v in guide_hw)
    h, w = (int(v) for v in target_hw)
    if min(gh, gw) < 1:
        raise InvalidInput(f"guide size {gh}x{gw} is empty")
    want = (scale * h, scale * w)
    if (gh, gw) == want:
        return False
    ratio = (gw / gh) / (w / h)
    if abs(ratio - 1.0) > ASPECT_TOLERANCE:
        raise InvalidInput(
            f"guide size {gh}x{gw} and target size {h}x{w} (rows x cols) differ in aspect ratio by "
            f"{abs(ratio - 1.0):.1%} (> {ASPECT_TOLERANCE:.0%}); they cannot show the same scene"
        )
    return True


# ---------------------------------------------------------------------------------------------
# normalisation and nodata


def robust_range(values: np.ndarray, percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> tuple[float, float]:
    """(lo, hi) = percentiles of the finite values, widened if degenerate (min/max, then lo + 1).

    The one definition of a band's normalisation range: a tile's own (``cmsr.run``) and a
    survey's (``pipelines`` hands it to ``tiling.align.survey_stats``), so the two cannot drift.
    Percentiles, not min/max, because one hot pixel must not squash the whole band."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        raise InvalidInput("the image has no valid (finite) pixel")
    lo, hi = (float(x) for x in np.percentile(v.astype(np.float64), percentiles))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def fill_nodata(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Fill invalid pixels of an (h, w) tensor by push-pull (a pyramid of normalised averages).

    Valid pixels are returned unchanged; each hole gets the weighted mean of the nearest valid
    data at the coarsest pyramid level where that data exists. Why: resizing and convolutions
    must not see NaN, and a smooth fill keeps ringing at nodata borders small (the filled pixels
    are masked out of every loss and of the output anyway).
    """
    if bool(valid.all()):
        return x
    if not bool(valid.any()):
        raise InvalidInput("the target has no valid pixel (all nodata)")
    w = valid.to(x.dtype)[None, None]
    v = torch.where(valid, x, torch.zeros_like(x))[None, None]
    pyramid = [(v, w)]
    while bool((pyramid[-1][1] == 0).any()):
        v, w = pyramid[-1]
        pyramid.append((F.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    v, w = pyramid[-1]
    est = v / w
    for v, w in reversed(pyramid[:-1]):
        up = est.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., : v.shape[-2], : v.shape[-1]]
        est = torch.where(w > 0, v / w.clamp_min(1e-30), up)
    return torch.where(valid, x, est[0, 0])


@dataclass(frozen=True)
class PreparedTarget:
    """A target ready for the methods: normalised, filled, with the inverse mapping."""

    lr: torch.Tensor  # (h, w) float32, NaN-free
    valid: torch.Tensor  # (h, w) bool
    lo: float
    hi: float

    def restore(self, y: torch.Tensor | np.ndarray) -> np.ndarray:
        """Normalised -> target units, float32 (computed in float64)."""
        arr = y.detach().cpu().double().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, np.float64)
        return (arr * (self.hi - self.lo) + self.lo).astype(np.float32)


def prepare_target(target: np.ndarray, target_range: tuple[float, float] | None) -> PreparedTarget:
    """Normalise an (h, w) target of any real dtype; NaN/inf are nodata."""
    arr = np.asarray(target)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InvalidInput(f"target must be a single-band (h, w) image, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInput(f"target must have a real numeric dtype, got {arr.dtype}")
    if min(arr.shape) < 2:
        raise InvalidInput(f"target is too small: {arr.shape[0]}x{arr.shape[1]}")
    data = arr.astype(np.float64)
    valid_np = np.isfinite(data)
    if not valid_np.any():
        raise InvalidInput("the target has no valid pixel (all nodata)")
    if target_range is not None:
        lo, hi = float(target_range[0]), float(target_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise InvalidInput(f"target_range must be finite (lo, hi) with hi > lo, got {target_range!r}")
    else:
        lo, hi = robust_range(data[valid_np])
    norm = torch.from_numpy((np.where(valid_np, data, 0.0) - lo) / (hi - lo))
    valid = torch.from_numpy(valid_np)
    filled = fill_nodata(norm, valid)
    return PreparedTarget(lr=filled.float(), valid=valid, lo=lo, hi=hi)


def _looks_like_alpha(band: np.ndarray) -> bool:
    """An integer band that is (almost) only 0 or full scale: a transparency mask, not data."""
    top = np.iinfo(band.dtype).max
    extreme = (band == 0) | (band == top)
    return bool((band == top).any()) and float(extreme.mean()) >= 0.99


def prepare_guide(
    guide: np.ndarray,
    target_hw: tuple[int, int],
    scale: int,
    guide_range: np.ndarray | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(C, H, W) float32 guide in [0, 1] on the exact ``scale`` x target grid, plus notes."""
    arr = np.asarray(guide)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] < 1:
        raise InvalidInput(f"guide must be (H, W) or (H, W, C), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or arr.dtype == bool:
        raise InvalidInput(f"guide must have a real numeric dtype, got {arr.dtype}")
    notes: dict[str, Any] = {}
    if arr.shape[-1] == 4 and arr.dtype in (np.uint8, np.uint16) and _looks_like_alpha(arr[..., 3]):
        arr = arr[..., :3]
        notes["guide_alpha_dropped"] = True
    resample = check_guide_size(arr.shape[:2], target_hw, scale)
    data = arr.astype(np.float64)
    c = data.shape[-1]
    if guide_range is not None:
        rng = np.asarray(guide_range, dtype=np.float64).reshape(-1, 2)
        if rng.shape[0] == 1 and c > 1:
            rng = np.repeat(rng, c, axis=0)
        if rng.shape[0] == c + 1 and notes.get("guide_alpha_dropped"):
            rng = rng[:c]
        if rng.shape[0] != c or not np.all(rng[:, 1] > rng[:, 0]):
            raise InvalidInput(f"guide_range must be ({c}, 2) with hi > lo per band, got {np.asarray(guide_range).shape}")
    elif arr.dtype == np.uint8:
        rng = np.tile([0.0, 255.0], (c, 1))
    else:
        rng = np.array([robust_range(data[..., k]) for k in range(c)])
    norm = (data - rng[:, 0]) / (rng[:, 1] - rng[:, 0])
    t = torch.from_numpy(np.clip(norm, 0.0, 1.0)).permute(2, 0, 1).contiguous()
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        t = torch.stack([fill_nodata(t[k], finite[k]) if bool(finite[k].any()) else torch.full_like(t[k], 0.5)
                         for k in range(c)])
    if resample:
        want = (scale * target_hw[0], scale * target_hw[1])
        warnings.warn(InputWarning(
            f"guide size {arr.shape[0]}x{arr.shape[1]} is not {scale} x target {target_hw[0]}x{target_hw[1]}; "
            f"resampling the guide to {want[0]}x{want[1]}"), stacklevel=3)
        t = imresize_torch(t, output_shape=want).clamp(0.0, 1.0)
        notes["guide_resampled_from"] = [int(arr.shape[0]), int(arr.shape[1])]
    notes["guide_bands"] = int(c)
    return t.float(), notes


@dataclass(frozen=True)
class PreparedTile:
    """One tile ready for the methods: the normalised target, its guide (or None) and notes."""

    target: PreparedTarget
    guide: torch.Tensor | None
    notes: dict[str, Any]


def prepare_tiles(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray | None], scale: int, *,
                  needs_guide: bool, target_range: tuple[float, float] | None,
                  guide_range: np.ndarray | None) -> list[PreparedTile]:
    """Normalise every tile the same way (``target_range`` / ``guide_range`` per tile when None).

    ``needs_guide``: the method uses a guide, so each tile must bring one."""
    if len(guides) != len(targets):
        raise ValueError(f"as many guides as targets are needed ({len(targets)}), got {len(guides)}")
    out = []
    for target, guide in zip(targets, guides):
        p = prepare_target(target, target_range)
        notes: dict[str, Any] = {"target_range": [p.lo, p.hi], "nodata_fraction": float(1.0 - p.valid.float().mean())}
        g = None
        if needs_guide:
            if guide is None:
                raise InvalidInput("this method needs a guide image")
            g, guide_notes = prepare_guide(guide, tuple(p.lr.shape), scale, guide_range)
            notes.update(guide_notes)
        out.append(PreparedTile(p, g, notes))
    return out


def restore(tile: PreparedTile, image: torch.Tensor, scale: int) -> np.ndarray:
    """A normalised (H, W) output -> target units, NaN where the target was nodata (expanded to HR
    by nearest neighbour)."""
    out = tile.target.restore(image)
    valid = tile.target.valid
    if not bool(valid.all()):
        valid_hr = np.repeat(np.repeat(valid.numpy(), scale, axis=0), scale, axis=1)
        out[~valid_hr] = np.nan
    return out
