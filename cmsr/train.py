"""Internal training on the single pair and self-ensembled inference (the CMSR core).

Entry point: :func:`super_resolve_normalized` (normalised, NaN-free tensors in, normalised tensor
out; ``cmsr.api`` does units, nodata and guide checks). Per stage factor ``f`` (x2 then x4 for
x4 in the paper preset):

1. train: each iteration draws a father crop from the father sources (the LR, plus earlier
   stages' outputs), makes the son with the configured degradation, upsamples it back (MATLAB
   bicubic) and predicts the father as ``up + F_sr(up) + F_g(guide(phi(A(p))))`` where ``A`` is the
   augmentation's coordinates and ``phi`` the learned warp. ``F_sr`` learns from its own loss only
   (``up + F_sr(up)`` vs father); ``F_g`` and the warp learn from the full-output loss, with
   ``F_sr``'s output detached (gradient isolation, as the official separate optimisers do). L1,
   masked by the valid mask carried through the augmentation. Adam, batch 1. ZSSR's lr policy.
2. infer: 8-way geometric self-ensemble of ``up(LR) + F_sr + F_g(warped guide at the stage grid)``,
   back-projection of every member, pixel-wise median, back-projection again.

Where this differs from the official TensorFlow code (all small, all deliberate): values are not
clipped to [0, 1] (``cmsr.api`` normalises with robust statistics, so hot spots may exceed 1);
father pixels that an affine augmentation takes outside the source are masked out of the loss
instead of being trained on as zeros; the guide is sampled with border replication; the mid-scale
warp is a stationary velocity field integrated by scaling-and-squaring instead of CPAB (see
``cmsr.warp``); the deformed guide is sampled at the crop's points only. Non-power-of-two scales
run gradually through the powers of two below them (see ``CMSRConfig.stage_factors``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import model as M
from .augment import Augmentation, extract, sample_augmentation
from .baselines import GuidedFilterParams, guide_confidence, guided_filter_upsample
from .config import CMSRConfig
from .resize import degrade_torch, imresize_torch, upsample_torch
from .warp import GuideWarp, pixel_centers, prealign, sample, to_normalized

_ADAM_KWARGS: dict = {"fused": True}
"""torch's fused Adam (one kernel for every tensor; CPU since torch 2.4): the same update as the
default per-tensor loop, ~2 ms less per training iteration on this CPU. Empty where unsupported."""
if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 4):
    _ADAM_KWARGS = {}
GUIDED_BASES: tuple[str, ...] = ("guided", "guided_smooth")
ProgressFn = Callable[[int, float, float], None]
PROGRESS_EVERY = 10
AUTO_BASE_FACTOR = 2
"""The ``auto`` base is chosen by reconstructing the LR from its /2 copy: at /4 an 80x60 LR leaves
20x15 pixels, too few for a stable choice (it picked the guided filter for 9 of 16 thermal pairs,
where the guided filter loses 0.5 dB to plain back-projection; at /2 it picks it for 3)."""


@dataclass(frozen=True)
class TrainOutput:
    """Result of :func:`super_resolve_normalized`."""

    image: torch.Tensor
    """(H, W) float32 on CPU, in the same normalised units as the input LR."""
    stats: dict
    """Small JSON-able summary: iterations, final_loss, final_lr, seconds, mean_warp_px, stages..."""
    displacement: np.ndarray | None
    """(H, W, 2) learned guide displacement (dy, dx) in HR pixels; None without warp."""
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    """Final network weights (CPU), usable as ``init_state`` of another tile."""


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over ``mask`` (invalid pixels contribute nothing, not even to the count)."""
    m = mask.to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)


