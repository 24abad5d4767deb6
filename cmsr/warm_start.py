"""Survey warm start: pretrain the networks on a few representative tiles, fine-tune every tile briefly.

Why: the tiles of one survey share the sensor pair's statistics (how thermal/NIR relates to
RGB, the degradation, the noise), which is what most of F_sr's and F_g's 1600 iterations learn.
Learning it once and starting every tile from it leaves each tile only its own specifics to
learn. What stays per tile, because it is what makes CMSR CMSR: its own internal training on
its own pair (fine-tuning, with its own father/son stream and lr policy) and its own warp,
learned from the identity (misalignment varies across a mosaic and is never transferred).

Fine-tuning is the ordinary training (``cmsr.run_many`` with ``init_state``) under
``finetune_config``: one stage straight at the final scale (no gradual x2 stage), a short
iteration budget, the lr policy free to stop earlier. Measured speed and quality are in
benchmarks/RESULTS.md ("Throughput").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import model as M
from .config import CMSRConfig
from .inputs import check_scale, prepare_tiles
from .train import train


@dataclass(frozen=True)
class WarmStartConfig:
    """How the survey warm start is made and used.

    representatives: tiles trained fully (the preset's whole schedule), one after the other,
        each starting from the previous one's weights.
    min_valid_fraction: tiles with less valid (non-nodata) LR are never representatives.
    finetune_iters: iteration cap of each tile's fine-tune (one stage at the final scale).
    finetune_min_iters: the lr policy's ``min_iters`` while fine-tuning.
    finetune_gradual: keep the preset's gradual stages while fine-tuning (slower, rarely better).
    finetune_learning_rate: Adam's initial lr while fine-tuning; None = the preset's.
    """

    representatives: int = 2
    min_valid_fraction: float = 0.9
    finetune_iters: int = 160
    finetune_min_iters: int = 60
    finetune_gradual: bool = False
    finetune_learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.representatives < 1 or self.finetune_iters < 1 or self.finetune_min_iters < 0:
            raise ValueError("representatives and finetune_iters must be >= 1, finetune_min_iters >= 0")


def finetune_config(config: CMSRConfig, warm: WarmStartConfig = WarmStartConfig()) -> CMSRConfig:
    """The per-tile config after a warm start: ``config`` with the fine-tune budget."""
    changes: dict = {"max_iters": warm.finetune_iters, "min_iters": warm.finetune_min_iters}
    if not warm.finetune_gradual:
        changes["gradual"] = False
        changes["scale_schedule"] = None
    if warm.finetune_learning_rate is not None:
        changes["learning_rate"] = warm.finetune_learning_rate
    return config.replace(**changes)


def pick_representatives(lrs: Sequence[torch.Tensor], valids: Sequence[torch.Tensor], count: int,
                         min_valid_fraction: float = 0.9) -> list[int]:
    """``count`` tile indices spread over the survey's range of texture (LR gradient energy).

    Why texture quantiles: a flat tile teaches the nets little, the busiest one is atypical; tiles
    at evenly spaced quantiles (the median first) cover what most tiles look like. Tiles with too
    much nodata are skipped unless nothing else is left.
    """
    energy, candidates = [], []
    for i, (lr, valid) in enumerate(zip(lrs, valids)):
        v = valid.to(torch.bool)
        frac = float(v.float().mean())
        gy = (lr[1:, :] - lr[:-1, :]).abs()[(v[1:, :] & v[:-1, :])]
        gx = (lr[:, 1:] - lr[:, :-1]).abs()[(v[:, 1:] & v[:, :-1])]
        e = float(torch.cat([gy, gx]).mean()) if gy.numel() + gx.numel() else 0.0
        energy.append(e)
        if frac >= min_valid_fraction:
            candidates.append(i)
    if not candidates:
        candidates = list(range(len(lrs)))
    count = min(count, len(candidates))
    ranked = sorted(candidates, key=lambda i: energy[i])
    qs = [0.5] + [q for q in np.linspace(0.2, 0.8, max(count - 1, 1))][: count - 1]
    picks: list[int] = []
    for q in qs:
        j = ranked[min(len(ranked) - 1, int(round(q * (len(ranked) - 1))))]
        if j not in picks:
            picks.append(j)
    for j in ranked:  # fill up if quantiles collided
        if len(picks) >= count:
            break
        if j not in picks:
            picks.append(j)
    return picks


def pretrain(lrs: Sequence[torch.Tensor], guides: Sequence[torch.Tensor | None], valids: Sequence[torch.Tensor],
             scale: int, config: CMSRConfig, *, seed: int = 0, device: str | torch.device = "cpu",
             warm: WarmStartConfig = WarmStartConfig()) -> M.Params:
    """Network weights learned on ``warm.representatives`` representative tiles (CPU tensors).

    Each representative is trained with the full ``config`` (the preset's whole schedule), the
    next one starting from the previous one's weights. The warps learned there are discarded.
    """
    if not lrs:
        raise ValueError("pretrain needs at least one tile")
    state: M.Params | None = None
    for j, i in enumerate(pick_representatives(lrs, valids, warm.representatives, warm.min_valid_fraction)):
        (out,) = train([lrs[i]], [guides[i]], [valids[i]], scale, config, seeds=[seed + j], device=device,
                       init_state=state)
        assert out.weights is not None
        state = out.weights
    assert state is not None
    return state


def pretrain_arrays(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray], scale: int, config: CMSRConfig, *,
                    seed: int = 0, device: str | torch.device = "cpu", target_range: tuple[float, float] | None = None,
                    guide_range: np.ndarray | None = None, warm: WarmStartConfig = WarmStartConfig()) -> M.Params:
    """:func:`pretrain` from raw tile arrays (target units, NaN nodata), normalised exactly as
    ``cmsr.run_many`` will normalise them (pass the survey ranges)."""
    s = check_scale(scale)
    tiles = prepare_tiles(targets, guides, s, needs_guide=config.guide is not None, target_range=target_range,
                          guide_range=guide_range)
    return pretrain([t.target.lr for t in tiles], [t.guide for t in tiles], [t.target.valid for t in tiles], s,
                    config, seed=seed, device=device, warm=warm)


def save_state(path: str, state: M.Params) -> None:
    """Write warm-start weights (a small dict of CPU tensors) for the survey's workers."""
    torch.save({k: v.detach().cpu() for k, v in state.items()}, path)


def load_state(path: str) -> M.Params:
    """Read weights written by :func:`save_state` (tensors only; no code is unpickled)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a warm-start state (expected a dict of tensors)")
    return state
