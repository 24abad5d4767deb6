"""One tile's guide as the trainer and inference read it: resized copies and its geometry.

The guide is read through the tile's warp: none (the guide as given), the affine a registration
found (frozen), or the paper's learned warp. Why one object: training samples the deformed guide
at a father's points, the reconstruction check at the LR's pixel centres and inference on each
stage's whole grid, and all three must see the same geometry and the same resampling.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .resize import imresize_torch
from .warp import pixel_centers, sample


class TileGuide:
    """The (C, H, W) guide of one tile on the ``scale`` x LR grid, with its warp (or None)."""

    def __init__(self, guide: torch.Tensor, lr_shape: tuple[int, int], warp: nn.Module | None,
                 train_sampling: Literal["point", "area"]) -> None:
        self.full = guide
        self.lr_shape = lr_shape
        self.warp = warp
        self.train_sampling = train_sampling
        self._levels: dict[int, torch.Tensor] = {}

    def level(self, factor: int) -> torch.Tensor:
        """The guide resized (MATLAB antialiased bicubic) onto the grid ``factor`` x the LR."""
        h, w = self.lr_shape
        shape = (factor * h, factor * w)
        if tuple(self.full.shape[-2:]) == shape:
            return self.full
        if factor not in self._levels:
            self._levels[factor] = imresize_torch(self.full, output_shape=shape).contiguous()
        return self._levels[factor]

    def train_image(self, factor: int) -> torch.Tensor:
        """The image a father from the source at ``factor`` samples (see ``GuideBranch.train_sampling``)."""
        return self.full if self.train_sampling == "point" else self.level(factor)

    def warped(self, points: torch.Tensor) -> torch.Tensor:
        return points if self.warp is None else self.warp(points)

    @torch.no_grad()
    def at_lr_centres(self) -> torch.Tensor:
        """The deformed guide at the LR's pixel centres (C, h, w), as a father from the LR sees it."""
        h, w = self.lr_shape
        return sample(self.train_image(1), self.warped(pixel_centers(h, w, self.full.device)))

    @torch.no_grad()
    def stage_grid(self, factor: int) -> torch.Tensor:
        """The deformed guide on the whole grid ``factor`` x the LR (inference)."""
        h, w = self.lr_shape
        return sample(self.level(factor), self.warped(pixel_centers(factor * h, factor * w, self.full.device)))
