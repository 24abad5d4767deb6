"""The public entry points of the core: numpy in, numpy out, in the target's own units.

One path for one tile or many: normalise (``cmsr.inputs``) -> a baseline, or the internal training
of all tiles as one batched computation (``cmsr.train``) -> restore units and nodata.
``run`` is ``run_many`` with one tile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cmsr.baselines import DEFAULT_BP_ROUNDS, back_projection, bicubic, guided_filter_upsample
from cmsr.config import GuidedFilterParams
from cmsr.errors import InvalidInput
from cmsr.guide_weight import guided_filter_weight, no_guide_weight
from cmsr.inputs import MAX_SCALE, MIN_SCALE, check_guide_size, check_scale, prepare_tiles, restore  # noqa: F401 (public)
from cmsr.runtime import AmpChoice

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cmsr.config import CMSRConfig
    from cmsr.registration import RegistrationEstimate

METHODS: tuple[str, ...] = ("cmsr", "zssr", "bicubic", "bp", "guided")
LEARNED: tuple[str, ...] = ("cmsr", "zssr")

ProgressFn = Callable[[int, float, float], None]
"""``cmsr.run``'s progress: (iteration, reconstruction error, learning rate) at every check."""


@dataclass(frozen=True)
class SRResult:
    """One tile's output."""

    image: np.ndarray
    """(H, W) float32 in the target's units; NaN where the target was nodata."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Small JSON-able summary (method, scale, seconds, normalisation, training stats...)."""
    displacement: np.ndarray | None = None
    """(H, W, 2) guide displacement (dy, dx) in HR pixels; None when the guide was used as given."""
    guide_weight: np.ndarray | None = None
    """(H, W) float32 in [0, 1], NaN where ``image`` is: how far the guide was allowed to shape each
    output pixel (0 = the target alone, 1 = fully guide-shaped; ``cmsr.guide_weight`` says how it
    is derived per method). Only when asked (``run(..., guide_weight=True)``), else None."""


