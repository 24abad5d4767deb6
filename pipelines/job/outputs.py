"""Stage 3: finished tiles -> stitched GeoTIFF -> COG -> report JSON -> quick-look PNG.

It reads the tiles from disk, not from the results it is handed (those only add timing and
reuse), so a job can be finished by any process once every tile has a result file; each is
checked before it is stitched.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from tiling import files, output
from tiling.grid import Window

from ..config import JobConfig
from .records import Job, JobOutputs, TileResult, load_job, write_json
from .registration import load_field, map_path, write_registration_map
from .tile_store import UnfinishedTiles, check_tile

GUIDE_WEIGHT_MEANING = ("share of the pixel the RGB guide was allowed to shape: 0 = the target alone "
                        "(measured detail), 1 = guide-shaped (inferred detail)")


NODATA_BLUE = (70, 110, 160)
"""Nodata in the quick-look's guide weight panel (its grey scale uses every grey)."""


def guide_weight_descriptions(descriptions: list[str]) -> list[str]:
    """Band descriptions of the guide weight bands: ``guide_weight`` for a one-band target,
    ``guide_weight:<band>`` for each band of a multi-band one."""
    if len(descriptions) == 1:
        return ["guide_weight"]
    return [f"guide_weight:{d}" for d in descriptions]


def guide_weight_summary(cog: str, n: int, descriptions: list[str]) -> list[dict]:
    """Per target band: the mean guide weight over valid pixels and the share of valid pixels
    above 0.5 (read block by block: the mosaic never exists as one array)."""
    import rasterio

    total = np.zeros(n)
    above = np.zeros(n)
    count = np.zeros(n)
    with rasterio.open(cog) as ds:
        for _, window in ds.block_windows(n + 1):
            w = ds.read(list(range(n + 1, 2 * n + 1)), window=window).astype(np.float64)
            ok = np.isfinite(w)
            total += np.where(ok, w, 0.0).sum(axis=(1, 2))
            above += (ok & (np.nan_to_num(w) > 0.5)).sum(axis=(1, 2))
            count += ok.sum(axis=(1, 2))
    return [{"band": n + 1 + b, "of": descriptions[b],
             "mean": float(total[b] / count[b]) if count[b] else None,
             "share_above_half": float(above[b] / count[b]) if count[b] else None} for b in range(n)]


def _remove_debris(job: Job) -> None:
    """Temp files a killed earlier run of this job left (``tiling.files.remove_stale_temps``:
    only our own name pattern, only when their writer is gone): beside the outputs (their names
    only: the folder is the user's), and anywhere in the work dir and its tiles (the job's own);
    also ``stitched.tif``, the scratch mosaic older versions kept under that fixed name."""
    out_dir = os.path.dirname(os.path.abspath(job.out))
    names = {os.path.basename(p) for p in (job.out, job.report_path, job.quicklook_path, map_path(job),
                                            job.model_output_path)}
    files.remove_stale_temps(out_dir, names)
    files.remove_stale_temps(job.work_dir)
    files.remove_stale_temps(os.path.join(job.work_dir, "tiles"))
    legacy = os.path.join(job.work_dir, "stitched.tif")
    try:
        if time.time() - os.stat(legacy).st_mtime > files.UNKNOWN_WRITER_MAX_AGE_S:
            os.unlink(legacy)
    except FileNotFoundError:
        pass


def _finished_tiles(job: Job, job_path: str, results: list[TileResult] | None) -> dict[int, TileResult]:
    """Every tile's checked result from disk, with this run's timing and reuse where given.

    ``results`` are what this run's tile calls returned: a finished tile not among them was
    done by an earlier run, so it counts as reused (None: nothing known, as recorded). Raises
    ``UnfinishedTiles`` (one line) naming the tiles without a usable result."""
    given = {r.index: r for r in (results or [])}
    found: dict[int, TileResult] = {}
    missing: list[int] = []
    damaged: list[str] = []
    for t in job.plan.tiles:
        check = check_tile(job, t.index)
        r = check.result
        if r is None and t.skip:  # nodata in the output whatever its record says
            r = TileResult(t.index, None, True, False, 0.0, t.valid_fraction, {})
        if r is None:
            if check.problem is not None:
                damaged.append(f"tile {t.index}: {check.problem}")
            else:
                missing.append(t.index)
            continue
        if t.index in given:
            r = TileResult(**{**r.to_dict(), "reused": given[t.index].reused, "seconds": given[t.index].seconds})
        elif results is not None and not r.skipped:
            r = TileResult(**{**r.to_dict(), "reused": True})
        found[t.index] = r
    parts = []
    if missing:
        head = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        parts.append(f"{len(missing)} tile(s) have no result yet ({head}); run them first")
    if damaged:
        head = "; ".join(damaged[:3]) + (f"; and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        parts.append(f"{len(damaged)} tile result(s) cannot be used ({head}); "
                     "run the job again to recompute them")
    if parts:
        raise UnfinishedTiles(f"job {job_path}: " + "; ".join(parts))
    return found


