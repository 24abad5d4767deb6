"""One super-resolution job, engine-agnostic: prepare -> run_tile (x N, anywhere) -> finish.

Every step takes paths and returns small JSON-able values, so ``flows`` can fan tiles out over
Dask/Prefect: a worker needs only ``job.json`` (shared storage) and a tile index. Tile results
are written atomically (temp + rename) under ``<work_dir>/tiles/`` with the plan's key, so a
restarted job does only the missing tiles.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Any

import numpy as np

from tiling import align, output, plan as tplan, rasters
from tiling.errors import InputWarning, InvalidInput
from tiling.grid import Window

from . import tilefn
from .config import JobConfig

JOB_FORMAT = 2  # 2: Job.guide (RasterInfo) replaced guide_path


def package_version() -> str:
    try:
        return metadata.version("cmsr")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Job:
    """A prepared job: inputs, grids, plan, survey statistics. Frozen; round-trips through JSON."""

    key: str  # hash of inputs (sha256) + result-relevant settings + plan geometry
    config: JobConfig
    rgb: rasters.RasterInfo
    target: rasters.RasterInfo
    out: str
    work_dir: str
    guide: rasters.RasterInfo  # the RGB itself, or its warp onto the north-up HR grid (work dir)
    guide_bands: tuple[int, ...]  # bands of ``guide`` the tiles use
    target_bands: tuple[int, ...]
    target_lr: str  # target on the LR grid (float32, NaN nodata), in the work dir
    resampling: str  # how the target got onto the LR grid: copy | average | bilinear
    plan: tplan.TilePlan
    gsd_ratio: float
    overlap: float
    target_range: tuple[tuple[float, float], ...]
    guide_range: tuple[tuple[float, float], ...]
    checksums: dict[str, str]
    warnings: tuple[str, ...] = ()
    version: str = field(default_factory=package_version)
    format: int = JOB_FORMAT

    @property
    def job_path(self) -> str:
        return os.path.join(self.work_dir, "job.json")

    @property
    def guide_path(self) -> str:
        return self.guide.path

    @property
    def scale(self) -> int:
        return self.plan.scale

    @property
    def report_path(self) -> str:
        return _sibling(self.out, ".report.json")

    @property
    def quicklook_path(self) -> str:
        return _sibling(self.out, ".quicklook.png")

    def tile_paths(self, index: int) -> tuple[str, str]:
        d = os.path.join(self.work_dir, "tiles")
        return os.path.join(d, f"{index}.npy"), os.path.join(d, f"{index}.json")

    def to_dict(self) -> dict:
        return {
            "format": self.format, "version": self.version, "key": self.key, "config": self.config.to_dict(),
            "rgb": self.rgb.to_dict(), "target": self.target.to_dict(), "out": self.out,
            "work_dir": self.work_dir, "guide": self.guide.to_dict(), "guide_bands": list(self.guide_bands),
            "target_bands": list(self.target_bands), "target_lr": self.target_lr, "resampling": self.resampling,
            "plan": self.plan.to_dict(), "gsd_ratio": self.gsd_ratio, "overlap": self.overlap,
            "target_range": [list(r) for r in self.target_range],
            "guide_range": [list(r) for r in self.guide_range], "checksums": dict(self.checksums),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        if d.get("format") != JOB_FORMAT:
            raise ValueError(f"job.json format {d.get('format')!r}: this version reads format {JOB_FORMAT}")
        return cls(
            key=d["key"], config=JobConfig.from_dict(d["config"]), rgb=rasters.RasterInfo.from_dict(d["rgb"]),
            target=rasters.RasterInfo.from_dict(d["target"]), out=d["out"], work_dir=d["work_dir"],
            guide=rasters.RasterInfo.from_dict(d["guide"]), guide_bands=tuple(d["guide_bands"]), target_bands=tuple(d["target_bands"]),
            target_lr=d["target_lr"], resampling=d["resampling"], plan=tplan.TilePlan.from_dict(d["plan"]),
            gsd_ratio=float(d["gsd_ratio"]), overlap=float(d["overlap"]),
            target_range=tuple(tuple(r) for r in d["target_range"]),  # type: ignore[misc]
            guide_range=tuple(tuple(r) for r in d["guide_range"]),  # type: ignore[misc]
            checksums=dict(d["checksums"]), warnings=tuple(d["warnings"]), version=d["version"], format=d["format"],
        )


@dataclass(frozen=True)
class TileResult:
    """What one tile's unit of work returns (small, JSON-able; never arrays)."""

    index: int
    path: str | None  # the tile's (B, h, w) float32 .npy over its read window; None when skipped
    skipped: bool
    reused: bool  # found finished on disk (resume)
    seconds: float
    valid_fraction: float
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TileResult":
        return cls(**d)


