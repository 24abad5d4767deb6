"""``cmsr plan``: the dry run (grids, scale, tiles, valid fraction, estimated time); writes nothing."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from . import options
from .app import app
from .exit_codes import exit_codes
from .job import job_config

#: Rough single-core seconds per active 512 px tile, by method (``plan``'s estimate; ``plan
#: --probe`` measures one real tile instead).
TILE_SECONDS_ESTIMATE = {"bicubic": 0.2, "bp": 0.5, "guided": 1.0, "zssr": 60.0, "cmsr": 120.0}


@app.command(epilog="""[bold]Examples[/bold]

  cmsr plan ortho_rgb.tif thermal.tif

  cmsr plan rgb.tif thermal.tif --tile-size 256 --workers 8 --json

  cmsr plan multispectral.tif thermal.tif --guide-bands 3,2,1

  cmsr plan rgb.tif thermal.tif --method cmsr --preset fast --probe
""")
def plan(
    rgb: Path = options.RGB, target: Path = options.TARGET, scale: str = options.scale_option(),
    method: str = options.method_option(), preset: Optional[str] = options.preset_option(), tile_size: int = options.TILE_SIZE,
    halo: int = options.HALO, workers: Optional[int] = options.WORKERS, assume_crs: Optional[str] = options.ASSUME_CRS,
    min_valid: float = options.MIN_VALID, guide_bands: Optional[str] = options.GUIDE_BANDS,
    target_bands: Optional[str] = options.TARGET_BANDS, target_nodata: Optional[float] = options.TARGET_NODATA,
    rgb_nodata: Optional[float] = options.RGB_NODATA,
    survey_model: Optional[bool] = options.SURVEY_MODEL, model: Optional[Path] = options.MODEL,
    old_survey_model_flag: bool = options.WARM_START,
    probe: bool = typer.Option(False, "--probe", help="Time one real tile here instead of using the rough table."),
    as_json: bool = options.JSON, verbose: bool = options.VERBOSE,
) -> None:
    """Dry run: grids, scale, tile count, valid fraction and an estimated time. Writes nothing."""
    import tempfile

    with exit_codes(verbose):
        import pipelines

        from ..cluster import auto_workers

        options.workers_check(workers)
        config = job_config(scale=scale, method=method, preset=preset, tile_size=tile_size, halo=halo,
                            assume_crs=assume_crs, min_valid=min_valid, guide_bands=guide_bands,
                            target_bands=target_bands, target_nodata=target_nodata, rgb_nodata=rgb_nodata,
                            survey_model=options.survey_model_choice(survey_model, old_survey_model_flag), model=model)
        with tempfile.TemporaryDirectory(prefix="cmsr-plan-") as tmp:
            config = config.replace(work_dir=tmp, quicklook=False)
            job = pipelines.prepare(str(rgb), str(target), os.path.join(tmp, "plan.tif"), config)
            tiles = job.plan.tiles
            active = [t for t in tiles if not t.skip]
            n_workers = workers or auto_workers(len(active))
            learns = job.survey_model.used and job.survey_model.reused_from is None
            learn_seconds = 0.0
            if probe and active:
                best = max(active, key=lambda t: t.valid_fraction)
                t0 = time.perf_counter()  # its guide registration (cmsr) is part of a tile's cost
                pipelines.register_survey(job.job_path, [best.index])
                per_tile = time.perf_counter() - t0
                if learns:  # learned for real (once per survey), from its sample tiles registered
                    from pipelines.job.survey_learning import pick_tiles

                    t1 = time.perf_counter()
                    pipelines.register_survey(job.job_path, [i for i in pick_tiles(job) if i != best.index])
                    pipelines.learn_survey(job.job_path)
                    learn_seconds = time.perf_counter() - t1
                per_tile += pipelines.run_tile(job.job_path, best.index).seconds
                source = f"measured on tile {best.index}"
            else:
                side = job.plan.tile_size + 2 * job.plan.halo
                per_tile = TILE_SECONDS_ESTIMATE.get(method, 60.0) * side * side / 576**2
                if job.survey_model.used:
                    per_tile, learn_seconds = _survey_model_estimate(job, per_tile, learns)
                source = "rough table (use --probe to measure)"
        hr, lr = job.plan.hr_grid, job.plan.lr_grid
        valid = [t.valid_fraction for t in tiles]
        info = {
            "rgb": str(rgb), "target": str(target),
            "hr_grid": {"shape": [hr.height, hr.width], "resolution": _resolution(hr), "crs": hr.crs},
            "lr_grid": {"shape": [lr.height, lr.width], "resolution": _resolution(lr), "crs": lr.crs},
            "scale": job.scale, "gsd_ratio": round(job.gsd_ratio, 3), "overlap": round(job.overlap, 3),
            "target_resampling": job.resampling, "tile_size": job.plan.tile_size, "halo": job.plan.halo,
            # bands of the input files (job.guide_bands count those of a warped copy of a rotated RGB)
            "guide_bands": list(config.guide_bands or job.rgb.color_bands), "target_bands": list(job.target_bands),
            "tiles": len(tiles), "active_tiles": len(active), "skipped_tiles": len(tiles) - len(active),
            "valid_fraction": round(sum(valid) / len(valid), 4) if valid else 0.0,
            "method": method, "workers": n_workers, "seconds_per_tile": round(per_tile, 2),
            "estimate_source": source,
            "estimated_seconds": round(learn_seconds + math.ceil(len(active) / n_workers) * per_tile, 1),
            "survey_model": {k: v for k, v in job.survey_model.to_dict().items() if k != "sha256"},
            "survey_model_seconds": round(learn_seconds, 1),
            "warnings": list(job.warnings),
        }
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    _print_plan(info)


def _print_plan(info: dict[str, Any]) -> None:
    hr, lr = info["hr_grid"], info["lr_grid"]
    typer.echo(f"HR grid (output): {hr['shape'][0]} x {hr['shape'][1]} px, {hr['resolution']} m, {hr['crs']}")
    typer.echo(f"LR grid (target): {lr['shape'][0]} x {lr['shape'][1]} px, {lr['resolution']} m "
               f"(target {info['target_resampling']})")
    typer.echo(f"scale x{info['scale']} (pixel size ratio {info['gsd_ratio']}), overlap {info['overlap']:.0%}")
    typer.echo(f"bands: guide {','.join(map(str, info['guide_bands']))} of the RGB, "
               f"target {','.join(map(str, info['target_bands']))}")
    typer.echo(f"tiles: {info['tiles']} of {info['tile_size']} px + {info['halo']} px halo; "
               f"{info['active_tiles']} to process, {info['skipped_tiles']} skipped; "
               f"mean valid fraction {info['valid_fraction']:.2f}")
    sm = info["survey_model"]
    if sm["used"]:
        how = f"reused from {sm['reused_from']}" if sm["reused_from"] else (
            f"learned once (~{_duration(info['survey_model_seconds'])}) from tiles across the survey")
        typer.echo(f"survey model: on ({sm['reason']}); {how}, each tile fine-tunes from it")
    else:
        typer.echo(f"survey model: off ({sm['reason']})")
    typer.echo(f"estimate: ~{_duration(info['estimated_seconds'])} with {info['workers']} worker(s), "
               f"~{info['seconds_per_tile']:.1f} s/tile ({info['estimate_source']})")
    # the job's warnings were printed as prepare raised them (``exit_codes``: one line each)


def _survey_model_estimate(job: Any, per_tile: float, learns: bool) -> tuple[float, float]:
    """(seconds per tile, seconds of learning) from the table's per-tile seconds of a full
    training: a tile fine-tunes ``finetune_iters`` of the preset's ``max_iters``; learning takes
    ``iterations_per_stage`` (default two tiles' worth)."""
    from pipelines import tilefn

    cfg = tilefn.cmsr_config(job.config)
    learning = tilefn.survey_learning(job.config)
    tile = per_tile * min(1.0, learning.finetune_iters / max(1, cfg.max_iters))
    learn = per_tile * (learning.iterations_per_stage or 2 * cfg.max_iters) / max(1, cfg.max_iters) if learns else 0.0
    return tile, learn


def _resolution(grid: Any) -> list[float]:
    t = grid.affine
    return [abs(float(t.a)), abs(float(t.e))]


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: 40 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