def compute_losses(params: M.Params, up: torch.Tensor, father: torch.Tensor, mask: torch.Tensor,
                   guide_crop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss_sr, loss_full) for one father. ``up``/``father``/``mask``: (H, W); guide_crop (C, H, W).

    ``loss_sr`` reaches only ``F_sr``; ``loss_full`` sees ``F_sr``'s output detached, so its gradient
    reaches only ``F_g`` and (through ``guide_crop``) the warp.
    """
    u = up[None, None]
    sr_out = u + M.sr_residual(params, u)
    loss_sr = masked_l1(sr_out[0, 0], father, mask)
    if guide_crop is None or not M.has_guide_branch(params):
        return loss_sr, None
    full = sr_out.detach() + M.guide_residual(params, guide_crop[None])
    return loss_sr, masked_l1(full[0, 0], father, mask)


def back_project(y: torch.Tensor, lr: torch.Tensor, factor: int, rounds: int, degradation: str) -> torch.Tensor:
    """``rounds`` x ``y += up(lr - down(y))``: make ``y`` consistent with the LR under the model."""
    for _ in range(rounds):
        y = y + upsample_torch(lr - degrade_torch(y, factor, degradation), factor)  # type: ignore[arg-type]
    return y


def _base(small: torch.Tensor, factor: int, config: CMSRConfig, kind: str,
          guide: torch.Tensor | None) -> torch.Tensor:
    """The non-learned base the residuals are added to (see ``CMSRConfig.base``)."""
    if kind in GUIDED_BASES and guide is not None:
        params = GuidedFilterParams.smooth(config.base_gate) if kind == "guided_smooth" \
            else GuidedFilterParams(gate=config.base_gate)
        return guided_filter_upsample(small, guide.detach(), factor, params, degradation=config.degradation)
    up = upsample_torch(small, factor)
    if kind == "bicubic":
        return up
    return back_project(up, small, factor, config.base_bp_rounds, config.degradation)


def _transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Ensemble member k of 8: rotate by k % 4 quarter turns, then flip when k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def _untransform(x: torch.Tensor, k: int) -> torch.Tensor:
    y = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def _median(stack: torch.Tensor) -> torch.Tensor:
    """Pixel-wise median over dim 0 (mean of the two middle values for an even count, as numpy)."""
    s, _ = torch.sort(stack, dim=0)
    n = s.shape[0]
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class _Guide:
    """The guide and its per-grid resized copies, plus the warp (or identity)."""

    def __init__(self, guide: torch.Tensor, lr_shape: tuple[int, int], warp: GuideWarp | None, mode: str) -> None:
        self.full = guide
        self.lr_shape = lr_shape
        self.warp = warp
        self.mode = mode
        self._levels: dict[int, torch.Tensor] = {}

    def level(self, base: int) -> torch.Tensor:
        """The guide resized (MATLAB antialiased bicubic) onto the grid ``base`` x the LR."""
        h, w = self.lr_shape
        shape = (base * h, base * w)
        if tuple(self.full.shape[-2:]) == shape:
            return self.full
        if base not in self._levels:
            self._levels[base] = imresize_torch(self.full, output_shape=shape).contiguous()
        return self._levels[base]

    def warped_points(self, points: torch.Tensor) -> torch.Tensor:
        return points if self.warp is None else self.warp(points)

    def train_sample(self, points: torch.Tensor, base: int) -> torch.Tensor:
        """Deformed guide at normalised points of a father from the source at ``base``."""
        img = self.full if self.mode == "point" else self.level(base)
        return sample(img, self.warped_points(points))

    def stage_grid(self, base: int) -> torch.Tensor:
        """Deformed guide on the whole grid ``base`` x the LR (inference)."""
        h, w = self.lr_shape
        pts = pixel_centers(base * h, base * w, self.full.device)
        return sample(self.level(base), self.warped_points(pts))


def choose_base_kind(lr: torch.Tensor, valid: torch.Tensor, config: CMSRConfig, gd: _Guide | None) -> str:
    """The base of this image (``config.base``, or for ``auto`` the internal-reconstruction choice
    at /``AUTO_BASE_FACTOR``). Called once per image before the first stage."""
    if config.base != "auto":
        return config.base
    return _ReconCheck(lr, valid, AUTO_BASE_FACTOR, config, gd).choose_base()


def make_warp(guide: torch.Tensor, lr: torch.Tensor, valid: torch.Tensor, scale: int,
              config: CMSRConfig) -> GuideWarp:
    """A tile's internal transformer before training: the identity, pre-registered to the LR when
    ``config.warp_prealign_iters`` > 0, and reset to the identity when that registration moved the
    guide by less than ``config.warp_min_registration_px`` HR pixels on average."""
    warp = GuideWarp(config.svf_grid, config.svf_integration_grid, config.svf_squarings,
                     config.tps_grid).to(lr.device)
    if config.warp_prealign_iters > 0:
        prealign(warp, guide, lr, valid, config.warp_prealign_iters, config.warp_prealign_lr,
                 search=config.warp_prealign_search)
        h, w = lr.shape
        if warp.mean_displacement_px(scale * h, scale * w) < config.warp_min_registration_px:
            warp.reset_()
    return warp


def _check_inputs(lr: torch.Tensor, guide: torch.Tensor | None, valid: torch.Tensor, scale: int) -> None:
    if lr.ndim != 2:
        raise ValueError(f"lr must be (h, w), got shape {tuple(lr.shape)}")
    if not 2 <= int(scale) <= 8:
        raise ValueError(f"scale must be an integer in 2..8, got {scale}")
    if tuple(valid.shape) != tuple(lr.shape):
        raise ValueError(f"valid mask shape {tuple(valid.shape)} differs from lr shape {tuple(lr.shape)}")
    if guide is not None:
        want = (scale * lr.shape[0], scale * lr.shape[1])
        if guide.ndim != 3 or tuple(guide.shape[-2:]) != want:
            raise ValueError(f"guide must be (C, {want[0]}, {want[1]}) for lr {tuple(lr.shape)} at x{scale}, "
                             f"got {tuple(guide.shape)}")
    if not torch.isfinite(lr).all():
        raise ValueError("lr contains NaN/inf: fill nodata before calling super_resolve_normalized")


class _LRPolicy:
    """ZSSR's learning-rate policy on the reconstruction error."""

    def __init__(self, config: CMSRConfig) -> None:
        self.cfg = config
        self.lr = config.learning_rate
        self.steps: list[int] = []
        self.errors: list[float] = []
        self.last_change = 0

    def record(self, it: int, err: float) -> None:
        self.steps.append(it)
        self.errors.append(err)

    def update(self, it: int) -> bool:
        """Maybe divide the lr by 10 after iteration ``it``; True when it changed."""
        cfg = self.cfg
        if (it + 1) % cfg.lr_policy_check_every or it - self.last_change <= cfg.min_iters:
            return False
        xs = np.asarray(self.steps[-cfg.lr_slope_points:], dtype=np.float64)
        ys = np.asarray(self.errors[-cfg.lr_slope_points:], dtype=np.float64)
        if len(xs) < 4:
            return False
        coef, cov = np.polyfit(xs, ys, 1, cov=True)
        slope, std = float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
        if -cfg.lr_change_ratio * slope < std:
            self.lr /= 10.0
            self.last_change = it
            return True
        return False


