"""Per-tile optimisation state of a batch of tiles: packed Adam and ZSSR's learning-rate policy.

Why packed: K tiles' weights (tensors of several shapes each) live row-wise in one (K, P) leaf,
so one ``index_select`` gathers the still-active tiles' weights for a step, and the update is
torch's fused Adam over views of the rows (one kernel launch per distinct learning rate, not per
tensor and tile), each tile with its own step count and learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .config import CMSRConfig
from .runtime import DevicePolicy

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class PackedAdam:
    """K tiles' tensors ``{name: (K, *shape)}`` packed into ``data`` (K, P), with Adam's state."""

    def __init__(self, tiles: Sequence[dict[str, torch.Tensor]], lr_multipliers: dict[str, float],
                 policy: DevicePolicy) -> None:
        self.policy = policy
        self.keys = list(tiles[0])
        self.shapes = {k: tuple(tiles[0][k].shape) for k in self.keys}
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for k in self.keys:
            n = int(np.prod(self.shapes[k]))
            self.slices[k] = (offset, offset + n)
            offset += n
        dev = policy.device
        rows = [torch.cat([t[k].detach().reshape(-1).float() for k in self.keys]) for t in tiles]
        self.data = torch.stack(rows).to(dev).requires_grad_()
        # one segment per tensor, (start, stop, lr multiplier): the fused kernel then sees exactly the
        # tensors torch.optim.Adam would (its vector/scalar split, and so its rounding, is per tensor)
        self.segments = [(*self.slices[k], float(lr_multipliers[k])) for k in self.keys]
        self.exp_avg = torch.zeros_like(self.data, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(self.data, requires_grad=False)
        self.steps = torch.zeros((len(tiles), len(self.segments)), dtype=torch.float32, device=dev)

    def rows(self, index: torch.Tensor | None) -> torch.Tensor:
        """The packed rows of the tiles at ``index`` (all when None), differentiable."""
        return self.data if index is None else self.data.index_select(0, index)

    def views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n, P) -> {name: (n, *shape)} views (differentiable)."""
        n = rows.shape[0]
        return {k: rows[:, a:b].view(n, *self.shapes[k]) for k, (a, b) in self.slices.items()}

    def tile(self, position: int) -> dict[str, torch.Tensor]:
        """Tile ``position``'s tensors under their own shapes (views of the live data, detached)."""
        return {k: v[0] for k, v in self.views(self.data.detach()[position:position + 1]).items()}

    def zero_grad(self) -> None:
        self.data.grad = None

    @torch.no_grad()
    def step(self, active: list[int], learning_rates: Sequence[float]) -> None:
        """One Adam step of the tiles at positions ``active``; the other rows stay untouched.

        torch's own fused Adam kernel, called on views of the packed rows: one call per distinct
        learning rate in the batch (usually one), each over every active tile's segments. The same
        per-element arithmetic as ``torch.optim.Adam(fused=True)`` over the tile's tensors.
        """
        grad = self.data.grad
        if grad is None or not active:
            return
        calls: dict[float, tuple[list, list, list, list, list]] = {}
        for position, rate in zip(active, learning_rates):
            for j, (a, b, multiplier) in enumerate(self.segments):
                lists = calls.setdefault(float(rate) * multiplier, ([], [], [], [], []))
                for target, source in zip(lists, (self.data.data, grad, self.exp_avg, self.exp_avg_sq)):
                    target.append(source[position, a:b])
                lists[4].append(self.steps[position, j])
        for rate, (params, grads, avgs, avg_sqs, steps) in calls.items():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, avgs, avg_sqs, [], steps, lr=rate, beta1=BETA1, beta2=BETA2,
                               weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)


class LearningRatePolicy:
    """ZSSR's learning-rate policy: divide by 10 when the reconstruction error stops falling."""

    def __init__(self, config: CMSRConfig) -> None:
        self.config = config
        self.learning_rate = config.learning_rate
        self.steps: list[int] = []
        self.errors: list[float] = []
        self.last_change = 0

    def record(self, iteration: int, error: float) -> None:
        self.steps.append(iteration)
        self.errors.append(error)

    def update(self, iteration: int) -> bool:
        """Maybe divide the learning rate by 10 after ``iteration``; True when it changed."""
        cfg = self.config
        if (iteration + 1) % cfg.lr_policy_check_every or iteration - self.last_change <= cfg.min_iters:
            return False
        xs = np.asarray(self.steps[-cfg.lr_slope_points:], dtype=np.float64)
        ys = np.asarray(self.errors[-cfg.lr_slope_points:], dtype=np.float64)
        if len(xs) < 4:
            return False
        coef, cov = np.polyfit(xs, ys, 1, cov=True)
        slope, std = float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
        if -cfg.lr_change_ratio * slope < std:
            self.learning_rate /= 10.0
            self.last_change = iteration
            return True
        return False

    @property
    def stopped(self) -> bool:
        return self.learning_rate < self.config.min_learning_rate