def finish(job_path: str, results: list[TileResult] | None = None) -> JobOutputs:
    """Stitch the tiles by windows -> COG (temp + rename) -> JSON report -> quick-look PNG, and
    (a job with a survey registration field) ``<out stem>.registration.tif``.

    Every tile's result is checked (checksum, size, layout) before anything is stitched: a tile
    damaged after its run is never in the output. Raises ``UnfinishedTiles`` naming the tiles
    without a usable result (a rerun computes them). Removes what a killed earlier finish left."""
    t0 = time.perf_counter()
    job = load_job(job_path)
    _remove_debris(job)
    all_results = _finished_tiles(job, job_path, results)

    n = len(job.target_bands)
    descriptions = [job.target.descriptions[b - 1] or f"band {b}" for b in job.target_bands]
    units = [job.target.units[b - 1] for b in job.target_bands]
    weights = job.config.write_guide_weight
    if weights:  # after the output bands, in the same order, unitless
        descriptions += guide_weight_descriptions(descriptions)
        units += [""] * n

    def load(i: int) -> np.ndarray | None:
        r = all_results[i]
        return None if r.skipped or r.path is None else np.load(r.path, mmap_mode="r")

    cfg = job.config
    with files.scratch_file(os.path.join(job.work_dir, "stitched.tif")) as stitched:
        output.create_stitch_target(stitched, job.plan.hr_grid, len(descriptions), descriptions, units)
        seams = output.stitch(job.plan, stitched, load, job.config.stitch, len(descriptions), seam_bands=n)
        t_stitch = time.perf_counter() - t0
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
        if weights:
            tags["CMSR_GUIDE_WEIGHT_BANDS"] = ",".join(str(n + 1 + b) for b in range(n))
            tags["CMSR_GUIDE_WEIGHT"] = GUIDE_WEIGHT_MEANING
        output.write_cog(stitched, job.out, tags, cfg.compress)
    t_cog = time.perf_counter() - t0 - t_stitch
    quick = None
    if cfg.quicklook:
        quick = job.quicklook_path
        write_job_quicklook(job, quick)
    report = _report(job, all_results, {"stitch": t_stitch, "cog": t_cog, "finish": time.perf_counter() - t0}, seams)
    report["guide_weight"] = guide_weight_summary(job.out, n, descriptions[:n]) if weights else None
    field = load_field(job)
    report["registration"] = None
    registration_map = None
    if field is not None:  # the survey's registration field (cmsr): its map beside the output
        registration_map = write_registration_map(job)
        report["registration"] = field["summary"]
        if field["summary"].get("warning"):
            report["warnings"].append(field["summary"]["warning"])
    model_out = write_survey_model(job)
    report["survey_model"] = survey_model_report(job, model_out)
    write_json(job.report_path, report, indent=1)
    return JobOutputs(job.out, job.report_path, quick, registration_map, model_out)


def write_survey_model(job: Job) -> str | None:
    """The job's survey model copied beside the output as ``<out stem>.model.pt`` (atomically), for
    the next flight of the same sensor pair to reuse (``--model``); None when the job used none."""
    if not job.survey_model.used:
        return None
    source = job.survey_model_path
    if not os.path.exists(source):
        raise RuntimeError(f"the survey model {source} of job {job.job_path} is missing: "
                           "run pipelines.learn_survey first")
    with files.atomic_output(job.model_output_path) as tmp:
        shutil.copyfile(source, tmp)
    return job.model_output_path


def survey_model_report(job: Job, written: str | None) -> dict:
    """The report's ``survey_model``: whether one was used and why, the file beside the output,
    the reused file, and per target band what was learned (base, sample tiles, iterations, seconds)."""
    choice = job.survey_model
    section = {"used": choice.used, "mode": choice.mode, "reason": choice.reason, "file": written,
               "reused_from": choice.reused_from, "bands": []}
    if not choice.used:
        return section
    from cmsr.survey_model import load_models

    models, info = load_models(job.survey_model_path)
    learned = info.get("bands") or [{} for _ in models]
    for b, (m, extra) in enumerate(zip(models, learned)):
        section["bands"].append({
            "band": job.target_bands[b], "base": m.base, "iterations": m.iterations,
            # the reused model's sample are tiles of the survey it was learned on
            "sample_tiles": extra.get("sample_tiles", list(m.sample)),
            "learning_seconds": None if choice.reused_from else extra.get("seconds"),
        })
    section["learned_from"] = {k: info.get(k) for k in ("plan_key", "preset", "inputs")}
    return section


def _preset_name(cfg: JobConfig) -> str:
    if cfg.method not in ("cmsr", "zssr") or cfg.tile_fn:
        return ""
    if cfg.preset:
        return cfg.preset
    from cmsr.config import DEFAULT_PRESET

    return DEFAULT_PRESET


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
    """RGB | bicubic | super-resolved (first band), decimated, one colour scale for both; then,
    when the job writes it, the first band's guide weight (grey: 0 black, 1 white).

    The RGB panel was sampled during ``prepare``'s pass over the mosaic (an orthomosaic often
    has no overviews, so a second full decode of it here would cost more than a cheap job)."""
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
    labels = ["RGB", "bicubic", job.config.tile_fn or job.config.method]
    if job.config.write_guide_weight:
        w = output.read_decimated(job.out, [len(job.target_bands) + 1], size, Resampling.average)[0]
        grey = output.to_uint8(w, 0.0, 1.0)
        panel = np.repeat(grey[..., None], 3, axis=-1)
        panel[~np.isfinite(w)] = NODATA_BLUE  # not grey: mid-grey is a weight of 0.5 here
        panels.append(panel)
        labels.append("guide weight 0 black..1 white")
    output.write_quicklook(path, panels, labels)