def _default_config() -> "CMSRConfig":
    from cmsr.config import DEFAULT_PRESET, CMSRConfig

    return CMSRConfig.preset(DEFAULT_PRESET)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInput(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {device!r} requested but CUDA is not available")
    return dev


def run(target: np.ndarray, guide: np.ndarray | None, scale: int, config: "CMSRConfig | None" = None, *,
        method: str = "cmsr", seed: int = 0, device: str | torch.device = "cpu",
        target_range: tuple[float, float] | None = None, guide_range: np.ndarray | None = None,
        init_state: dict[str, torch.Tensor] | None = None, progress: ProgressFn | None = None,
        amp: AmpChoice = "off", guide_weight: bool = False) -> SRResult:
    """Super-resolve ``target`` (h, w) by ``scale`` guided by ``guide`` (scale*h, scale*w[, C]).

    ``method``: one of :data:`METHODS`. ``config`` None -> the default preset. ``guide`` may be
    None for ``bicubic``, ``bp`` and ``zssr``. Output float32 in target units, NaN at nodata.
    ``guide_weight``: also return ``SRResult.guide_weight`` (the image is the same either way).
    """
    tile_progress = None if progress is None else (lambda _tile, it, err, lr: progress(it, err, lr))
    return run_many([target], [guide], scale, config, method=method, seeds=[seed], device=device,
                    target_range=target_range, guide_range=guide_range, init_state=init_state,
                    progress=tile_progress, amp=amp, guide_weight=guide_weight)[0]


def run_many(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray | None], scale: int,
             config: "CMSRConfig | None" = None, *, method: str = "cmsr", seeds: Sequence[int],
             device: str | torch.device = "cpu", target_range: tuple[float, float] | None = None,
             guide_range: np.ndarray | None = None, init_state: dict[str, torch.Tensor] | None = None,
             progress: Callable[[int, int, float, float], None] | None = None, amp: AmpChoice = "off",
             max_batch: int | None = None, guide_weight: bool = False,
             registrations: Sequence[np.ndarray | None] | None = None) -> list[SRResult]:
    """:func:`run` for many tiles of one survey: one :class:`SRResult` per tile.

    The learned methods train all tiles as one batched computation (``max_batch`` at a time;
    default all), each with its own seed, and a tile's result does not depend on its neighbours.
    ``target_range`` / ``guide_range``: survey-level normalisation (per tile when None).
    ``init_state``: a survey model's weights (``cmsr.survey_model``), with ``config`` then its
    ``tile_config``. ``progress(tile, iteration, error, lr)`` at every reconstruction check.
    ``guide_weight``: each result also carries its guide weight map (see :class:`SRResult`).
    ``registrations`` (method ``cmsr`` with a guide branch): per tile a (2, 3) affine of normalised
    coordinates (``RegistrationEstimate.affine``, e.g. from a survey's consistent field) or None
    (the guide as given), used instead of the tile's own ``config.registration``; the same affine
    ``register`` would find gives the same result, bit for bit.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    if len(seeds) != len(targets):
        raise ValueError(f"run_many needs one seed per target ({len(targets)}), got {len(seeds)}")
    s = check_scale(scale)
    dev = _device(device)
    cfg = config if config is not None else _default_config()
    if method == "zssr" and cfg.guide is not None:
        cfg = cfg.without_guide()
    needs_guide = method == "guided" or (method == "cmsr" and cfg.guide is not None)
    if needs_guide and any(g is None for g in guides):
        raise InvalidInput(f"method {method!r} needs a guide image")
    if registrations is not None and not (method == "cmsr" and cfg.guide is not None):
        raise ValueError(f"registrations apply to method 'cmsr' with a guide branch, not {method!r}")
    tiles = prepare_tiles(targets, guides, s, needs_guide=needs_guide, target_range=target_range,
                          guide_range=guide_range)
    results = []
    if method in LEARNED:
        from cmsr.train import train  # lazy: the baselines never pay for the trainer's imports

        trained = train([t.target.lr for t in tiles], [t.guide for t in tiles], [t.target.valid for t in tiles], s,
                        cfg, seeds=seeds, device=dev, init_state=init_state, progress=progress, amp=amp,
                        max_batch=max_batch, guide_weight=guide_weight, registrations=registrations)
        per_tile = (time.perf_counter() - t0) / max(len(tiles), 1)
        for t, tr in zip(tiles, trained):
            stats = {"method": method, "scale": s, **t.notes, **{k: v for k, v in tr.stats.items() if k != "seconds"},
                     "train_seconds": tr.stats.get("seconds"), "survey_model": init_state is not None,
                     "seconds": round(per_tile, 3)}
            image = restore(t, tr.image, s)
            weight = _masked_weight(tr.guide_weight, image) if guide_weight else None
            results.append(SRResult(image, stats, tr.displacement, weight))
        return results
    for t in tiles:
        t1 = time.perf_counter()
        lr = t.target.lr.to(dev)
        stats: dict[str, Any] = {"method": method, "scale": s, **t.notes}
        weight: torch.Tensor | None = None
        if method == "bicubic":
            out = bicubic(lr, s)
        elif method == "bp":
            out = back_projection(bicubic(lr, s), lr, s, DEFAULT_BP_ROUNDS, cfg.degradation)
            stats["bp_rounds"] = DEFAULT_BP_ROUNDS
        else:
            params = GuidedFilterParams()
            out = guided_filter_upsample(lr, t.guide.to(dev), s, params, cfg.degradation)  # type: ignore[union-attr]
            stats["guided_filter"] = {"radius": params.radius, "eps": params.eps,
                                      "iterations": params.iterations, "bp_rounds": params.bp_rounds}
            if guide_weight:
                weight = guided_filter_weight(lr, t.guide.to(dev), s, params)  # type: ignore[union-attr]
        if guide_weight and weight is None:
            weight = no_guide_weight(lr, s)
        stats["seconds"] = round(time.perf_counter() - t1, 3)
        image = restore(t, out, s)
        results.append(SRResult(image, stats, None, _masked_weight(weight, image) if guide_weight else None))
    return results


def estimate_registrations(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray], scale: int,
                           config: "CMSRConfig | None" = None, *, device: str | torch.device = "cpu",
                           target_range: tuple[float, float] | None = None,
                           guide_range: np.ndarray | None = None) -> list["RegistrationEstimate"]:
    """Each tile's guide registration (``config.registration``, the default preset's when None) and
    how far to trust it, on exactly what ``run_many`` would train: the same normalisation and fit,
    so handing ``estimate.affine`` back through ``run_many(..., registrations=)`` (None where
    ``not estimate.moves_guide``) trains as the tile's own registration would."""
    from cmsr.registration import estimate
    from cmsr.runtime import device_policy

    cfg = config if config is not None else _default_config()
    if cfg.registration is None or cfg.guide is None:
        raise ValueError("estimate_registrations needs a config with a guide branch and a registration")
    s = check_scale(scale)
    policy = device_policy(_device(device), "off")
    tiles = prepare_tiles(targets, guides, s, needs_guide=True, target_range=target_range, guide_range=guide_range)
    out = []
    for t in tiles:  # as the trainer's tile state holds them (cmsr.train._Tile)
        lr = policy.to_device(t.target.lr.detach())
        valid = t.target.valid.detach().to(policy.device, torch.bool)
        out.append(estimate(t.guide, lr, valid, s, cfg.registration))  # type: ignore[arg-type]
    return out


def _masked_weight(weight: torch.Tensor | None, image: np.ndarray) -> np.ndarray:
    """The weight map as the user gets it: float32 (H, W), NaN exactly where the image is nodata."""
    if weight is None:  # a learned method run without a guide weight (a bug to reach here)
        raise RuntimeError("the trainer returned no guide weight")
    w = weight.detach().float().cpu().numpy().clip(0.0, 1.0)
    return np.where(np.isfinite(image), w, np.float32(np.nan)).astype(np.float32)


def superresolve(target: np.ndarray, guide: np.ndarray | None, scale: int, config: "CMSRConfig | None" = None,
                 **kwargs: Any) -> np.ndarray:
    """``run(...).image``: the super-resolved (H, W) float32 array in target units."""
    return run(target, guide, scale, config, **kwargs).image