@dataclass(frozen=True)
class JobOutputs:
    cog: str
    report: str
    quicklook: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _sibling(out: str, suffix: str) -> str:
    root, ext = os.path.splitext(out)
    return (root if ext.lower() in (".tif", ".tiff") else out) + suffix


def _atomic_write_text(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_save_npy(path: str, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".npy", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# prepare


def _select_bands(info: rasters.RasterInfo, wanted: tuple[int, ...] | None, role: str, flag: str,
                  allowed: tuple[int, int]) -> tuple[int, ...]:
    bands = wanted if wanted is not None else info.color_bands
    bad = [b for b in bands if not 1 <= b <= info.count]
    if bad:
        raise InvalidInput(f"{role} file {info.path}: has {info.count} band(s); {flag} {list(bands)} is out of range")
    if not allowed[0] <= len(bands) <= allowed[1]:
        raise InvalidInput(
            f"{role} file {info.path}: has {len(bands)} usable band(s), expected {allowed[0]}..{allowed[1]} "
            f"(choose bands with {flag})"
        )
    return tuple(bands)


def prepare(rgb: str, target: str, out: str, config: JobConfig | None = None) -> Job:
    """Validate the inputs, align (scale, LR grid, target onto it once), plan the tiles, compute
    survey-level statistics, and write ``<work_dir>/job.json``. Inputs are never modified."""
    config = config or JobConfig()
    out = os.path.abspath(out)
    rgb_info = rasters.inspect(rgb, "RGB", config.assume_crs)
    tgt_info = rasters.inspect(target, "target", config.assume_crs)
    align.check_output(out, [rgb, target])
    work_dir = os.path.abspath(config.work_dir or out + ".work")
    guide_bands = _select_bands(rgb_info, config.guide_bands, "RGB", "--guide-bands", (1, 4))
    target_bands = _select_bands(tgt_info, config.target_bands, "target", "--target-bands", (1, 16))
    hr = rgb_info.grid if rgb_info.grid.is_north_up else align.north_up_grid(rgb_info.grid)
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always", InputWarning)
        overlap = align.check_overlap(hr, rgb_info.path, tgt_info)
    for w in wlist:
        caught.append(str(w.message))
        warnings.warn(str(w.message), InputWarning, stacklevel=2)
    s, ratio = align.choose_scale(rgb_info, tgt_info, config.scale)
    core_max = _core_max_scale(config)
    if core_max is not None and s > core_max:
        raise InvalidInput(
            f"target file {tgt_info.path}: scale {s} is above what method {config.method!r} supports ({core_max}); "
            "pass --scale N with a smaller N"
        )
    geometry = tplan.make_plan(hr, s, config.tile_size, config.halo)

    try:
        os.makedirs(os.path.join(work_dir, "tiles"), exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"work directory {work_dir}: cannot be created ({exc.strerror})") from None
    if not os.access(work_dir, os.W_OK):
        raise InvalidInput(f"work directory {work_dir}: is not writable")

    checksums = {rgb_info.path: rasters.sha256_file(rgb_info.path), tgt_info.path: rasters.sha256_file(tgt_info.path)}
    key_src = {
        "format": JOB_FORMAT, "version": package_version(), "inputs": [checksums[rgb_info.path], checksums[tgt_info.path]],
        "config": config.result_fields(), "guide_bands": guide_bands, "target_bands": target_bands,
        "hr": hr.to_dict(), "scale": s, "tile": geometry.tile_size, "halo": geometry.halo,
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()[:20]

    job_path = os.path.join(work_dir, "job.json")
    if not config.resume:
        _clear_tiles(work_dir)  # start over: pending() then lists every tile
    elif os.path.exists(job_path):
        try:
            old = load_job(job_path)
        except (ValueError, KeyError, json.JSONDecodeError):
            old = None
        if old is not None and old.key == key and old.out == out and os.path.exists(old.target_lr):
            # same plan: keep the LR target, the statistics and the tiles; settings that do not
            # change tile results (stitch, compress, quick-look, ...) come from this call
            if old.config == config:
                return old
            job = replace(old, config=config)
            _atomic_write_text(job_path, json.dumps(job.to_dict(), indent=1))
            return job

    guide_info, job_guide_bands = rgb_info, guide_bands
    if not rgb_info.grid.is_north_up:  # the only case the RGB is resampled: onto the HR grid
        guide_info = align.rgb_to_hr(rgb_info, guide_bands, os.path.join(work_dir, "rgb_hr.tif"))
        job_guide_bands = tuple(range(1, len(guide_bands) + 1))
        assert guide_info.grid.same_as(hr)
    target_lr = os.path.join(work_dir, "target_lr.tif")
    resampled = align.target_to_lr(tgt_info, target_bands, geometry.lr_grid, target_lr)
    try:
        stats = align.survey_stats(geometry, target_lr, guide_info, job_guide_bands, config.percentiles,
                                   preview_size=output.quicklook_size(hr))
    except InvalidInput:
        raise InvalidInput(f"target file {tgt_info.path}: all nodata over the RGB's footprint") from None
    if stats.preview is not None:
        _atomic_save_npy(os.path.join(work_dir, "preview_rgb.npy"), stats.preview)
    full_plan = geometry.with_validity(list(stats.valid_fractions), config.min_valid_fraction)
    if all(t.valid_fraction <= 0.0 for t in full_plan.tiles):
        raise InvalidInput(
            f"RGB file {rgb_info.path}: no pixel is valid in both the RGB (alpha/nodata) and the target {tgt_info.path}"
        )
    job = Job(
        key=key, config=config, rgb=rgb_info, target=tgt_info, out=out, work_dir=work_dir,
        guide=guide_info, guide_bands=job_guide_bands, target_bands=target_bands, target_lr=target_lr,
        resampling=resampled.resampling, plan=full_plan, gsd_ratio=ratio, overlap=overlap,
        target_range=stats.target_range, guide_range=stats.guide_range, checksums=checksums,
        warnings=tuple(caught),
    )
    _atomic_write_text(job_path, json.dumps(job.to_dict(), indent=1))
    return job


def _clear_tiles(work_dir: str) -> None:
    """Remove this pipeline's tile results (``<n>.npy``/``<n>.json``) from ``work_dir/tiles``."""
    d = os.path.join(work_dir, "tiles")
    for name in os.listdir(d):
        stem, _, ext = name.partition(".")
        if stem.isdigit() and ext in ("npy", "json"):
            os.unlink(os.path.join(d, name))


def _core_max_scale(config: JobConfig) -> int | None:
    """The core's largest scale when tiles go through ``cmsr.run`` (None for custom functions)."""
    if config.tile_fn is not None:
        return None
    try:
        from cmsr.api import MAX_SCALE
    except ImportError:
        return None
    return int(MAX_SCALE)


@functools.lru_cache(maxsize=8)
def _load_job_cached(path: str, mtime_ns: int, size: int) -> Job:
    with open(path) as f:
        return Job.from_dict(json.load(f))


def load_job(job_path: str) -> Job:
    """The Job in ``job_path`` (cached per process while the file is unchanged)."""
    st = os.stat(job_path)
    return _load_job_cached(os.path.abspath(job_path), st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------------------------
# tiles


def _finished(job: Job, index: int) -> TileResult | None:
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
    return [t.index for t in job.plan.tiles if not t.skip and _finished(job, t.index) is None]


@functools.lru_cache(maxsize=4)
def _lazy_cached(path: str, block_shape: tuple[int, int], mtime_ns: int, size: int):
    return rasters.open_lazy(path, block_shape)


def _lazy(path: str, block_shape: tuple[int, int]):
    """The lazily opened raster, reused across tiles in a worker while the file is unchanged
    (a re-prepared job rewrites ``target_lr.tif`` under the same name)."""
    st = os.stat(path)
    return _lazy_cached(path, tuple(block_shape), st.st_mtime_ns, st.st_size)


def _fill_invalid(guide: np.ndarray, valid: np.ndarray, guide_range) -> np.ndarray:
    """Invalid guide pixels (alpha 0 / nodata) get the tile's mean colour (mid-range if none)."""
    if valid.all():
        return guide
    g = guide.copy()
    for c in range(g.shape[0]):
        fill = g[c][valid].mean() if valid.any() else 0.5 * (guide_range[c][0] + guide_range[c][1])
        g[c][~valid] = fill
    return g


@dataclass(frozen=True)
class TileInputs:
    """What a tile function sees for one tile (all bands), read from the job's files."""

    spec: tplan.TileSpec
    lr: np.ndarray  # (B, h, w) float32 target on the LR read window, NaN nodata, mirrored past the edge
    guide: np.ndarray  # (H, W, C) float32 guide on the HR read window, invalid pixels filled
    guide_valid: np.ndarray  # (H, W) bool: RGB valid and inside the mosaic


def read_tile_inputs(job: Job, index: int) -> TileInputs:
    """Boundless reads of tile ``index``'s HR guide and LR target windows (lazy arrays, this process)."""
    spec = job.plan.tiles[index]
    gi = job.guide
    read_bands = job.guide_bands + ((gi.alpha_band,) if gi.alpha_band else ())
    graw, g_inside = rasters.read_window(_lazy(gi.path, gi.block_shape), spec.read, read_bands)
    g_valid = rasters.validity(graw, gi, read_bands) & g_inside
    guide = _fill_invalid(graw[: len(job.guide_bands)], g_valid, job.guide_range)
    lr, _ = rasters.read_window(_lazy(job.target_lr, (256, 256)), spec.lr_read,
                                tuple(range(1, len(job.target_bands) + 1)))
    return TileInputs(spec, lr, np.ascontiguousarray(np.moveaxis(guide, 0, -1)), g_valid)


def finish_tile_band(job: Job, inputs: TileInputs, band: int, result: Any) -> tuple[np.ndarray, dict]:
    """A tile function's result for one band -> (masked (H, W) float32, stats incl. consistency)."""
    spec, s = inputs.spec, job.plan.scale
    img, st = (result if isinstance(result, tuple) else (result, {}))
    img = np.asarray(img, dtype=np.float32)
    if img.shape != (spec.read.height, spec.read.width):
        raise RuntimeError(
            f"tile {spec.index}: tile function returned shape {img.shape}, expected {(spec.read.height, spec.read.width)}"
        )
    t_valid = np.isfinite(inputs.lr[band])
    hr_valid = inputs.guide_valid & np.repeat(np.repeat(t_valid, s, axis=0), s, axis=1)
    img = np.where(hr_valid, img, np.float32(np.nan))
    return img, {**_consistency(img, inputs.lr[band], spec, s), **{k: v for k, v in st.items() if _small(v)}}


def write_tile_result(job: Job, spec: tplan.TileSpec, out: np.ndarray, band_stats: list[dict],
                      seconds: float, fn_seconds: float) -> TileResult:
    """Save ``out`` (B, H, W) then its ``.json`` (the "finished" mark), each atomically."""
    npy, meta = job.tile_paths(spec.index)
    os.makedirs(os.path.dirname(npy), exist_ok=True)
    _atomic_save_npy(npy, out)
    stats = dict(band_stats[0]) if len(band_stats) == 1 else {"bands": band_stats}
    stats["fn_seconds"] = fn_seconds  # the tile function; the rest of ``seconds`` is reading/writing
    result = TileResult(spec.index, npy, False, False, seconds, spec.valid_fraction, stats)
    _atomic_write_text(meta, json.dumps({"key": job.key, "result": result.to_dict()}, default=_jsonable))
    return result


def run_tile(job_path: str, index: int, tile_fn: tilefn.TileFn | None = None) -> TileResult:
    """The unit of work: read tile ``index``'s windows, super-resolve band by band, write
    ``<work_dir>/tiles/<index>.npy`` (+ ``.json``) atomically. A finished tile is reused."""
    job = load_job(job_path)
    if not 0 <= index < len(job.plan.tiles):
        raise IndexError(f"tile {index}: the plan has {len(job.plan.tiles)} tiles")
    spec = job.plan.tiles[index]
    if job.config.resume:
        done = _finished(job, index)
        if done is not None:
            return TileResult(**{**done.to_dict(), "reused": True})
    if spec.skip:
        return _write_skipped(job, index)
    if _batched_core(job, tile_fn):
        return _run_core_batch(job, [index])[0]
    t0 = time.perf_counter()
    fn = tilefn.resolve(job.config, tile_fn)
    inputs = read_tile_inputs(job, index)
    out = np.empty((len(job.target_bands), spec.read.height, spec.read.width), dtype=np.float32)
    band_stats = []
    fn_seconds = 0.0
    for b in range(len(job.target_bands)):
        ctx = tilefn.TileContext(job.config, job.target_range[b], job.guide_range, job.config.seed + index, index, b)
        tf = time.perf_counter()
        res = fn(inputs.lr[b], inputs.guide, job.plan.scale, ctx)
        fn_seconds += time.perf_counter() - tf
        out[b], st = finish_tile_band(job, inputs, b, res)
        band_stats.append(st)
    return write_tile_result(job, spec, out, band_stats, time.perf_counter() - t0, fn_seconds)


def _small(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, (list, tuple)) and len(v) <= 64 and all(isinstance(x, (int, float, str, bool)) for x in v)
    )


def _jsonable(v: Any):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _consistency(img: np.ndarray, lr: np.ndarray, spec, s: int) -> dict[str, float]:
    """How well the tile's core keeps the LR values: mean/max |area_pool_s(HR) - LR| (valid only)."""
    r0, c0 = spec.core.row - spec.read.row, spec.core.col - spec.read.col
    h, w = spec.core.height // s * s, spec.core.width // s * s
    if h == 0 or w == 0:
        return {}
    pooled = output.area_pool(img[r0 : r0 + h, c0 : c0 + w].astype(np.float64), s)
    ref = lr[r0 // s : r0 // s + h // s, c0 // s : c0 // s + w // s]
    d = np.abs(pooled - ref)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {}
    return {"consistency_mae": float(d.mean()), "consistency_max": float(d.max())}


def _write_skipped(job: Job, index: int) -> TileResult:
    """Mark a tile below the valid-fraction threshold as done (nodata in the output)."""
    result = TileResult(index, None, True, False, 0.0, job.plan.tiles[index].valid_fraction, {})
    meta = job.tile_paths(index)[1]
    os.makedirs(os.path.dirname(meta), exist_ok=True)
    _atomic_write_text(meta, json.dumps({"key": job.key, "result": result.to_dict()}))
    return result


def _batched_core(job: Job, tile_fn: tilefn.TileFn | None) -> bool:
    """Method ``cmsr`` with the core's own tile function: trained through ``cmsr.run_many``
    (one code path whether a call brings one tile or many, warm-started or not)."""
    return tile_fn is None and not job.config.tile_fn and job.config.method == "cmsr"


def warm_start_paths(job: Job) -> list[str]:
    """One warm-start weight file per target band (bands differ in what they relate to the RGB),
    named by the plan key so weights from other inputs or settings in the same work dir are never reused."""
    return [os.path.join(job.work_dir, f"warm_start_{job.key[:16]}_band{b + 1}.pt") for b in range(len(job.target_bands))]


def pretrain_survey(job_path: str, candidates: int = 16) -> list[str]:
    """Survey warm start: train the networks on representative tiles once -> weight files.

    Candidates are up to ``candidates`` processed tiles spread evenly over the plan (reading
    every tile would cost a pass over the mosaic); ``cmsr.warm_start`` picks the representatives
    among them by texture. Files are written atomically and reused on resume. Returns [] when
    the job does not warm-start.
    """
    job = load_job(job_path)
    if not (job.config.warm_start and _batched_core(job, None)):
        return []
    paths = warm_start_paths(job)
    if job.config.resume and all(os.path.exists(p) for p in paths):
        return paths
    from cmsr import warm_start

    active = [t.index for t in job.plan.tiles if not t.skip]
    if not active:
        return []
    picks = sorted({active[int(round(q))] for q in np.linspace(0, len(active) - 1, min(candidates, len(active)))})
    inputs = [read_tile_inputs(job, i) for i in picks]
    cfg = tilefn.cmsr_config(job.config)
    guide_range = np.asarray(job.guide_range, dtype=np.float64)
    for b, path in enumerate(paths):
        state = warm_start.pretrain_arrays(
            [inp.lr[b] for inp in inputs], [inp.guide for inp in inputs], job.plan.scale, cfg,
            seed=job.config.seed, device=job.config.device, target_range=job.target_range[b], guide_range=guide_range,
        )
        tmp = f"{path}.{os.getpid()}.tmp"
        warm_start.save_state(tmp, state)
        os.replace(tmp, path)
    return paths


def _run_core_batch(job: Job, indices: list[int]) -> list[TileResult]:
    """Tiles ``indices`` (none reused or skipped) trained together with ``cmsr.run_many``.

    Seeds are ``seed + index`` as in ``run_tile``; batched training equals one-at-a-time training
    within float tolerance (tests/test_train.py, batch invariance). With a warm start each tile starts from the
    survey's weights with the fine-tune budget, its warp from the identity.
    """
    import cmsr
    from cmsr import warm_start

    cfg = tilefn.cmsr_config(job.config)
    states: list[Any] = [None] * len(job.target_bands)
    if job.config.warm_start:
        paths = warm_start_paths(job)
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise RuntimeError(f"warm start weights {missing[0]} are missing: run pipelines.pretrain_survey first")
        states = [warm_start.load_state(p) for p in paths]
        cfg = warm_start.finetune_config(cfg)
    guide_range = np.asarray(job.guide_range, dtype=np.float64)
    t0 = time.perf_counter()
    inputs = [read_tile_inputs(job, i) for i in indices]
    outs = [np.empty((len(job.target_bands), inp.spec.read.height, inp.spec.read.width), np.float32) for inp in inputs]
    band_stats: list[list[dict]] = [[] for _ in indices]
    fn_seconds = 0.0
    for b in range(len(job.target_bands)):
        tf = time.perf_counter()
        res = cmsr.run_many(
            [inp.lr[b] for inp in inputs], [inp.guide for inp in inputs], job.plan.scale, cfg,
            seeds=[job.config.seed + i for i in indices], device=job.config.device,
            target_range=job.target_range[b], guide_range=guide_range, init_state=states[b],
        )
        fn_seconds += time.perf_counter() - tf
        for k, (inp, r) in enumerate(zip(inputs, res)):
            outs[k][b], st = finish_tile_band(job, inp, b, (r.image, dict(r.stats)))
            band_stats[k].append(st)
    share = (time.perf_counter() - t0) / len(indices)
    return [write_tile_result(job, inp.spec, out, st, share, fn_seconds / len(indices))
            for inp, out, st in zip(inputs, outs, band_stats)]


def _batch_size(job: Job) -> int:
    if job.config.batch_tiles:
        return job.config.batch_tiles
    import cmsr

    spec = job.plan.tiles[0]
    return cmsr.choose_batch_size((spec.read.height, spec.read.width), tilefn.cmsr_config(job.config),
                                     job.config.device, guide_channels=len(job.guide_bands), scale=job.plan.scale)


def run_tiles(job_path: str, indices: list[int], tile_fn: tilefn.TileFn | None = None) -> list[TileResult]:
    """A batch of (neighbouring) tiles in one call: for method ``cmsr`` trained together
    (``batch_tiles`` at a time, one batched computation per chunk); other methods tile by tile."""
    job = load_job(job_path)
    if not _batched_core(job, tile_fn):
        return [run_tile(job_path, int(i), tile_fn) for i in indices]
    results: dict[int, TileResult] = {}
    todo: list[int] = []
    for i in map(int, indices):
        if not 0 <= i < len(job.plan.tiles):
            raise IndexError(f"tile {i}: the plan has {len(job.plan.tiles)} tiles")
        done = _finished(job, i) if job.config.resume else None
        if done is not None:
            results[i] = TileResult(**{**done.to_dict(), "reused": True})
        elif job.plan.tiles[i].skip:
            results[i] = _write_skipped(job, i)
        else:
            todo.append(i)
    size = _batch_size(job) if len(todo) > 1 else 1
    for start in range(0, len(todo), size):
        chunk = todo[start : start + size]
        results.update(zip(chunk, _run_core_batch(job, chunk)))
    return [results[int(i)] for i in indices]


# --------------------------------------------------------------------------------------------
# finish


def finish(job_path: str, results: list[TileResult] | None = None) -> JobOutputs:
    """Stitch the tiles by windows -> COG (temp + rename) -> JSON report -> quick-look PNG."""
    t0 = time.perf_counter()
    job = load_job(job_path)
    given = {r.index: r for r in (results or [])}
    all_results: dict[int, TileResult] = {}
    missing = []
    for t in job.plan.tiles:
        r = _finished(job, t.index)
        if r is None and t.skip:
            r = TileResult(t.index, None, True, False, 0.0, t.valid_fraction, {})
        if r is None:
            missing.append(t.index)
            continue
        if t.index in given:
            r = TileResult(**{**r.to_dict(), "reused": given[t.index].reused, "seconds": given[t.index].seconds})
        all_results[t.index] = r
    if missing:
        head = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise RuntimeError(f"job {job_path}: {len(missing)} tile(s) have no result yet ({head}); run them first")

    n = len(job.target_bands)
    descriptions = [job.target.descriptions[b - 1] or f"band {b}" for b in job.target_bands]
    units = [job.target.units[b - 1] for b in job.target_bands]
    stitched = os.path.join(job.work_dir, "stitched.tif")
    output.create_stitch_target(stitched, job.plan.hr_grid, n, descriptions, units)

    def load(i: int) -> np.ndarray | None:
        r = all_results[i]
        return None if r.skipped or r.path is None else np.load(r.path, mmap_mode="r")

    seams = output.stitch(job.plan, stitched, load, job.config.stitch, n)
    t_stitch = time.perf_counter() - t0
    cfg = job.config
    tags = {
        "CMSR_VERSION": job.version, "CMSR_METHOD": cfg.tile_fn or cfg.method,
        "CMSR_PRESET": _preset_name(cfg), "CMSR_SCALE": job.scale, "CMSR_TILE_SIZE": job.plan.tile_size,
        "CMSR_HALO": job.plan.halo, "CMSR_STITCH": cfg.stitch, "CMSR_SEED": cfg.seed,
        "CMSR_DEGRADATION": cfg.degradation, "CMSR_INPUT_RGB": os.path.basename(job.rgb.path),
        "CMSR_INPUT_RGB_SHA256": job.checksums[job.rgb.path],
        "CMSR_INPUT_TARGET": os.path.basename(job.target.path),
        "CMSR_INPUT_TARGET_SHA256": job.checksums[job.target.path],
        "CMSR_TARGET_RESAMPLING": job.resampling, "CMSR_PLAN_KEY": job.key,
    }
    output.write_cog(stitched, job.out, tags, cfg.compress)
    os.unlink(stitched)
    t_cog = time.perf_counter() - t0 - t_stitch
    quick = None
    if cfg.quicklook:
        quick = job.quicklook_path
        write_job_quicklook(job, quick)
    report = _report(job, all_results, {"stitch": t_stitch, "cog": t_cog, "finish": time.perf_counter() - t0}, seams)
    _atomic_write_text(job.report_path, json.dumps(report, indent=1, default=_jsonable))
    return JobOutputs(job.out, job.report_path, quick)


def _preset_name(cfg: JobConfig) -> str:
    if cfg.method not in ("cmsr", "zssr") or cfg.tile_fn:
        return ""
    if cfg.preset:
        return cfg.preset
    try:
        from cmsr.config import DEFAULT_PRESET

        return DEFAULT_PRESET
    except ImportError:
        return "default"


def _report(job: Job, results: dict[int, TileResult], phase_seconds: dict[str, float],
            seams: dict[str, float | None]) -> dict:
    rs = [results[i] for i in sorted(results)]
    done = [r for r in rs if not r.skipped]
    cons = [r.stats.get("consistency_max") for r in done if "consistency_max" in r.stats]
    cmae = [r.stats.get("consistency_mae") for r in done if "consistency_mae" in r.stats]
    return {
        "output": job.out, "quicklook": job.quicklook_path if job.config.quicklook else None,
        "inputs": {"rgb": job.rgb.path, "target": job.target.path, "sha256": job.checksums},
        "version": job.version, "config": job.config.to_dict(), "plan_key": job.key,
        "grids": {"hr": job.plan.hr_grid.to_dict(), "lr": job.plan.lr_grid.to_dict()},
        "scale": job.scale, "gsd_ratio": job.gsd_ratio, "overlap": job.overlap, "target_resampling": job.resampling,
        "tile_size": job.plan.tile_size, "halo": job.plan.halo,
        "target_range": job.target_range, "guide_range": job.guide_range, "warnings": list(job.warnings),
        "totals": {
            "tiles": len(rs), "processed": len(done), "skipped": len(rs) - len(done),
            "reused": sum(r.reused for r in done), "tile_seconds": float(sum(r.seconds for r in done)),
            "finish_seconds": phase_seconds["finish"], "stitch_seconds": phase_seconds["stitch"],
            "cog_seconds": phase_seconds["cog"],
            "tile_function_seconds": float(sum(r.stats.get("fn_seconds", 0.0) for r in done)),
            "consistency_max": max(cons) if cons else None,
            "consistency_mae": float(np.mean(cmae)) if cmae else None,
            **seams,
        },
        "tiles": [r.to_dict() for r in rs],
    }


def write_job_quicklook(job: Job, path: str) -> None:
    """RGB | bicubic | super-resolved (first band), decimated, one colour scale for both.

    The RGB panel was sampled during ``prepare``'s pass over the mosaic (an orthomosaic often
    has no overviews, and a second full decode of it cost more than the whole bicubic job)."""
    from rasterio.enums import Resampling

    hr = job.plan.hr_grid
    size = output.quicklook_size(hr)
    preview = os.path.join(job.work_dir, "preview_rgb.npy")
    if os.path.exists(preview):
        g = np.load(preview)[:3]
    else:
        g = output.read_decimated(job.guide_path, list(job.guide_bands[:3]), size, Resampling.average)
    rgb = np.stack(
        [output.to_uint8(g[i], *job.guide_range[i]) for i in range(g.shape[0])], axis=-1
    )
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    rgb[~np.all(np.isfinite(g), axis=0)] = 128  # RGB nodata grey, as in the other panels
    s = job.scale
    # the LR target over exactly the HR extent: fractional LR pixels at the end are whole ones
    lr_win = Window(0, 0, output.ceil_div(hr.height, s), output.ceil_div(hr.width, s))
    bic = output.read_decimated(job.target_lr, [1], size, Resampling.cubic, window=lr_win)[0]
    sr = output.read_decimated(job.out, [1], size, Resampling.average)[0]
    lo, hi = job.target_range[0]
    panels = [
        rgb,
        output.colorize(output.to_uint8(bic, lo, hi), ~np.isfinite(bic)),
        output.colorize(output.to_uint8(sr, lo, hi), ~np.isfinite(sr)),
    ]
    output.write_quicklook(path, panels, ["RGB", "bicubic", job.config.tile_fn or job.config.method])


# --------------------------------------------------------------------------------------------


def superresolve(rgb: str, target: str, out: str, config: JobConfig | None = None,
                 tile_fn: tilefn.TileFn | None = None) -> JobOutputs:
    """The whole job in this process, tile after tile (``flows`` distributes the same steps)."""
    job = prepare(rgb, target, out, config)
    pretrain_survey(job.job_path)
    results = run_tiles(job.job_path, [t.index for t in job.plan.tiles if not t.skip], tile_fn)
    return finish(job.job_path, results)


__all__ = [
    "Job", "JobConfig", "JobOutputs", "TileResult", "prepare", "load_job", "run_tile", "run_tiles",
    "pending", "pretrain_survey", "warm_start_paths", "finish", "superresolve",
]
