"""The internal training of CMSR, for one tile or K tiles as one batched computation.

Per stage factor ``f`` (x2 then x4 for x4 in the paper preset), every tile:

1. trains: each iteration draws a father crop from the tile's father sources (the LR, plus earlier
   stages' outputs), makes the son with the configured degradation, takes its non-learned base
   (``cmsr.bases``) and predicts the father as ``base + F_sr(base) + F_g(guide(phi(A(p))))``, where
   ``A`` is the augmentation's coordinates and ``phi`` the tile's warp. ``F_sr`` learns from its own
   loss only; ``F_g`` and a learned warp from the full-output loss with ``F_sr``'s output detached
   (gradient isolation, as the official separate optimisers do). L1, masked by the valid mask
   carried through the augmentation. Adam, batch 1 per tile; ZSSR's learning-rate policy on the
   reconstruction error; a tile whose learning rate fell below the minimum stops.
2. infers (``cmsr.infer``): self-ensembled, back-projected, optionally guide-gated.

Why K tiles at once: one step is a 48x48 crop through ~13 tiny convolutions, which cannot fill a
GPU; K tiles' steps together can. The batch is only a way of executing: each tile keeps its own
weights, warp, father/son stream (its seed), Adam state, learning-rate schedule and stopping.
Weights are packed (``cmsr.optim``), every convolution is grouped by tile (``cmsr.model.conv_chain``), a learned warp
runs under ``torch.func.vmap``, and the loss is the sum of the tiles' losses, so every tile's
gradient is exactly its own and its result does not depend on its batch neighbours (to float
rounding; tests/test_train.py). K = 1 is ``cmsr.run``.

Where this differs from the official TensorFlow code (all small, all deliberate): values are not
clipped to [0, 1] (the API normalises with robust statistics, so hot spots may exceed 1); father
pixels an affine augmentation takes outside the source are masked out of the loss instead of
trained on as zeros; the guide is sampled with border replication; the mid-scale warp is a
stationary velocity field instead of CPAB (``cmsr.warp``); the deformed guide is sampled at the
crop's points only; non-power-of-two scales run through the powers of two below them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from . import model as M
from .augment import sample_augmentation
from .bases import choose_base
from .losses import batch_losses, reconstruction_check, reconstruction_errors
from .config import CMSRConfig, FixedBase, LearnedWarp
from .guide import TileGuide
from .guide_weight import stage_guide_weight
from .infer import infer_stage
from .optim import LearningRatePolicy, PackedAdam
from .registration import register
from .runtime import AmpChoice, DevicePolicy, device_policy
from .warp import AffineWarp, GuideWarp, displacement_px

ProgressFn = Callable[[int, int, float, float], None]
"""Called with (tile position, iteration, reconstruction error, lr) at every reconstruction check
and at the end of each stage."""


@dataclass(frozen=True)
class TrainOutput:
    """One tile's result of :func:`train`."""

    image: torch.Tensor
    """(H, W) float32 on CPU, in the same normalised units as the input LR."""
    stats: dict
    """Small JSON-able summary: iterations, final_loss, final_lr, seconds, mean_warp_px, stages..."""
    displacement: np.ndarray | None
    """(H, W, 2) guide displacement (dy, dx) in HR pixels; None when the guide was used as given."""
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    """Final network weights (CPU), usable as ``init_state`` of another tile."""
    guide_weight: torch.Tensor | None = field(default=None, repr=False)
    """(H, W) float32 on CPU in [0, 1]: the guide's share of ``image`` (``cmsr.guide_weight``);
    only when ``train(..., guide_weight=True)``."""


def check_inputs(lr: torch.Tensor, guide: torch.Tensor | None, valid: torch.Tensor, scale: int) -> None:
    """Shapes and finiteness of one tile's normalised inputs (a wrong call is a bug: ValueError)."""
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
        raise ValueError("lr contains NaN/inf: fill nodata before training")


