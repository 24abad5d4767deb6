"""Many tiles per device: K tiles' internal trainings as one batched computation.

Why: one CMSR training step is a 48x48 crop through ~13 tiny convolutions; on a GPU a single
tile cannot fill the device (kernel-launch bound), so throughput comes from running K tiles'
steps together. Each tile keeps what makes CMSR CMSR: its own weights, its own warp (learned
from identity), its own father/son sampling stream (its own seed), its own Adam state, its own
ZSSR learning-rate policy and stopping. The batch is only a way of executing them:

* weights are stacked along a leading K dim; each convolution is one grouped convolution
  (``groups=K``) or one batched GEMM over ``unfold``-ed crops (``conv_impl='bmm'``);
* each tile's warp runs under ``torch.func.vmap`` of :class:`cmsr.warp.GuideWarp`;
* the loss is the sum of the per-tile losses, so every tile's gradient is exactly its own;
* Adam is applied per tile with per-tile learning rates and step counts; a tile whose policy
  stopped (lr < min) leaves the active set and is no longer computed (compaction by index);
* stages are synchronous (all tiles of a batch finish x2 before x4 starts) and the inference of
  each stage is :func:`cmsr.train.infer_stage` per tile, unchanged.

With the same seeds, the results equal :func:`cmsr.train.super_resolve_normalized` run tile by
tile, to float rounding (tests/test_batched.py). The only host-device synchronisation inside
the loop is the reconstruction check every ``run_test_every`` iterations (the lr policy needs
its value on the host); augmentations are drawn on the host from each tile's numpy stream, as
the sequential trainer does, and copied from pinned memory without blocking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from . import model as M
from .augment import Augmentation, sample_augmentation
from .config import CMSRConfig
from .resize import degrade_torch, upsample_torch
from .runtime import AmpChoice, DevicePolicy, device_policy, free_memory_bytes
from . import train as _train
from .train import (TrainOutput, _check_inputs, _Guide, _load_init_state, _LRPolicy, _ReconCheck, choose_base_kind,
                    infer_stage, make_warp)
from .warp import GuideWarp

BatchProgressFn = Callable[[int, int, float, float], None]
"""Called at every reconstruction check with (tile index, iteration, recon error, lr)."""
ConvImpl = Literal["grouped", "bmm"]
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


# --- stacked networks --------------------------------------------------------------------------
def stack_states(states: Sequence[M.Params]) -> M.Params:
    """K per-tile weight dicts -> one dict of (K, ...) tensors."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def unstack_state(stacked: M.Params, index: int) -> M.Params:
    """Tile ``index``'s weights (detached CPU copies) from a stacked dict."""
    return {k: v[index].detach().cpu().clone() for k, v in stacked.items()}


def _layer_keys(params: M.Params, prefix: str) -> list[str]:
    return sorted((k for k in params if k.startswith(prefix + ".")), key=lambda k: int(k.split(".")[1]))


