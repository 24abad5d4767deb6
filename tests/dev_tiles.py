"""Real thermal/RGB crops from the dev pairs, normalised as the API does (for the trainer's tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def dev_tiles(shared_data: Path, n: int, side: int = 16, scale: int = 4) -> tuple[list, list, list]:
    """``n`` (lr, guide, valid) crops of different ULB17-VT pairs; the second has a nodata corner."""
    from PIL import Image

    folder = shared_data / "pairs" / "ulb17vt_thermal_x4"
    names = sorted(p.name[:-7] for p in folder.glob("*_lr.png"))[:n]
    lrs, guides, valids = [], [], []
    for i, name in enumerate(names):
        lr = np.asarray(Image.open(folder / f"{name}_lr.png").convert("L"), np.float32) / 255.0
        g = np.asarray(Image.open(folder / f"{name}_guide.png").convert("RGB"), np.float32) / 255.0
        y0, x0 = 10 + 3 * i, 20 + 5 * i
        lrs.append(torch.from_numpy(lr[y0:y0 + side, x0:x0 + side].copy()))
        guides.append(torch.from_numpy(g[scale * y0:scale * (y0 + side), scale * x0:scale * (x0 + side)]
                                       .transpose(2, 0, 1).copy()))
        valid = torch.ones(side, side, dtype=torch.bool)
        if i == 1:
            valid[:5, :7] = False
        valids.append(valid)
    return lrs, guides, valids