def _load_init_state(params: M.Params, init_state: dict | None) -> M.Params:
    if not init_state:
        return params
    out = dict(params)
    for k, v in init_state.items():
        if k in out:
            t = torch.as_tensor(v, dtype=torch.float32)
            if tuple(t.shape) != tuple(out[k].shape):
                raise ValueError(f"init_state[{k!r}] has shape {tuple(t.shape)}, expected {tuple(out[k].shape)}")
            out[k] = t.clone()
    return out


def super_resolve_normalized(lr: torch.Tensor, guide: torch.Tensor | None, valid: torch.Tensor, scale: int,
                             config: CMSRConfig, *, seed: int = 0, device: str | torch.device = "cpu",
                             progress: ProgressFn | None = None,
                             init_state: dict | None = None) -> TrainOutput:
    """Super-resolve a normalised LR (h, w) by ``scale`` with an optional guide (C, s*h, s*w).

    ``valid`` (h, w) bool excludes pixels from every loss and from the reconstruction check.
    ``init_state``: network weights to start from (a survey warm start); the warp always starts at
    the identity. Deterministic for a seed on CPU.
    """
    t0 = time.perf_counter()
    scale = int(scale)
    _check_inputs(lr, guide, valid, scale)
    dev = torch.device(device)
    use_guide = bool(config.use_guide and guide is not None)
    use_warp = use_guide and config.use_warp
    rng = np.random.default_rng(seed)
    lr_t = lr.detach().to(dev, torch.float32).contiguous()
    valid_t = valid.detach().to(dev, torch.bool)
    h, w = lr_t.shape

    params0 = M.init_params(int(guide.shape[0]) if use_guide else None, sr_depth=config.sr_depth,  # type: ignore[union-attr]
                            sr_width=config.sr_width, guide_depth=config.guide_depth,
                            guide_width=config.guide_width, init_variance=config.init_variance, seed=seed)
    net = M.CMSRNet(_load_init_state(params0, init_state)).to(dev)
    warp = make_warp(guide, lr_t, valid_t, scale, config) if use_warp else None  # type: ignore[arg-type]
    # a frozen identity warp reads the guide at exactly the points it is given: skip evaluating it
    live_warp = None if warp is None or (not config.warp_learn and warp.is_identity()) else warp
    gd = _Guide(guide.detach().to(dev, torch.float32).contiguous(), (h, w), live_warp, config.guide_train_sampling) \
        if use_guide else None  # type: ignore[union-attr]

    groups = [{"params": net.sr_parameters(), "ratio": 1.0}]
    if use_guide:
        groups.append({"params": net.guide_parameters(), "ratio": config.lr_ratio_guide})
    if warp is not None and config.warp_learn:
        pg = warp.parameter_groups()
        groups += [{"params": pg["affine"], "ratio": config.lr_ratio_affine},
                   {"params": pg["svf"], "ratio": config.lr_ratio_svf},
                   {"params": pg["tps"], "ratio": config.lr_ratio_tps}]
    for g in groups:
        g["lr"] = config.learning_rate * g["ratio"]
    opt = torch.optim.Adam(groups, lr=config.learning_rate, **_ADAM_KWARGS)

    sources: list[tuple[int, torch.Tensor, torch.Tensor]] = [(1, lr_t, valid_t)]
    stage_stats: list[dict] = []
    total_iters = 0
    last_loss = float("nan")
    policy = _LRPolicy(config)
    out = lr_t
    base_kind: str | None = None
    for factor in config.stage_factors(scale):
        policy = _LRPolicy(config)
        for g in opt.param_groups:
            g["lr"] = policy.lr * g["ratio"]
        recon = _ReconCheck(lr_t, valid_t, factor, config, gd)
        if base_kind is None:  # decided once, before training (warp at identity or as pre-registered)
            base_kind = choose_base_kind(lr_t, valid_t, config, gd)
        recon.set_base(base_kind)
        iters = 0
        for it in range(config.max_iters):
            aug = sample_augmentation(rng, [tuple(s[1].shape) for s in sources], [s[0] for s in sources],
                                      factor, config)
            if warp is not None:
                warp.requires_grad_(config.warp_learn and total_iters + it >= config.warp_warmup_iters)
            loss = _train_step(net, opt, gd, sources, aug, factor, config, base_kind)
            iters = it + 1
            last_loss = loss
            if it % config.run_test_every == 0:
                policy.record(it, recon.error(net.params()))
            if policy.update(it):
                for g in opt.param_groups:
                    g["lr"] = policy.lr * g["ratio"]
            if progress is not None and (total_iters + iters) % PROGRESS_EVERY == 0:
                progress(total_iters + iters, loss, policy.lr)
            if policy.lr < config.min_learning_rate:
                break
        total_iters += iters
        if progress is not None:
            progress(total_iters, last_loss, policy.lr)
        out = infer_stage(net.params(), lr_t, gd, factor, config, base_kind)
        stage_stats.append({"factor": factor, "iterations": iters, "final_loss": last_loss, "base": base_kind,
                            "final_lr": policy.lr, "recon_mse": policy.errors[-1] if policy.errors else None})
        up_valid = valid_t.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
        sources.append((factor, out.detach(), up_valid))

    displacement = warp.displacement_px(scale * h, scale * w) if warp is not None else None
    stats = {
        "iterations": total_iters,
        "final_loss": last_loss,
        "final_lr": policy.lr,
        "seconds": round(time.perf_counter() - t0, 3),
        "stages": stage_stats,
        "use_guide": use_guide,
        "use_warp": use_warp,
        "base": base_kind,
        "mean_warp_px": float(np.mean(np.hypot(displacement[..., 0], displacement[..., 1])))
        if displacement is not None else 0.0,
    }
    return TrainOutput(image=out.detach().float().cpu(), stats=stats, displacement=displacement,
                       weights=net.state() if hasattr(net, "state") else None)