def train(lrs: Sequence[torch.Tensor], guides: Sequence[torch.Tensor | None], valids: Sequence[torch.Tensor],
          scale: int, config: CMSRConfig, *, seeds: Sequence[int], device: str | torch.device = "cpu",
          init_state: M.Params | Sequence[M.Params | None] | None = None, progress: ProgressFn | None = None,
          amp: AmpChoice = "off", max_batch: int | None = None, guide_weight: bool = False,
          registrations: Sequence[torch.Tensor | np.ndarray | None] | None = None) -> list[TrainOutput]:
    """Super-resolve K normalised tiles, training them together; one :class:`TrainOutput` per tile.

    Per tile: ``lr`` (h, w) NaN-free, ``guide`` (C, s*h, s*w) or None (pure ZSSR), ``valid`` (h, w)
    bool (excluded from every loss and check), ``seed`` (network init and father stream). Tiles of
    equal shapes train as one batch (at most ``max_batch`` at a time; default all); different
    shapes form separate batches. ``init_state``: one warm-start weight dict for every tile, or one
    per tile; the warp always starts at the registration (or the identity). ``amp``: autocast
    dtype of the networks on CUDA ('off' = fp32, the default: the same numbers as on CPU).
    ``guide_weight``: also return each tile's guide weight map (the last stage's gate, computed
    after its inference: the image is the same either way). ``registrations``: one (2, 3) affine of
    normalised coordinates or None per tile, decided outside (a survey's consistent field): it
    replaces the tile's own ``config.registration`` (None = the guide as given); a learned warp
    starts from it. Deterministic for the same seeds and batch composition on CPU.
    """
    n = len(lrs)
    if not (len(guides) == len(valids) == len(seeds) == n):
        raise ValueError(f"train needs as many guides, valids and seeds as lrs ({n}); got "
                         f"{len(guides)}, {len(valids)}, {len(seeds)}")
    inits = list(init_state) if isinstance(init_state, (list, tuple)) else [init_state] * n
    if len(inits) != n:
        raise ValueError(f"init_state list has {len(inits)} entries for {n} tiles")
    for lr, guide, valid in zip(lrs, guides, valids):
        check_inputs(lr, guide, valid, int(scale))
    given = _given_registrations(registrations, n)
    if config.guide is None:
        guides = [None] * n
    policy = device_policy(device, amp)
    buckets: dict[tuple, list[int]] = {}
    for i, (lr, guide) in enumerate(zip(lrs, guides)):
        buckets.setdefault((tuple(lr.shape), None if guide is None else tuple(guide.shape)), []).append(i)
    results: list[TrainOutput | None] = [None] * n
    for members in buckets.values():
        step = max_batch or len(members)
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            outs = _train_batch([lrs[i] for i in chunk], [guides[i] for i in chunk], [valids[i] for i in chunk],
                                int(scale), config, [int(seeds[i]) for i in chunk], [inits[i] for i in chunk],
                                policy, chunk, progress, guide_weight,
                                None if given is None else [given[i] for i in chunk])
            for i, o in zip(chunk, outs):
                results[i] = o
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class GivenRegistration:
    """A tile's registration decided outside the trainer: its affine, or None for the guide as given."""

    affine: torch.Tensor | None


def _given_registrations(registrations: Sequence[torch.Tensor | np.ndarray | None] | None,
                         n: int) -> list[GivenRegistration] | None:
    """``train``'s ``registrations`` checked (a wrong call is a bug: ValueError), as float32 tensors."""
    if registrations is None:
        return None
    if len(registrations) != n:
        raise ValueError(f"registrations has {len(registrations)} entries for {n} tiles")
    out = []
    for a in registrations:
        t = None if a is None else torch.as_tensor(a).detach().to("cpu", torch.float32)
        if t is not None and (tuple(t.shape) != (2, 3) or not bool(torch.isfinite(t).all())):
            raise ValueError(f"a registration must be a finite (2, 3) affine or None, got shape {tuple(t.shape)}")
        out.append(GivenRegistration(t))
    return out