def stacked_chain(stacked: M.Params, prefix: str, x: torch.Tensor, impl: ConvImpl = "grouped",
                  channels_last: bool = False) -> torch.Tensor:
    """Per-tile conv stacks: ``x`` (K, Cin, H, W), ``stacked[key]`` (K, Cout, Cin, k, k) -> (K, Cout, H, W).

    Same maths as :func:`cmsr.model._chain` applied tile by tile (ReLU between, no biases).
    """
    keys = _layer_keys(stacked, prefix)
    k_tiles, _, h, w = x.shape
    if impl == "bmm":
        for j, key in enumerate(keys):
            wt = stacked[key]
            ks = wt.shape[-1]
            cols = F.unfold(x, ks, padding=ks // 2) if ks > 1 else x.reshape(k_tiles, x.shape[1], h * w)
            x = torch.bmm(wt.reshape(k_tiles, wt.shape[1], -1), cols).reshape(k_tiles, wt.shape[1], h, w)
            if j < len(keys) - 1:
                x = F.relu(x)
        return x
    if impl != "grouped":
        raise ValueError(f"unknown conv_impl {impl!r} (expected 'grouped' or 'bmm')")
    y = x.reshape(1, -1, h, w)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = y.contiguous(memory_format=fmt)
    for j, key in enumerate(keys):
        wt = stacked[key]
        wk = wt.reshape(-1, *wt.shape[2:]).contiguous(memory_format=fmt)
        y = F.conv2d(y, wk, padding=wt.shape[-1] // 2, groups=k_tiles)
        if j < len(keys) - 1:
            y = F.relu(y)
    return y.reshape(k_tiles, -1, h, w)


def _h2d(values: object, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host values -> device tensor without a stream sync (pinned + non-blocking on CUDA).

    Why: a copy from pageable memory makes the host wait for the GPU's queue; inside the training
    loop that would serialise the Python side with the kernels of every iteration.
    """
    t = torch.as_tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


_SCALES: dict[tuple, torch.Tensor] = {}


def _norm_scale(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(2/w, 2/h) as a cached float32 device tensor (what ``to_normalized`` builds every call)."""
    key = (h, w, str(device))
    if key not in _SCALES:
        _SCALES[key] = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float32).to(device)
    return _SCALES[key]


def _masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-tile mean |pred - target| over the mask: (K, H, W) -> (K,)."""
    m = mask.to(pred.dtype)
    return ((pred - target).abs() * m).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1.0)


class _Flat:
    """Per-tile tensors of several shapes packed row-wise into one (K, P) leaf, with its Adam state.

    Why: one Adam update is then ~6 kernels for all tensors and tiles (not ~10 per tensor), one
    ``index_select`` gathers the active tiles' weights, and per-tile learning rates broadcast as a
    (K, 1) column times the per-element lr multipliers. Adam is torch.optim.Adam's arithmetic.
    """

    def __init__(self, dicts: Sequence[dict[str, torch.Tensor]], ratios: dict[str, float],
                 device: torch.device) -> None:
        self.keys = list(dicts[0])
        self.shapes = {k: tuple(dicts[0][k].shape) for k in self.keys}
        self.slices: dict[str, tuple[int, int]] = {}
        off = 0
        for k in self.keys:
            n = int(np.prod(self.shapes[k]))
            self.slices[k] = (off, off + n)
            off += n
        rows = [torch.cat([d[k].detach().reshape(-1).float() for k in self.keys]) for d in dicts]
        self.data = torch.stack(rows).to(device).requires_grad_()
        self.ratio = torch.cat([torch.full((self.slices[k][1] - self.slices[k][0],), float(ratios[k]))
                                for k in self.keys]).to(device)
        self.m = torch.zeros_like(self.data, requires_grad=False)
        self.v = torch.zeros_like(self.data, requires_grad=False)
        self.steps = np.zeros(len(dicts), dtype=np.int64)

    def rows(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.data if idx is None else self.data.index_select(0, idx)

    def views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n, P) -> {key: (n, *shape)} views (differentiable)."""
        n = rows.shape[0]
        return {k: rows[:, a:b].view(n, *self.shapes[k]) for k, (a, b) in self.slices.items()}

    def state(self, index: int) -> dict[str, torch.Tensor]:
        """Tile ``index``'s tensors, detached CPU copies."""
        return {k: v[0].detach().cpu().clone() for k, v in self.views(self.data[index:index + 1]).items()}

    @torch.no_grad()
    def step(self, active: list[int], lrs: np.ndarray) -> None:
        """One Adam step of the tiles at positions ``active`` (learning rates ``lrs``); others untouched."""
        g = self.data.grad
        if g is None or not active:
            return
        self.steps[active] += 1
        steps = self.steps[active].astype(np.float64)
        dev, dt = self.data.device, self.data.dtype
        size = _h2d(np.asarray(lrs, np.float64) / (1.0 - _BETA1 ** steps), dev, dt)
        bc2 = _h2d(np.sqrt(1.0 - _BETA2 ** steps), dev, dt)
        everyone = len(active) == self.data.shape[0]
        idx = None if everyone else _h2d(active, dev, torch.long)
        if idx is None:
            m, v, pv, gv = self.m, self.v, self.data.data, g
        else:
            m, v = self.m.index_select(0, idx), self.v.index_select(0, idx)
            pv, gv = self.data.data.index_select(0, idx), g.index_select(0, idx)
        m.lerp_(gv, 1 - _BETA1)
        v.mul_(_BETA2).addcmul_(gv, gv, value=1 - _BETA2)
        denom = (v.sqrt() / bc2[:, None]).add_(_EPS)
        pv.sub_((size[:, None] * self.ratio[None, :]) * m / denom)
        if idx is not None:
            self.m.index_copy_(0, idx, m)
            self.v.index_copy_(0, idx, v)
            self.data.data.index_copy_(0, idx, pv)


class _StackedWarp:
    """K identity-initialised :class:`GuideWarp` s evaluated as one vmapped computation."""

    def __init__(self, warps: list[GuideWarp], ratios: dict[str, float], device: torch.device) -> None:
        self.warps = warps
        self.template = warps[0]
        self.buffers = dict(self.template.named_buffers())
        self.flat = _Flat([dict(w.named_parameters()) for w in warps], ratios, device)
        self._map = vmap(lambda p, pts: functional_call(self.template, (p, self.buffers), (pts,)))

    def __call__(self, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``points`` (n, N, 2) -> warped (n, N, 2), tile i by parameter row ``rows[i]``."""
        return self._map(self.flat.views(rows), points)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained parameters into the per-tile modules."""
        views = self.flat.views(self.flat.data)
        for i, w in enumerate(self.warps):
            for n, p in w.named_parameters():
                p.copy_(views[n][i])


# --- batch size --------------------------------------------------------------------------------
def tile_memory_bytes(tile_shape: tuple[int, int], config: CMSRConfig, guide_channels: int = 3,
                      conv_impl: ConvImpl = "grouped", scale: int = 4) -> tuple[int, int]:
    """(per-tile bytes while training in a batch, one-off bytes of a tile's inference), fp32.

    A deliberately generous model: training holds the tile's guide (plus resized levels), its
    father sources, Adam state and the saved activations of one crop (x3 for grads/ReLU masks,
    x9 more for ``bmm``'s unfolded columns); inference (one tile at a time) holds ~3 full-size
    64-channel activations and the 8 ensemble members.
    """
    hh, ww = int(tile_shape[0]), int(tile_shape[1])
    lr_px = (hh // scale) * (ww // scale)
    crop_px = config.crop_size ** 2
    sr_ch = config.sr_width * (config.sr_depth - 1) + 1
    g_ch = config.guide_width * (config.guide_depth - 1) + 1
    acts = (sr_ch + g_ch) * crop_px * 4 * 3
    if conv_impl == "bmm":
        acts += 9 * sr_ch * crop_px * 4
    n_params = sum(int(np.prod(s)) for s in M.sr_shapes(config.sr_depth, config.sr_width))
    n_params += sum(int(np.prod(s)) for s in M.guide_shapes(guide_channels, config.guide_depth, config.guide_width))
    data = (guide_channels * 2 + 4) * hh * ww * 4 + 4 * lr_px * 4
    check = 3 * config.sr_width * lr_px * 4
    per_tile = acts + 4 * n_params * 4 + data + check
    infer = (3 * config.sr_width + 16) * hh * ww * 4
    return int(per_tile * 1.25), int(infer * 1.25)


def choose_batch_size(tile_shape: tuple[int, int], config: CMSRConfig, device: str | torch.device = "cpu", *,
                      guide_channels: int = 3, max_batch: int = 64, memory_fraction: float = 0.5,
                      conv_impl: ConvImpl = "grouped", scale: int = 4) -> int:
    """Largest K (<= ``max_batch``) whose batch fits ``memory_fraction`` of the free device memory.

    ``tile_shape`` is the HR tile (guide) shape. On CPU the bound rarely binds: there K buys
    little (the cores are busy with one tile's convolutions already), see benchmarks/RESULTS.md.
    """
    per_tile, infer = tile_memory_bytes(tile_shape, config, guide_channels, conv_impl, scale)
    budget = free_memory_bytes(device) * memory_fraction - infer
    return int(max(1, min(max_batch, budget // max(per_tile, 1))))


# --- the trainer -------------------------------------------------------------------------------
def train_tiles(lrs: Sequence[torch.Tensor], guides: Sequence[torch.Tensor | None], valids: Sequence[torch.Tensor],
                scale: int, config: CMSRConfig, *, seeds: Sequence[int], device: str | torch.device = "cpu",
                init_state: M.Params | Sequence[M.Params | None] | None = None,
                progress: BatchProgressFn | None = None, amp: AmpChoice = "auto",
                conv_impl: ConvImpl = "grouped", max_batch: int | None = None) -> list[TrainOutput]:
    """Super-resolve K normalised tiles, training them together; one :class:`TrainOutput` per tile.

    Arguments are per-tile lists of what :func:`cmsr.train.super_resolve_normalized` takes. Tiles
    of equal shapes are trained as one batch (at most ``max_batch`` at a time; default: all);
    different shapes form separate batches. ``init_state``: one warm-start weight dict for every
    tile, or one per tile. ``amp``: autocast dtype on CUDA (``off`` = fp32); CPU always fp32.
    """
    n = len(lrs)
    if not (len(guides) == len(valids) == len(seeds) == n):
        raise ValueError(f"train_tiles needs as many guides, valids and seeds as lrs ({n}); got "
                         f"{len(guides)}, {len(valids)}, {len(seeds)}")
    inits = list(init_state) if isinstance(init_state, (list, tuple)) else [init_state] * n
    if len(inits) != n:
        raise ValueError(f"init_state list has {len(inits)} entries for {n} tiles")
    for lr, guide, valid in zip(lrs, guides, valids):
        _check_inputs(lr, guide, valid, int(scale))
    policy = device_policy(device, amp)
    buckets: dict[tuple, list[int]] = {}
    for i, (lr, guide) in enumerate(zip(lrs, guides)):
        key = (tuple(lr.shape), None if guide is None else tuple(guide.shape))
        buckets.setdefault(key, []).append(i)
    results: list[TrainOutput | None] = [None] * n
    for members in buckets.values():
        step = max_batch or len(members)
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            outs = _train_batch([lrs[i] for i in chunk], [guides[i] for i in chunk], [valids[i] for i in chunk],
                                int(scale), config, [int(seeds[i]) for i in chunk], [inits[i] for i in chunk],
                                policy, conv_impl, chunk, progress)
            for i, o in zip(chunk, outs):
                results[i] = o
    return [r for r in results if r is not None]


class _Tile:
    """Host-side state of one tile in a batch (its streams, policy, guide, sources)."""

    def __init__(self, lr: torch.Tensor, guide: torch.Tensor | None, valid: torch.Tensor, seed: int,
                 scale: int, config: CMSRConfig, policy: DevicePolicy) -> None:
        dev = policy.device
        self.rng = np.random.default_rng(seed)
        self.lr = policy.to_device(lr.detach())
        self.valid = valid.detach().to(dev, torch.bool)
        self.use_guide = bool(config.use_guide and guide is not None)
        self.use_warp = self.use_guide and config.use_warp
        self.warp = make_warp(guide, self.lr, self.valid, scale, config) \
            if self.use_warp else None  # type: ignore[arg-type]
        self.gd = _Guide(policy.to_device(guide.detach()).contiguous(), tuple(self.lr.shape), self.warp,
                         config.guide_train_sampling) if self.use_guide else None  # type: ignore[union-attr]
        self.sources: list[tuple[int, torch.Tensor, torch.Tensor]] = [(1, self.lr, self.valid)]
        self.iterations = 0
        self.stage_stats: list[dict] = []
        self.lr_policy = _LRPolicy(config)


def _train_batch(lrs: list[torch.Tensor], guides: list[torch.Tensor | None], valids: list[torch.Tensor], scale: int,
                 config: CMSRConfig, seeds: list[int], inits: list[M.Params | None], policy: DevicePolicy,
                 conv_impl: ConvImpl, global_index: list[int], progress: BatchProgressFn | None) -> list[TrainOutput]:
    t0 = time.perf_counter()
    dev = policy.device
    tiles = [_Tile(lr, g, v, s, scale, config, policy) for lr, g, v, s in zip(lrs, guides, valids, seeds)]
    k_tiles = len(tiles)
    use_guide, use_warp = tiles[0].use_guide, tiles[0].use_warp
    c_guide = int(guides[0].shape[0]) if use_guide else None  # type: ignore[union-attr]
    states = [_load_init_state(M.init_params(c_guide, sr_depth=config.sr_depth, sr_width=config.sr_width,
                                             guide_depth=config.guide_depth, guide_width=config.guide_width,
                                             init_variance=config.init_variance, seed=s), init)
              for s, init in zip(seeds, inits)]
    ratios = {k: (1.0 if k.startswith("sr.") else config.lr_ratio_guide) for k in states[0]}
    net = _Flat(states, ratios, dev)
    warp = None
    if use_warp:
        warp = _StackedWarp([t.warp for t in tiles], {"affine": config.lr_ratio_affine,  # type: ignore[misc]
                                                      "velocity": config.lr_ratio_svf,
                                                      "tps_offsets": config.lr_ratio_tps}, dev)
    last_loss = torch.full((k_tiles,), float("nan"), device=dev)
    guide_cache: dict[int, torch.Tensor] = {}

    def guide_stack(base: int) -> torch.Tensor:
        if base not in guide_cache:
            imgs = [t.gd.full if config.guide_train_sampling == "point" else t.gd.level(base) for t in tiles]  # type: ignore[union-attr]
            guide_cache[base] = torch.stack(imgs)
        return guide_cache[base]

    kinds: list[str] | None = None
    for factor in config.stage_factors(scale):
        for t in tiles:
            t.lr_policy = _LRPolicy(config)
        recon = [_ReconCheck(t.lr, t.valid, factor, config, t.gd) for t in tiles]
        if kinds is None:  # each tile's non-learned base, decided once before training (warp at identity)
            kinds = [choose_base_kind(t.lr, t.valid, config, t.gd) for t in tiles]
        for r, kind in zip(recon, kinds):
            r.set_base(kind)
        check_up = torch.stack([r.up for r in recon])[:, None]
        check_target = torch.stack([r.target for r in recon])
        check_mask = torch.stack([r.mask for r in recon])
        check_points = recon[0].points.reshape(1, -1, 2)
        src_stacks = [(base, torch.stack([torch.stack([t.sources[j][1], t.sources[j][2].to(torch.float32)]) for t in tiles]))
                      for j, (base, _, _) in enumerate(tiles[0].sources)]
        active = list(range(k_tiles))
        stage_iters = [0] * k_tiles
        for it in range(config.max_iters):
            if not active:
                break
            augs = {p: sample_augmentation(tiles[p].rng, [tuple(s[1].shape) for s in tiles[p].sources],
                                           [s[0] for s in tiles[p].sources], factor, config) for p in active}
            warp_on = [p for p in active if config.warp_learn and tiles[p].iterations + it >= config.warp_warmup_iters]
            total = _batched_losses(augs, src_stacks, net, warp, guide_stack, factor, config,
                                    policy, conv_impl, last_loss, kinds, bool(warp_on))
            net.data.grad = None
            if warp is not None:
                warp.flat.data.grad = None
            total.backward()
            lrs_now = {p: tiles[p].lr_policy.lr for p in active}
            net.step(active, np.asarray([lrs_now[p] for p in active]))
            if warp is not None:  # a tile's warp is frozen during its warm-up (no grad, no Adam step)
                warp.flat.step(warp_on, np.asarray([lrs_now[p] for p in warp_on]))
            for p in active:
                stage_iters[p] = it + 1
            if it % config.run_test_every == 0:
                errs = _recon_errors(active, net, warp, check_up, check_target, check_mask, check_points,
                                     guide_stack, policy, conv_impl)
                for p, e in zip(active, errs):
                    tiles[p].lr_policy.record(it, e)
                    if progress is not None:
                        progress(global_index[p], tiles[p].iterations + it + 1, e, tiles[p].lr_policy.lr)
            still = []
            for p in active:
                tiles[p].lr_policy.update(it)
                if tiles[p].lr_policy.lr >= config.min_learning_rate:
                    still.append(p)
            active = still
        losses = last_loss.detach().cpu().tolist()
        if warp is not None:
            warp.write_back()
        for p, t in enumerate(tiles):
            t.iterations += stage_iters[p]
            weights = {k: v[p].detach() for k, v in net.views(net.data).items()}
            out = infer_stage(weights, t.lr, t.gd, factor, config, kinds[p])
            pol = t.lr_policy
            t.stage_stats.append({"factor": factor, "iterations": stage_iters[p], "final_loss": losses[p],
                                  "base": kinds[p],
                                  "final_lr": pol.lr, "recon_mse": pol.errors[-1] if pol.errors else None})
            up_valid = t.valid.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
            t.sources.append((factor, out.detach(), up_valid))

    seconds = time.perf_counter() - t0
    outs = []
    losses = last_loss.detach().cpu().tolist()
    for p, t in enumerate(tiles):
        h, w = t.lr.shape
        disp = t.warp.displacement_px(scale * h, scale * w) if t.warp is not None else None
        stats = {
            "iterations": t.iterations,
            "final_loss": losses[p],
            "final_lr": t.lr_policy.lr,
            "seconds": round(seconds / k_tiles, 3),
            "batch_seconds": round(seconds, 3),
            "batch_size": k_tiles,
            "stages": t.stage_stats,
            "use_guide": use_guide,
            "use_warp": use_warp,
            "base": kinds[p] if kinds else None,
            "mean_warp_px": float(np.mean(np.hypot(disp[..., 0], disp[..., 1]))) if disp is not None else 0.0,
        }
        outs.append(TrainOutput(image=t.sources[-1][1].detach().float().cpu(), stats=stats, displacement=disp,
                                weights=net.state(p)))
    return outs


def _batched_losses(augs: dict[int, Augmentation], src_stacks: list[tuple[int, torch.Tensor]], net: _Flat,
                    warp: _StackedWarp | None, guide_stack: Callable[[int], torch.Tensor], factor: int,
                    config: CMSRConfig, policy: DevicePolicy, conv_impl: ConvImpl, last_loss: torch.Tensor,
                    kinds: list[str], warp_grad: bool) -> torch.Tensor:
    """Sum over the active tiles of (loss_sr + loss_full) for this iteration's fathers."""
    dev = policy.device
    groups: dict[tuple[int, int], list[int]] = {}
    for p, a in augs.items():
        groups.setdefault((a.coords.shape[0], a.source_index), []).append(p)
    total = torch.zeros((), device=dev)
    by_side: dict[int, list[tuple[int, list[int]]]] = {}
    for (side, src_i), ps in sorted(groups.items()):
        by_side.setdefault(side, []).append((src_i, ps))
    for side, parts in by_side.items():
        order: list[int] = []
        fathers, masks, pts_list, bases = [], [], [], []
        for src_i, ps in parts:
            base, stack = src_stacks[src_i]
            idx = _h2d(ps, dev, torch.long)
            src = stack.index_select(0, idx)  # (n, 2, H, W): image, valid
            hs, ws = src.shape[-2:]
            coords = policy.to_device(np.stack([augs[p].coords for p in ps]))  # (n, s, s, 2) x, y
            f, m = _extract(src, coords, [augs[p].interpolate for p in ps])
            fathers.append(f)
            masks.append(m)
            pts_list.append((coords + 0.5) * _norm_scale(int(hs), int(ws), dev) - 1.0)  # = warp.to_normalized
            bases.append((base, len(ps)))
            order += ps
        father = torch.cat(fathers)
        mask = torch.cat(masks)
        n = len(order)
        idx_t = None if order == list(range(net.data.shape[0])) else _h2d(order, dev, torch.long)
        son = degrade_torch(father, factor, config.degradation)  # type: ignore[arg-type]
        w_sub = net.views(net.rows(idx_t))
        gcrop = None
        if M.has_guide_branch(w_sub):
            pts = torch.cat(pts_list).reshape(n, -1, 2)
            if warp is not None:
                with torch.set_grad_enabled(warp_grad):
                    pts = warp(warp.flat.rows(idx_t), pts)
            crops, start = [], 0
            for (base, cnt) in bases:
                gimg = guide_stack(base)
                sel = _h2d(order[start:start + cnt], dev, torch.long)
                g = F.grid_sample(gimg.index_select(0, sel), pts[start:start + cnt].unsqueeze(1).to(gimg.dtype),
                                  mode="bilinear", padding_mode="border", align_corners=False)
                crops.append(g.reshape(cnt, gimg.shape[1], side, side))
                start += cnt
            gcrop = torch.cat(crops)
        up = _net_input(son, factor, config, [kinds[p] for p in order], gcrop)
        with policy.autocast():
            res = stacked_chain(w_sub, "sr", up[:, None], conv_impl, policy.channels_last)
        sr_out = up + res[:, 0].float()
        loss_sr = _masked_l1(sr_out, father, mask)
        loss = loss_sr
        if gcrop is not None:
            with policy.autocast():
                gres = stacked_chain(w_sub, "g", gcrop, conv_impl, policy.channels_last)
            full = sr_out.detach() + gres[:, 0].float()
            loss_full = _masked_l1(full, father, mask)
            total = total + loss_full.sum()
            loss = loss_full
        total = total + loss_sr.sum()
        last_loss.index_copy_(0, idx_t if idx_t is not None else _h2d(order, dev, torch.long), loss.detach())
    return total


@torch.no_grad()
def _net_input(son: torch.Tensor, factor: int, config: CMSRConfig, kinds: list[str],
               guide_crops: torch.Tensor | None) -> torch.Tensor:
    """The non-learned base under the residuals (n, s, s), exactly as the sequential trainer makes it.

    ``bicubic`` and ``bp`` bases are computed for the whole batch at once; ``guided`` (a per-pixel
    float64 filter) per tile with the sequential trainer's own function.
    """
    if all(k == "bicubic" for k in kinds):
        return upsample_torch(son, factor)
    if all(k == "bp" for k in kinds):
        return _train.back_project(upsample_torch(son, factor), son, factor, config.base_bp_rounds,
                                   config.degradation)
    return torch.stack([_train._base(son[i], factor, config, k, None if guide_crops is None else guide_crops[i].detach())
                        for i, k in enumerate(kinds)])


def _extract(src: torch.Tensor, coords: torch.Tensor, interpolate: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fathers and valid masks from stacked sources (n, 2, H, W) at source pixel coords (n, s, s, 2).

    As :func:`cmsr.augment.extract`: integer modes gather exactly, affine mode samples bilinearly
    and a pixel is valid only inside the source with every contributing pixel valid.
    """
    n, _, h, w = src.shape
    side = coords.shape[1]
    fathers = torch.empty((n, side, side), dtype=src.dtype, device=src.device)
    masks = torch.empty((n, side, side), dtype=torch.bool, device=src.device)
    interp = [i for i, f in enumerate(interpolate) if f]
    exact = [i for i, f in enumerate(interpolate) if not f]
    if exact:
        ei = _h2d(exact, src.device, torch.long)
        c = coords.index_select(0, ei).round().long()
        flat = (c[..., 1] * w + c[..., 0]).reshape(len(exact), 1, -1).expand(-1, 2, -1)
        vals = torch.gather(src.index_select(0, ei).reshape(len(exact), 2, -1), 2, flat).reshape(len(exact), 2, side, side)
        fathers.index_copy_(0, ei, vals[:, 0])
        masks.index_copy_(0, ei, vals[:, 1] > 0.5)
    if interp:
        ii = _h2d(interp, src.device, torch.long)
        pts = coords.index_select(0, ii)
        grid = (pts + 0.5) * _norm_scale(h, w, src.device) - 1.0
        out = F.grid_sample(src.index_select(0, ii), grid, mode="bilinear", padding_mode="border", align_corners=False)
        inside = (pts[..., 0] >= -0.5) & (pts[..., 0] <= w - 0.5) & (pts[..., 1] >= -0.5) & (pts[..., 1] <= h - 0.5)
        fathers.index_copy_(0, ii, out[:, 0])
        masks.index_copy_(0, ii, (out[:, 1] > 0.999) & inside)
    return fathers, masks


@torch.no_grad()
def _recon_errors(active: list[int], net: _Flat, warp: _StackedWarp | None, check_up: torch.Tensor,
                  check_target: torch.Tensor, check_mask: torch.Tensor, check_points: torch.Tensor,
                  guide_stack: Callable[[int], torch.Tensor], policy: DevicePolicy, conv_impl: ConvImpl) -> list[float]:
    """ZSSR's reconstruction error (MSE of the net on the degraded LR) of each active tile: one sync."""
    dev = policy.device
    k_tiles = check_up.shape[0]
    idx = None if len(active) == k_tiles else torch.as_tensor(active, device=dev)
    up = check_up if idx is None else check_up.index_select(0, idx)
    w_sub = net.views(net.rows(idx))
    n = up.shape[0]
    hc, wc = up.shape[-2:]
    with policy.autocast():
        res = stacked_chain(w_sub, "sr", up, conv_impl, policy.channels_last)
    out = up[:, 0] + res[:, 0].float()
    if M.has_guide_branch(w_sub):
        pts = check_points.expand(n, -1, -1)
        if warp is not None:
            pts = warp(warp.flat.rows(idx), pts)
        gimg = guide_stack(1)
        gimg = gimg if idx is None else gimg.index_select(0, idx)
        g = F.grid_sample(gimg, pts.unsqueeze(1).to(gimg.dtype), mode="bilinear", padding_mode="border",
                          align_corners=False).reshape(n, gimg.shape[1], hc, wc)
        with policy.autocast():
            gres = stacked_chain(w_sub, "g", g, conv_impl, policy.channels_last)
        out = out + gres[:, 0].float()
    target = check_target if idx is None else check_target.index_select(0, idx)
    mask = (check_mask if idx is None else check_mask.index_select(0, idx)).to(out.dtype)
    err = (((out - target) ** 2) * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1.0)
    return err.cpu().tolist()


# --- the API-level entry (what pipelines.run_tiles calls) ----------------------------------------
def run_batch(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray], scale: int, config: CMSRConfig | None = None,
              *, seeds: Sequence[int], device: str | torch.device = "cpu",
              target_range: tuple[float, float] | None = None, guide_range: np.ndarray | None = None,
              init_state: M.Params | None = None, amp: AmpChoice = "auto", conv_impl: ConvImpl = "grouped",
              max_batch: int | None = None) -> list:
    """``cmsr.run(method="cmsr")`` for many tiles of one survey at once -> one ``SRResult`` per tile.

    The same input checks, normalisation (``target_range``/``guide_range``, per tile if None),
    nodata handling and unit restoration as :func:`cmsr.api.run`, one tile at a time; only the
    training is batched (:func:`train_tiles`). ``init_state``: survey warm-start weights
    (:mod:`cmsr.warm_start`), with ``config`` then the fine-tune config.
    """
    from .api import SRResult, _default_config, _device, check_scale, prepare_guide, prepare_target

    t0 = time.perf_counter()
    s = check_scale(scale)
    dev = _device(device)
    cfg = config if config is not None else _default_config()
    if not (len(targets) == len(guides) == len(seeds)):
        raise ValueError(f"run_batch needs as many guides and seeds as targets ({len(targets)}); got "
                         f"{len(guides)}, {len(seeds)}")
    prepared, guide_ts, stats = [], [], []
    for target, guide in zip(targets, guides):
        p = prepare_target(target, target_range)
        st: dict = {"method": "cmsr", "scale": s, "target_range": [p.lo, p.hi],
                    "nodata_fraction": float(1.0 - p.valid.float().mean())}
        g = None
        if cfg.use_guide:
            g, notes = prepare_guide(guide, tuple(p.lr.shape), s, guide_range)
            st.update(notes)
        prepared.append(p)
        guide_ts.append(g)
        stats.append(st)
    trained = train_tiles([p.lr for p in prepared], guide_ts, [p.valid for p in prepared], s, cfg, seeds=seeds,
                          device=dev, init_state=init_state, amp=amp, conv_impl=conv_impl, max_batch=max_batch)
    per_tile = (time.perf_counter() - t0) / max(len(targets), 1)
    results = []
    for p, st, tr in zip(prepared, stats, trained):
        image = p.restore(tr.image)
        if not bool(p.valid.all()):
            valid_hr = np.repeat(np.repeat(p.valid.numpy(), s, axis=0), s, axis=1)
            image[~valid_hr] = np.nan
        st.update({k: v for k, v in tr.stats.items() if k != "seconds"})
        st["train_seconds"] = tr.stats.get("seconds")
        st["seconds"] = round(per_tile, 3)
        st["warm_start"] = init_state is not None
        results.append(SRResult(image=image, stats=st, displacement=tr.displacement))
    return results
