"""Tile results on disk: ``<work_dir>/tiles/<i>.npy`` (the tile's bands, then their guide weights
when the job writes them) + ``<i>.json`` (the mark).

The ``.json`` is written last and names the plan key and the ``.npy``'s size, shape, dtype and
sha256, so it alone says "tile i of this plan is finished" and whether its pixels are the ones
that were computed: a killed worker leaves no mark (its tile runs again), results of another plan
in the same work dir are never taken for this one's, and a damaged, truncated or replaced
``.npy`` (or a mangled ``.json``) is never stitched. This is what resume, ``pending`` and
``finish`` read. Paths in the ``.json`` are relative to the work dir, so a moved work dir is
read where it is now.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiling.files import atomic_output
from tiling.plan import TileSpec

from .records import Job, TileResult, load_job, write_json

TILE_DTYPE = np.dtype("<f4")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TileRecomputed(UserWarning):
    """A tile had a result on disk that cannot be trusted (damaged, truncated, unreadable, or from
    an older version without a checksum); it is computed again. The message names the tile and why."""


class UnfinishedTiles(RuntimeError):
    """``finish`` found tiles without a usable result; running the job again computes them."""


@dataclass(frozen=True)
class TileCheck:
    """What is on disk for one tile: its finished ``result``, or why there is none (``problem``
    is None when there is simply no result of this plan yet: nothing to report)."""

    result: TileResult | None
    problem: str | None = None


def _rel(job: Job, path: str) -> str:
    return os.path.relpath(path, job.work_dir).replace(os.sep, "/")


def tile_planes(job: Job) -> int:
    """Planes of a tile's ``.npy``: one per target band, then (``write_guide_weight``) one guide
    weight per target band, in the same order."""
    n = len(job.target_bands)
    return 2 * n if job.config.write_guide_weight else n


def _expected_shape(job: Job, spec: TileSpec) -> tuple[int, int, int]:
    return (tile_planes(job), spec.read.height, spec.read.width)


def _result_of(d: Any, index: int) -> TileResult | None:
    """``d`` as a TileResult of tile ``index`` if it has exactly the fields and types one has."""
    fields = {"index", "path", "skipped", "reused", "seconds", "valid_fraction", "stats"}
    if not isinstance(d, dict) or set(d) != fields:
        return None
    num = (int, float)
    ok = (type(d["index"]) is int and d["index"] == index and isinstance(d["skipped"], bool)
          and isinstance(d["reused"], bool) and isinstance(d["seconds"], num) and not isinstance(d["seconds"], bool)
          and isinstance(d["valid_fraction"], num) and not isinstance(d["valid_fraction"], bool)
          and isinstance(d["stats"], dict) and (d["path"] is None or isinstance(d["path"], str)))
    return TileResult.from_dict(d) if ok else None


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """(shape, fortran_order, dtype, data offset) of ``.npy`` bytes, or None if not an .npy."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(f)
    except (ValueError, KeyError, SyntaxError, EOFError):
        return None
    return tuple(shape), bool(fortran), dtype, f.tell()


def _check_npy(job: Job, spec: TileSpec, rel: str, rec: Any) -> str | None:
    """Why the ``.npy`` at ``rel`` is not the one ``rec`` describes (None: it is). Reads it once."""
    if not (isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and _SHA256.fullmatch(rec["sha256"])
            and type(rec.get("bytes")) is int and isinstance(rec.get("shape"), list)
            and rec.get("dtype") == TILE_DTYPE.str):
        return "result from an older version or its record damaged (no valid checksum)"
    if os.path.isabs(rel) or rel != _rel(job, job.tile_paths(spec.index)[0]):
        return f"result record names another file ({rel})"
    path = os.path.join(job.work_dir, rel)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return f"result file {rel} is missing"
    except OSError as exc:
        return f"result file {rel} unreadable ({exc.strerror or exc})"
    if len(data) != rec["bytes"]:
        return f"result damaged (file is {len(data)} bytes, {rec['bytes']} were written)"
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        return "result damaged (checksum mismatch)"
    header = _npy_header(data)
    want = _expected_shape(job, spec)
    if header is None or header[1] or header[2] != TILE_DTYPE or header[0] != want or list(want) != rec["shape"]:
        return f"result has the wrong layout (expected float32 {want})"
    return None


def check_tile(job: Job, index: int) -> TileCheck:
    """Tile ``index``'s finished result of this plan, or why it has none (see ``TileCheck``)."""
    npy, meta = job.tile_paths(index)
    spec = job.plan.tiles[index]
    try:
        with open(meta) as f:
            d = json.load(f)
    except FileNotFoundError:
        return TileCheck(None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return TileCheck(None, f"result record unreadable ({type(exc).__name__})")
    if not isinstance(d, dict) or not isinstance(d.get("key"), str):
        return TileCheck(None, "result record damaged (not a tile record)")
    if d["key"] != job.key:
        return TileCheck(None)  # another plan's result: this plan has none yet
    r = _result_of(d.get("result"), index)
    if r is None or r.skipped != spec.skip or (r.path is None) != r.skipped:
        return TileCheck(None, "result record damaged (not a tile record)")
    if r.skipped:
        return TileCheck(r)
    problem = _check_npy(job, spec, r.path, d.get("npy"))
    if problem is not None:
        return TileCheck(None, problem)
    return TileCheck(TileResult(**{**r.to_dict(), "path": npy}))


def finished(job: Job, index: int) -> TileResult | None:
    """Tile ``index``'s result of this plan, or None when it has none (or one that cannot be trusted)."""
    return check_tile(job, index).result


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
    """Save ``out`` (B, H, W), then its ``.json`` (the "finished" mark, with the ``.npy``'s
    checksum), each atomically. The bytes are made in memory, hashed and written once."""
    npy, meta = job.tile_paths(spec.index)
    os.makedirs(os.path.dirname(npy), exist_ok=True)
    arr = np.ascontiguousarray(out, dtype=TILE_DTYPE)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    with atomic_output(npy) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    stats = dict(band_stats[0]) if len(band_stats) == 1 else {"bands": band_stats}
    stats["fn_seconds"] = fn_seconds  # the tile function; the rest of ``seconds`` is reading/writing
    result = TileResult(spec.index, npy, False, False, seconds, spec.valid_fraction, stats)
    record = {"key": job.key, "result": {**result.to_dict(), "path": _rel(job, npy)},
              "npy": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "shape": list(arr.shape),
                      "dtype": TILE_DTYPE.str}}
    write_json(meta, record)
    return result


REGISTRATION_DIR = "registration"
"""Work dir folder of the survey registration stage (``registration``): per-tile estimates + the field."""


def clear_registration(work_dir: str) -> None:
    """Remove the survey registration stage's files (``<i>.json``, ``field.json``; start over),
    leaving anything else alone."""
    d = os.path.join(work_dir, REGISTRATION_DIR)
    if not os.path.isdir(d):
        return
    for name in os.listdir(d):
        stem, _, ext = name.partition(".")
        if ext == "json" and (stem.isdigit() or stem == "field"):
            os.unlink(os.path.join(d, name))


def clear_tiles(work_dir: str) -> None:
    """Remove this pipeline's tile results (``<n>.npy``/``<n>.json``) from ``work_dir/tiles``
    (start over), leaving anything else there alone."""
    d = os.path.join(work_dir, "tiles")
    for name in os.listdir(d):
        stem, _, ext = name.partition(".")
        if stem.isdigit() and ext in ("npy", "json"):
            os.unlink(os.path.join(d, name))
