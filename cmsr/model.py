"""The CMSR network: ``out = up(T) + F_sr(up(T)) + F_g(warp(G))``.

Weights live in a plain ``dict[str, Tensor]`` (``sr.0`` ... ``sr.7``, ``g.0`` ... ``g.3``); a tile's
dict saves and loads as a warm start. The forward passes are pure functions of such dicts
stacked along a leading tile dim (K, ...), so one code path runs one tile or K tiles: the
trainer packs K tiles' weights (``cmsr.optim``) and inference is the same call with K = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]


def _normal(shape: tuple[int, ...], variance: float, gen: torch.Generator) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(shape, generator=gen, dtype=torch.float32) * math.sqrt(variance / fan_in)


def sr_shapes(depth: int, width: int) -> list[tuple[int, int, int, int]]:
    """F_sr: 3x3 convs 1 -> width -> ... -> width -> 1 (ZSSR)."""
    return [(width, 1, 3, 3)] + [(width, width, 3, 3)] * (depth - 2) + [(1, width, 3, 3)]


def guide_shapes(in_ch: int, depth: int, width: int) -> list[tuple[int, int, int, int]]:
    """F_g: 3x3 convs in_ch -> width -> ... -> width, then a 1x1 conv width -> 1."""
    return [(width, in_ch, 3, 3)] + [(width, width, 3, 3)] * (depth - 2) + [(1, width, 1, 1)]


def init_params(
    guide_channels: int | None,
    *,
    sr_depth: int = 8,
    sr_width: int = 64,
    guide_depth: int = 4,
    guide_width: int = 16,
    init_variance: float = 0.1,
    seed: int = 0,
) -> Params:
    """Fresh weights, N(0, init_variance / fan_in), no biases. ``guide_channels=None``: no F_g."""
    gen = torch.Generator().manual_seed(int(seed))
    params: Params = {}
    for i, shp in enumerate(sr_shapes(sr_depth, sr_width)):
        params[f"sr.{i}"] = _normal(shp, init_variance, gen)
    if guide_channels is not None:
        for i, shp in enumerate(guide_shapes(guide_channels, guide_depth, guide_width)):
            params[f"g.{i}"] = _normal(shp, init_variance, gen)
    return params


def _layer_keys(weights: Params, prefix: str) -> list[str]:
    return sorted((k for k in weights if k.startswith(prefix + ".")), key=lambda k: int(k.split(".")[1]))


def conv_chain(weights: Params, prefix: str, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """K tiles' conv stacks at once: ``x`` (K, Cin, H, W), ``weights[key]`` (K, Cout, Cin, k, k) ->
    (K, Cout, H, W); ReLU between layers, no biases.

    Each layer is one grouped convolution (``groups=K``): tile k's channels only meet tile k's
    weights, so a tile's result does not depend on its batch neighbours, and K = 1 is a plain conv.
    """
    keys = _layer_keys(weights, prefix)
    k_tiles, _, h, w = x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = x.reshape(1, -1, h, w).contiguous(memory_format=fmt)
    for j, key in enumerate(keys):
        wt = weights[key]
        wk = wt.reshape(-1, *wt.shape[2:]).contiguous(memory_format=fmt)
        y = F.conv2d(y, wk, padding=wt.shape[-1] // 2, groups=k_tiles)
        if j < len(keys) - 1:
            y = F.relu(y)
    return y.reshape(k_tiles, -1, h, w)


def has_guide_branch(weights: Params) -> bool:
    return any(k.startswith("g.") for k in weights)


def forward(weights: Params, up: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
    """K tiles' full outputs ``up + F_sr(up) + F_g(guide)``: up (K, 1, H, W), guide (K, C, H, W)
    already warped and on up's grid, weights stacked (K, ...)."""
    out = up + conv_chain(weights, "sr", up)
    if guide is not None and has_guide_branch(weights):
        out = out + conv_chain(weights, "g", guide)
    return out


def stacked(weights: Params) -> Params:
    """One tile's weights as a batch of one (views, no copy)."""
    return {k: v[None] for k, v in weights.items()}
