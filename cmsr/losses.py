"""One training iteration's losses and the reconstruction check, for K tiles at once.

Why batched: the fathers of all active tiles go through the networks as one grouped computation
(``cmsr.model.conv_chain``); the loss is the sum of the tiles' own losses, so each tile's gradient
is exactly its own. The reconstruction check (ZSSR's signal for the learning-rate policy) is the
only host-device synchronisation of the loop, once every ``run_test_every`` iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import model as M
from .augment import Augmentation, extract, source_scale
from .bases import make_base, make_bases
from .config import CMSRConfig, FixedBase
from .optim import PackedAdam
from .resize import degrade_torch, imresize_torch
from .runtime import DevicePolicy
from .warp import pixel_centers

WarpFn = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
"""The batch's warp: (tile rows or None for all, points (n, N, 2)) -> warped points."""


@dataclass
class ReconstructionCheck:
    """The reconstruction check of a batch at one stage: the net on ``degrade(LR)`` vs the LR."""

    up: torch.Tensor  # (K, 1, hc, wc) base of the degraded LR
    target: torch.Tensor  # (K, hc, wc)
    mask: torch.Tensor  # (K, hc, wc) bool
    points: torch.Tensor  # (1, hc * wc, 2) normalised LR pixel centres


def reconstruction_check(tiles: list, bases: list[FixedBase], factor: int, config: CMSRConfig) -> ReconstructionCheck:
    ups, targets, masks = [], [], []
    h, w = tiles[0].lr.shape
    hc, wc = min(max(factor, (h // factor) * factor), h), min(max(factor, (w // factor) * factor), w)
    exact = hc % factor == 0 and wc % factor == 0
    for t, base in zip(tiles, bases):
        target = t.lr[:hc, :wc]
        if exact:
            son = degrade_torch(target, factor, config.degradation)
            guide = t.guide.at_lr_centres()[:, :hc, :wc] if t.guide is not None else None
            up = make_base(son, factor, base, guide, config.degradation)
        else:
            up = imresize_torch(imresize_torch(target, 1.0 / factor), float(factor), output_shape=(hc, wc))
        ups.append(up)
        targets.append(target)
        masks.append(t.valid[:hc, :wc])
    points = pixel_centers(h, w, tiles[0].lr.device)[:hc, :wc].reshape(1, -1, 2)
    return ReconstructionCheck(torch.stack(ups)[:, None], torch.stack(targets), torch.stack(masks), points)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-tile mean |pred - target| over the mask: (K, H, W) -> (K,) (invalid pixels count nowhere)."""
    m = mask.to(pred.dtype)
    return ((pred - target).abs() * m).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1.0)


def batch_losses(augs: dict[int, Augmentation], sources: list[tuple[int, torch.Tensor]], net: PackedAdam,
            warp: WarpFn | None, guide_stack: Callable[[int], torch.Tensor], factor: int, config: CMSRConfig,
            policy: DevicePolicy, last_loss: torch.Tensor, bases: list[FixedBase], warp_grad: bool) -> torch.Tensor:
    """Sum over the active tiles of (loss_sr + loss_full) for this iteration's fathers.

    Fathers of one crop side are computed together (their sources may differ: each is gathered from
    its own stacked source); ``last_loss`` receives each tile's loss_full (loss_sr without a guide).
    """
    dev = policy.device
    groups: dict[tuple[int, int], list[int]] = {}
    for p, a in augs.items():
        groups.setdefault((a.coords.shape[0], a.source_index), []).append(p)
    by_side: dict[int, list[tuple[int, list[int]]]] = {}
    for (side, src_i), ps in sorted(groups.items()):
        by_side.setdefault(side, []).append((src_i, ps))
    total = torch.zeros((), device=dev)
    for side, parts in by_side.items():
        order: list[int] = []
        fathers, masks, points, source_of = [], [], [], []
        for src_i, ps in parts:
            src_factor, stack = sources[src_i]
            src = stack.index_select(0, policy.to_device(np.asarray(ps), torch.long))  # (n, 2, H, W)
            hs, ws = src.shape[-2:]
            coords = policy.to_device(np.stack([augs[p].coords for p in ps]))  # (n, s, s, 2) x, y
            f, m = extract(src, coords, [augs[p].interpolate for p in ps], policy)
            fathers.append(f)
            masks.append(m)
            points.append((coords + 0.5) * source_scale(int(hs), int(ws), dev) - 1.0)
            source_of.append((src_factor, len(ps)))
            order += ps
        father, mask = torch.cat(fathers), torch.cat(masks)
        n = len(order)
        idx = None if order == list(range(net.data.shape[0])) else policy.to_device(np.asarray(order), torch.long)
        son = degrade_torch(father, factor, config.degradation)  # type: ignore[arg-type]
        weights = net.views(net.rows(idx))
        guide_crop = None
        if M.has_guide_branch(weights):
            pts = torch.cat(points).reshape(n, -1, 2)
            if warp is not None:
                with torch.set_grad_enabled(warp_grad):
                    pts = warp(idx, pts)
            crops, start = [], 0
            for src_factor, count in source_of:
                image = guide_stack(src_factor)
                sel = policy.to_device(np.asarray(order[start:start + count]), torch.long)
                g = F.grid_sample(image.index_select(0, sel), pts[start:start + count].unsqueeze(1).to(image.dtype),
                                  mode="bilinear", padding_mode="border", align_corners=False)
                crops.append(g.reshape(count, image.shape[1], side, side))
                start += count
            guide_crop = torch.cat(crops)
        up = make_bases(son, factor, [bases[p] for p in order], guide_crop, config.degradation)
        with policy.autocast():
            residual = M.conv_chain(weights, "sr", up[:, None], policy.channels_last)
        sr_out = up + residual[:, 0].float()
        loss_sr = masked_l1(sr_out, father, mask)
        loss = loss_sr
        if guide_crop is not None:
            with policy.autocast():
                guide_residual = M.conv_chain(weights, "g", guide_crop, policy.channels_last)
            loss_full = masked_l1(sr_out.detach() + guide_residual[:, 0].float(), father, mask)
            total = total + loss_full.sum()
            loss = loss_full
        total = total + loss_sr.sum()
        last_loss.index_copy_(0, idx if idx is not None else policy.to_device(np.asarray(order), torch.long),
                              loss.detach())
    return total


@torch.no_grad()
def reconstruction_errors(active: list[int], net: PackedAdam, warp: WarpFn | None, check: ReconstructionCheck,
                           guide_stack: Callable[[int], torch.Tensor], policy: DevicePolicy) -> list[float]:
    """ZSSR's reconstruction error (MSE of the net on the degraded LR) of each active tile: one sync."""
    k_tiles = check.up.shape[0]
    idx = None if len(active) == k_tiles else policy.to_device(np.asarray(active), torch.long)
    pick = (lambda x: x) if idx is None else (lambda x: x.index_select(0, idx))
    up = pick(check.up)
    weights = net.views(net.rows(idx))
    n = up.shape[0]
    hc, wc = up.shape[-2:]
    with policy.autocast():
        residual = M.conv_chain(weights, "sr", up, policy.channels_last)
    out = up[:, 0] + residual[:, 0].float()
    if M.has_guide_branch(weights):
        pts = check.points.expand(n, -1, -1)
        if warp is not None:
            pts = warp(idx, pts)
        image = pick(guide_stack(1))
        g = F.grid_sample(image, pts.unsqueeze(1).to(image.dtype), mode="bilinear", padding_mode="border",
                          align_corners=False).reshape(n, image.shape[1], hc, wc)
        with policy.autocast():
            guide_residual = M.conv_chain(weights, "g", g, policy.channels_last)
        out = out + guide_residual[:, 0].float()
    mask = pick(check.mask).to(out.dtype)
    err = (((out - pick(check.target)) ** 2) * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1.0)
    return err.cpu().tolist()
