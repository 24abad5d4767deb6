"""How many tiles one batched training may hold on a device (K from free memory)."""

from __future__ import annotations

import numpy as np
import torch

from . import model as M
from .config import CMSRConfig
from .runtime import free_memory_bytes


def tile_memory_bytes(tile_shape: tuple[int, int], config: CMSRConfig, guide_channels: int = 3,
                      scale: int = 4) -> tuple[int, int]:
    """(per-tile bytes while training in a batch, one-off bytes of a tile's inference), fp32.

    A deliberately generous model: training holds the tile's guide (plus resized levels), its
    father sources, Adam state and the saved activations of one crop (x3 for grads/ReLU masks);
    inference (one tile at a time) holds ~3 full-size 64-channel activations and the 8 ensemble
    members.
    """
    hh, ww = int(tile_shape[0]), int(tile_shape[1])
    lr_px = (hh // scale) * (ww // scale)
    crop_px = config.crop_size ** 2
    sr_ch = config.sr_width * (config.sr_depth - 1) + 1
    n_params = sum(int(np.prod(s)) for s in M.sr_shapes(config.sr_depth, config.sr_width))
    g_ch = 0
    if config.guide is not None:
        g_ch = config.guide.width * (config.guide.depth - 1) + 1
        n_params += sum(int(np.prod(s)) for s in M.guide_shapes(guide_channels, config.guide.depth,
                                                                 config.guide.width))
    acts = (sr_ch + g_ch) * crop_px * 4 * 3
    data = (guide_channels * 2 + 4) * hh * ww * 4 + 4 * lr_px * 4
    check = 3 * config.sr_width * lr_px * 4
    per_tile = acts + 4 * n_params * 4 + data + check
    infer = (3 * config.sr_width + 16) * hh * ww * 4
    return int(per_tile * 1.25), int(infer * 1.25)


def choose_batch_size(tile_shape: tuple[int, int], config: CMSRConfig, device: str | torch.device = "cpu", *,
                      guide_channels: int = 3, scale: int = 4, max_batch: int = 64,
                      memory_fraction: float = 0.5) -> int:
    """Largest K (<= ``max_batch``) whose batch fits ``memory_fraction`` of the free device memory.

    ``tile_shape`` is the HR tile (guide) shape. On CPU the bound rarely binds, and K buys little
    there (the cores are busy with one tile's convolutions already); on a GPU it is what fills it.
    """
    per_tile, infer = tile_memory_bytes(tile_shape, config, guide_channels, scale)
    budget = free_memory_bytes(device) * memory_fraction - infer
    return int(max(1, min(max_batch, budget // max(per_tile, 1))))
