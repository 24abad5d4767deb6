"""The CMSR network: ``out = up(T) + F_sr(up(T)) + F_g(warp(G))``.

Weights live in a plain ``dict[str, Tensor]`` (``sr.0`` ... ``sr.7``, ``g.0`` ... ``g.3``) and the
forward passes are pure functions of that dict. Why: the same dict can be stacked along a new
leading dim for batched training of many tiles (``torch.func.vmap`` / grouped convs), saved and
loaded as a warm start, and handed to ``torch.func.functional_call`` without any module
plumbing. :class:`CMSRNet` is a thin ``nn.Module`` holder of such a dict for optimisers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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


def _chain(params: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    keys = sorted((k for k in params if k.startswith(prefix + ".")), key=lambda k: int(k.split(".")[1]))
    for j, k in enumerate(keys):
        w = params[k]
        x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        if j < len(keys) - 1:
            x = F.relu(x)
    return x


def sr_residual(params: Params, up: torch.Tensor) -> torch.Tensor:
    """F_sr(up): (N, 1, H, W) -> (N, 1, H, W)."""
    return _chain(params, "sr", up)


def guide_residual(params: Params, guide: torch.Tensor) -> torch.Tensor:
    """F_g(warped guide): (N, C, H, W) -> (N, 1, H, W)."""
    return _chain(params, "g", guide)


def has_guide_branch(params: Params) -> bool:
    return any(k.startswith("g.") for k in params)


def forward(params: Params, up: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
    """Full output ``up + F_sr(up) + F_g(guide)`` (guide already warped and on up's grid)."""
    out = up + sr_residual(params, up)
    if guide is not None and has_guide_branch(params):
        out = out + guide_residual(params, guide)
    return out


class CMSRNet(nn.Module):
    """``nn.Module`` holding a params dict (names with '.' replaced by '_' inside the module)."""

    def __init__(self, params: Params) -> None:
        super().__init__()
        self._names = list(params)
        self.weights = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v.clone()) for k, v in params.items()})

    def params(self) -> Params:
        """The live parameters under their canonical names."""
        return {k: self.weights[k.replace(".", "_")] for k in self._names}

    def sr_parameters(self) -> list[nn.Parameter]:
        return [p for k, p in self.params().items() if k.startswith("sr.")]  # type: ignore[misc]

    def guide_parameters(self) -> list[nn.Parameter]:
        return [p for k, p in self.params().items() if k.startswith("g.")]  # type: ignore[misc]

    def state(self) -> Params:
        """Detached CPU copy of the weights (a warm start for another tile)."""
        return {k: v.detach().cpu().clone() for k, v in self.params().items()}

    def forward(self, up: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:  # noqa: D401
        return forward(self.params(), up, guide)