def _train_step(net: M.CMSRNet, opt: torch.optim.Optimizer, gd: _Guide | None,
                sources: list[tuple[int, torch.Tensor, torch.Tensor]], aug: Augmentation, factor: int,
                config: CMSRConfig, base_kind: str) -> float:
    base, src, src_valid = sources[aug.source_index]
    father, mask = extract(src, src_valid, aug)
    son = degrade_torch(father, factor, config.degradation)
    guide_crop = None
    if gd is not None:
        pts = to_normalized(torch.as_tensor(aug.coords, dtype=torch.float32, device=src.device), *src.shape)
        guide_crop = gd.train_sample(pts, base)
    with torch.no_grad():
        up = _base(son, factor, config, base_kind, guide_crop)
    loss_sr, loss_full = compute_losses(net.params(), up, father, mask, guide_crop)
    total = loss_sr if loss_full is None else loss_sr + loss_full
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return float((loss_full if loss_full is not None else loss_sr).detach())


class _ReconCheck:
    """Error of the net applied to the degraded LR, against the LR (valid pixels only)."""

    def __init__(self, lr: torch.Tensor, valid: torch.Tensor, factor: int, config: CMSRConfig,
                 gd: _Guide | None) -> None:
        h, w = lr.shape
        hc, wc = max(factor, (h // factor) * factor), max(factor, (w // factor) * factor)
        hc, wc = min(hc, h), min(wc, w)
        self.target = lr[:hc, :wc]
        self.mask = valid[:hc, :wc]
        son = degrade_torch(self.target, factor, config.degradation) if (hc % factor == 0 and wc % factor == 0) \
            else imresize_torch(self.target, 1.0 / factor)
        self.gd = gd
        self.points = pixel_centers(h, w, lr.device)[:hc, :wc]
        self.son = son
        self.exact = hc % factor == 0 and wc % factor == 0
        self.factor, self.config = factor, config
        self.up = imresize_torch(son, float(factor), output_shape=(hc, wc))
        self.base_kind = "bicubic"

    @torch.no_grad()
    def set_base(self, kind: str) -> None:
        self.base_kind = kind
        if self.exact:
            self.up = _base(self.son, self.factor, self.config, kind, self._guide())

    @torch.no_grad()
    def choose_base(self) -> str:
        """``auto`` base: the candidate that best reconstructs the LR from its degraded copy."""
        if self.gd is None or not self.exact:
            return "bp"
        errs = {}
        for kind in ("bp",) + GUIDED_BASES:
            out = _base(self.son, self.factor, self.config, kind, self._guide())
            errs[kind] = float((((out - self.target) ** 2) * self.mask).sum())
        return min(errs, key=errs.__getitem__)

    def _guide(self) -> torch.Tensor | None:
        return self.gd.train_sample(self.points, 1) if self.gd is not None else None

    @torch.no_grad()
    def error(self, params: M.Params) -> float:
        g = self._guide()
        out = M.forward(params, self.up[None, None], g[None] if g is not None else None)[0, 0]
        m = self.mask.to(out.dtype)
        return float((((out - self.target) ** 2) * m).sum() / m.sum().clamp_min(1.0))


@torch.no_grad()
def infer_stage(params: M.Params, lr: torch.Tensor, gd: _Guide | None, factor: int, config: CMSRConfig,
                base_kind: str = "bicubic") -> torch.Tensor:
    """Self-ensembled, back-projected output on the grid ``factor`` x the LR (guide-gated when
    ``config.guide_gate`` is set, see :func:`cmsr.baselines.guide_confidence`)."""
    g = gd.stage_grid(factor) if gd is not None else None
    y = _ensemble(params, lr, g, factor, config, base_kind)
    if g is None or config.guide_gate is None or not M.has_guide_branch(params):
        return y
    without_guide = {k: v for k, v in params.items() if not k.startswith("g.")}
    y_ref = _ensemble(without_guide, lr, None, factor, config, "bp")
    c = guide_confidence(lr, g, factor, config.guide_gate, pool=config.guide_gate_pool,
                         flat_guide_var=config.guide_gate_flat_var)
    return back_project(y_ref + c * (y - y_ref), lr, factor, config.back_projection_rounds, config.degradation)


def _ensemble(params: M.Params, lr: torch.Tensor, g: torch.Tensor | None, factor: int, config: CMSRConfig,
              base_kind: str) -> torch.Tensor:
    up = _base(lr, factor, config, base_kind, g)
    members = range(8) if config.self_ensemble else range(1)
    outs = []
    for k in members:
        gk = _transform(g, k)[None] if g is not None else None
        o = M.forward(params, _transform(up, k)[None, None], gk)[0, 0]
        o = _untransform(o, k)
        outs.append(back_project(o, lr, factor, config.back_projection_rounds, config.degradation))
    y = _median(torch.stack(outs)) if len(outs) > 1 else outs[0]
    return back_project(y, lr, factor, config.back_projection_rounds, config.degradation)
