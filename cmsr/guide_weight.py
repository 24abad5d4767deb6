"""Where the guide was allowed to shape the output: the ``guide_weight`` map of one tile.

Why: a super-resolved thermal map mixes measured detail (the target's own, up to the LR's
resolution) with detail inferred from the RGB. The weight says, per output pixel, how much of
the guide-dependent part of the output was let through: 0 = the target alone (bicubic /
back-projection / the network without its guide branch), 1 = the guide shaped this pixel fully.
It is what the gates decided, not how large the guide's change turned out to be: a pixel with
weight 1 over a flat guide may look the same as without the guide.

Per method (the same gates that made the output, on the HR output grid, in [0, 1]):

* ``bicubic``, ``bp``, ``zssr``: 0 everywhere (no guide is read).
* ``guided``: the filter's own gate (``GuidedFilterParams.gate``; its output is
  ``plain + w * (filtered - plain)``), or 1 everywhere when ungated.
* ``cmsr`` with a guide gate (``best``/``fast``): the final stage's output is
  ``BP(reference + c * (y - reference))``, where ``reference`` is the network without F_g on the
  back-projected base (no guide anywhere) and ``y`` is the full network (F_g on the deformed guide,
  over the tile's chosen base, guided or not). So the guide's share is exactly ``c``. The guided
  base's own gate does not enter: it only decides how much of ``y``'s *base* came from the guide,
  but F_g acts on every pixel of ``y``, and both of ``y``'s guide paths pass through ``c`` alike;
  combining the two (``max`` or ``1-(1-c)(1-b)``) would report guide influence where ``c = 0``
  left the output guide-free. Earlier stages only feed training (extra father sources), not this
  stage's output, so the final stage's ``c`` is the whole answer.
* ``cmsr`` without a gate (``paper``): 1 everywhere the guide branch exists (the paper adds
  F_g(guide) to every pixel).
"""

from __future__ import annotations

import torch

from . import model as M
from .baselines import guide_confidence
from .config import CMSRConfig, GuidedFilterParams


def guided_filter_weight(lr: torch.Tensor, guide: torch.Tensor, scale: int,
                         params: GuidedFilterParams) -> torch.Tensor:
    """(scale*h, scale*w) weight of ``guided_filter_upsample(lr, guide, scale, params)``."""
    if params.gate is None:
        return torch.ones((lr.shape[-2] * scale, lr.shape[-1] * scale), dtype=lr.dtype, device=lr.device)
    return guide_confidence(lr, guide, scale, params.gate)


def no_guide_weight(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """(scale*h, scale*w) zeros: a method that never read the guide."""
    return torch.zeros((lr.shape[-2] * scale, lr.shape[-1] * scale), dtype=lr.dtype, device=lr.device)


@torch.no_grad()
def stage_guide_weight(weights: M.Params, lr: torch.Tensor, stage_guide: torch.Tensor | None, factor: int,
                       config: CMSRConfig) -> torch.Tensor:
    """(factor*h, factor*w) weight of ``cmsr.infer.infer_stage`` with the same arguments.

    ``stage_guide``: the deformed guide on the stage grid (``TileGuide.stage_grid(factor)``), or
    None for a tile without a guide. Mirrors ``infer_stage``'s branches one for one."""
    if stage_guide is None or not M.has_guide_branch(weights):
        return no_guide_weight(lr, factor)
    if config.guide_gate is None:
        return torch.ones((lr.shape[-2] * factor, lr.shape[-1] * factor), dtype=lr.dtype, device=lr.device)
    return guide_confidence(lr, stage_guide, factor, config.guide_gate)