def load_init_state(params: M.Params, init_state: M.Params | None) -> M.Params:
    """``params`` with the tensors of ``init_state`` that it names (a warm start), shapes checked."""
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


class _Tile:
    """Host-side state of one tile in a batch: its streams, learning-rate schedule, guide and father sources."""

    def __init__(self, lr: torch.Tensor, guide: torch.Tensor | None, valid: torch.Tensor, seed: int,
                 scale: int, config: CMSRConfig, policy: DevicePolicy, given: GivenRegistration | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.lr = policy.to_device(lr.detach())
        self.valid = valid.detach().to(policy.device, torch.bool)
        self.warp: nn.Module | None = None
        self.guide: TileGuide | None = None
        if guide is not None:
            if given is not None:  # a survey's field: replaces the tile's own registration
                affine = None if given.affine is None else given.affine.to(policy.device)
            elif config.registration is not None:
                affine = register(guide, self.lr, self.valid, scale, config.registration)
            else:
                affine = None
            if config.warp is not None:
                w = config.warp
                self.warp = GuideWarp(w.svf_grid, w.svf_integration_grid, w.svf_squarings, w.tps_grid,
                                      affine=affine).to(policy.device)
            elif affine is not None:
                self.warp = AffineWarp(affine).to(policy.device)
            assert config.guide is not None
            self.guide = TileGuide(policy.to_device(guide.detach()).contiguous(), tuple(self.lr.shape), self.warp,
                                   config.guide.train_sampling)
        self.sources: list[tuple[int, torch.Tensor, torch.Tensor]] = [(1, self.lr, self.valid)]
        self.iterations = 0
        self.stage_stats: list[dict] = []
        self.schedule = LearningRatePolicy(config)


def _tile_base(tile: _Tile, config: CMSRConfig) -> FixedBase:
    """The base ``tile`` trains over: ``config.base``, or an auto base's choice on the registered guide."""
    return choose_base(tile.lr, tile.valid, config.base, tile.guide.at_lr_centres() if tile.guide else None,
                       config.degradation)


def choose_bases(lrs: Sequence[torch.Tensor], guides: Sequence[torch.Tensor | None], valids: Sequence[torch.Tensor],
                 scale: int, config: CMSRConfig, *, device: str | torch.device = "cpu",
                 registrations: Sequence[torch.Tensor | np.ndarray | None] | None = None) -> list[FixedBase]:
    """The base each tile would train over in :func:`train` (same registration, same choice), without
    training: what a survey-level decision votes on (``cmsr.survey_model``)."""
    n = len(lrs)
    given = _given_registrations(registrations, n)
    policy = device_policy(device, "off")
    out = []
    for i in range(n):
        check_inputs(lrs[i], guides[i], valids[i], int(scale))
        guide = guides[i] if config.guide is not None else None
        t = _Tile(lrs[i], guide, valids[i], 0, int(scale), config, policy, None if given is None else given[i])
        out.append(_tile_base(t, config))
    return out


class BatchWarp:
    """The warps of a batch's tiles as one vmapped computation: learned (packed with Adam) or frozen."""

    def __init__(self, modules: list[nn.Module], learned: LearnedWarp | None, policy: DevicePolicy) -> None:
        self.modules = modules
        template = modules[0]
        buffers = dict(template.named_buffers())
        tensors = [dict(m.named_parameters()) for m in modules]
        self.packed: PackedAdam | None = None
        self.frozen: dict[str, torch.Tensor] = {}
        if learned is not None:
            self.packed = PackedAdam(tensors, {"affine": learned.lr_ratio_affine, "velocity": learned.lr_ratio_svf,
                                               "tps_offsets": learned.lr_ratio_tps}, policy)
        else:
            self.frozen = {k: torch.stack([t[k].detach() for t in tensors]).to(policy.device) for k in tensors[0]}
        self._one = lambda p, pts: functional_call(template, (p, buffers), (pts,))
        self._map = vmap(self._one)

    def __call__(self, index: torch.Tensor | None, points: torch.Tensor) -> torch.Tensor:
        """``points`` (n, N, 2) -> warped (n, N, 2), row i by the warp of tile ``index[i]``.

        One tile is evaluated as the module itself (vmap's batched matmuls round differently from a
        plain one, and one tile should be exactly what the module computes)."""
        if self.packed is not None:
            params = self.packed.views(self.packed.rows(index))
        else:
            params = {k: v if index is None else v.index_select(0, index) for k, v in self.frozen.items()}
        if points.shape[0] == 1:
            return self._one({k: v[0] for k, v in params.items()}, points[0])[None]
        return self._map(params, points)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained parameters into the per-tile modules (what inference reads)."""
        if self.packed is None:
            return
        views = self.packed.views(self.packed.data)
        for i, m in enumerate(self.modules):
            for name, p in m.named_parameters():
                p.copy_(views[name][i])


def _batch_warp(tiles: list[_Tile], config: CMSRConfig, policy: DevicePolicy) -> BatchWarp | None:
    """None when no tile's guide moves (then no warp is evaluated at all)."""
    if all(t.warp is None for t in tiles):
        return None
    modules = [t.warp if t.warp is not None else AffineWarp().to(policy.device) for t in tiles]
    return BatchWarp(modules, config.warp, policy)


def _train_batch(lrs: list[torch.Tensor], guides: list[torch.Tensor | None], valids: list[torch.Tensor], scale: int,
                 config: CMSRConfig, seeds: list[int], inits: list[M.Params | None], policy: DevicePolicy,
                 positions: list[int], progress: ProgressFn | None, want_guide_weight: bool = False,
                 given: list[GivenRegistration] | None = None) -> list[TrainOutput]:
    t0 = time.perf_counter()
    dev = policy.device
    givens: list[GivenRegistration | None] = list(given) if given is not None else [None] * len(lrs)
    tiles = [_Tile(lr, g, v, s, scale, config, policy, gr) for lr, g, v, s, gr in zip(lrs, guides, valids, seeds, givens)]
    k_tiles = len(tiles)
    use_guide = tiles[0].guide is not None
    channels = int(guides[0].shape[0]) if use_guide else None  # type: ignore[union-attr]
    gb = config.guide
    states = [load_init_state(M.init_params(channels, sr_depth=config.sr_depth, sr_width=config.sr_width,
                                            guide_depth=gb.depth if gb else 4, guide_width=gb.width if gb else 16,
                                            init_variance=config.init_variance, seed=s), init)
              for s, init in zip(seeds, inits)]
    net = PackedAdam(states, {k: (1.0 if k.startswith("sr.") else gb.lr_ratio) for k in states[0]},  # type: ignore[union-attr]
                     policy)
    warp = _batch_warp(tiles, config, policy)
    learned = warp is not None and warp.packed is not None
    last_loss = torch.full((k_tiles,), float("nan"), device=dev)
    guide_cache: dict[int, torch.Tensor] = {}

    def guide_stack(factor: int) -> torch.Tensor:
        if factor not in guide_cache:
            guide_cache[factor] = torch.stack([t.guide.train_image(factor) for t in tiles])  # type: ignore[union-attr]
        return guide_cache[factor]

    bases: list[FixedBase] = []
    weight_maps: list[torch.Tensor | None] = [None] * k_tiles
    factors = config.stage_factors(scale)
    for factor in factors:
        for t in tiles:
            t.schedule = LearningRatePolicy(config)
        if not bases:  # each tile's base, decided once before training (warp as registered)
            bases = [_tile_base(t, config) for t in tiles]
        check = reconstruction_check(tiles, bases, factor, config)
        sources = [(base, torch.stack([torch.stack([t.sources[j][1], t.sources[j][2].to(torch.float32)])
                                       for t in tiles]))
                   for j, (base, _, _) in enumerate(tiles[0].sources)]
        active = list(range(k_tiles))
        stage_iters = [0] * k_tiles
        for it in range(config.max_iters):
            if not active:
                break
            augs = {p: sample_augmentation(tiles[p].rng, [tuple(s[1].shape) for s in tiles[p].sources],
                                           [s[0] for s in tiles[p].sources], factor, config) for p in active}
            warp_on = [p for p in active if learned and tiles[p].iterations + it >= config.warp.warmup_iters]  # type: ignore[union-attr]
            total = batch_losses(augs, sources, net, warp, guide_stack, factor, config, policy, last_loss, bases,
                            bool(warp_on))
            net.zero_grad()
            if learned:
                warp.packed.zero_grad()  # type: ignore[union-attr]
            total.backward()
            net.step(active, [tiles[p].schedule.learning_rate for p in active])
            if learned:  # a tile's warp is frozen during its warm-up (no Adam step)
                warp.packed.step(warp_on, [tiles[p].schedule.learning_rate for p in warp_on])  # type: ignore[union-attr]
            for p in active:
                stage_iters[p] = it + 1
            if it % config.run_test_every == 0:
                errors = reconstruction_errors(active, net, warp, check, guide_stack, policy)
                for p, e in zip(active, errors):
                    tiles[p].schedule.record(it, e)
                    if progress is not None:
                        progress(positions[p], tiles[p].iterations + it + 1, e, tiles[p].schedule.learning_rate)
            for p in active:
                tiles[p].schedule.update(it)
            active = [p for p in active if not tiles[p].schedule.stopped]
        losses = last_loss.detach().cpu().tolist()
        if warp is not None:
            warp.write_back()
        for p, t in enumerate(tiles):
            t.iterations += stage_iters[p]
            if progress is not None and t.schedule.errors:  # the stage's end, so a bar reaches its total
                progress(positions[p], t.iterations, t.schedule.errors[-1], t.schedule.learning_rate)
            out = infer_stage(net.tile(p), t.lr, t.guide, factor, config, bases[p])
            if want_guide_weight and factor == factors[-1]:
                stage_guide = t.guide.stage_grid(factor) if t.guide is not None else None
                weight_maps[p] = stage_guide_weight(net.tile(p), t.lr, stage_guide, factor, config).float().cpu()
            t.stage_stats.append({"factor": factor, "iterations": stage_iters[p], "final_loss": losses[p],
                                  "base": bases[p].name, "final_lr": t.schedule.learning_rate,
                                  "recon_mse": t.schedule.errors[-1] if t.schedule.errors else None})
            t.sources.append((factor, out.detach(), t.valid.repeat_interleave(factor, 0).repeat_interleave(factor, 1)))

    seconds = time.perf_counter() - t0
    losses = last_loss.detach().cpu().tolist()
    outs = []
    for p, t in enumerate(tiles):
        h, w = t.lr.shape
        disp = displacement_px(t.warp, scale * h, scale * w) if t.warp is not None else None
        stats = {
            "iterations": t.iterations,
            "final_loss": losses[p],
            "final_lr": t.schedule.learning_rate,
            "seconds": round(seconds / k_tiles, 3),
            "batch_seconds": round(seconds, 3),
            "batch_size": k_tiles,
            "stages": t.stage_stats,
            "use_guide": use_guide,
            "use_warp": t.warp is not None,
            "base": bases[p].name if bases else None,
            "mean_warp_px": float(np.mean(np.hypot(disp[..., 0], disp[..., 1]))) if disp is not None else 0.0,
        }
        outs.append(TrainOutput(image=t.sources[-1][1].detach().float().cpu(), stats=stats, displacement=disp,
                                weights={k: v.detach().cpu().clone() for k, v in net.tile(p).items()},
                                guide_weight=weight_maps[p]))
    return outs
