"""Tile results on disk: ``<work_dir>/tiles/<i>.npy`` (the tile's bands) + ``<i>.json`` (the mark).

The ``.json`` is written last and names the plan key, so it alone says "tile i of this plan is
finished": a killed worker leaves no mark (its tile runs again), and results of another plan in
the same work dir are never taken for this one's. This is what resume and ``pending`` read.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tiling.plan import TileSpec

from .records import Job, TileResult, load_job, save_npy, write_json


def finished(job: Job, index: int) -> TileResult | None:
    """Tile ``index``'s result of this plan, or None when it has none (or a broken one)."""
    npy, meta = job.tile_paths(index)
    if not os.path.exists(meta):
        return None
    try:
        with open(meta) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if d.get("key") != job.key:
        return None
    r = TileResult.from_dict(d["result"])
    if not r.skipped and not os.path.exists(npy):
        return None
    return r


def pending(job: Job | str) -> list[int]:
    """Indexes of tiles still to run (not skipped and without a finished result of this plan)."""
    job = load_job(job) if isinstance(job, str) else job
    return [t.index for t in job.plan.tiles if not t.skip and finished(job, t.index) is None]


def reused(result: TileResult) -> TileResult:
    """A finished result as a call that found it on disk reports it."""
    return TileResult(**{**result.to_dict(), "reused": True})


def write_skipped(job: Job, index: int) -> TileResult:
    """Mark a tile below the valid-fraction threshold as done (nodata in the output)."""
    result = TileResult(index, None, True, False, 0.0, job.plan.tiles[index].valid_fraction, {})
    meta = job.tile_paths(index)[1]
    os.makedirs(os.path.dirname(meta), exist_ok=True)
    write_json(meta, {"key": job.key, "result": result.to_dict()})
    return result


def write_tile_result(job: Job, spec: TileSpec, out: np.ndarray, band_stats: list[dict],
                      seconds: float, fn_seconds: float) -> TileResult:
    """Save ``out`` (B, H, W), then its ``.json`` (the "finished" mark), each atomically."""
    npy, meta = job.tile_paths(spec.index)
    os.makedirs(os.path.dirname(npy), exist_ok=True)
    save_npy(npy, out)
    stats = dict(band_stats[0]) if len(band_stats) == 1 else {"bands": band_stats}
    stats["fn_seconds"] = fn_seconds  # the tile function; the rest of ``seconds`` is reading/writing
    result = TileResult(spec.index, npy, False, False, seconds, spec.valid_fraction, stats)
    write_json(meta, {"key": job.key, "result": result.to_dict()})
    return result


def clear_tiles(work_dir: str) -> None:
    """Remove this pipeline's tile results (``<n>.npy``/``<n>.json``) from ``work_dir/tiles``
    (start over), leaving anything else there alone."""
    d = os.path.join(work_dir, "tiles")
    for name in os.listdir(d):
        stem, _, ext = name.partition(".")
        if stem.isdigit() and ext in ("npy", "json"):
            os.unlink(os.path.join(d, name))
