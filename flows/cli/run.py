"""``cmsr run``: super-resolve one survey through the Prefect flow on a Dask cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options
from .app import app
from .exit_codes import exit_codes
from .job import engine_logging, job_config, print_outputs, run_job


@app.command(epilog="""[bold]Examples[/bold]

  cmsr run ortho_rgb.tif thermal.tif -o thermal_sr.tif

  cmsr run rgb.tif thermal.tif -o sr.tif --method bp --tile-size 1024 --workers 4

  cmsr run rgb.tif thermal.tif -o sr.tif --gpus auto

  cmsr run rgb_week2.tif thermal_week2.tif -o sr_week2.tif --model sr_week1.model.pt

  cmsr run multispectral.tif thermal.tif -o sr.tif --guide-bands 3,2,1

  cmsr run /data/s1/rgb.tif /data/s1/thermal.tif -o /data/s1/sr.tif --scheduler tcp://dask-scheduler:8786 --json
""")
def run(
    rgb: Path = options.RGB, target: Path = options.TARGET,
    out: Path = typer.Option(..., "--out", "-o", help="Output Cloud-Optimized GeoTIFF."),
    scale: str = options.scale_option(), method: str = options.method_option(), preset: Optional[str] = options.preset_option(),
    tile_size: int = options.TILE_SIZE, halo: int = options.HALO, workers: Optional[int] = options.WORKERS,
    scheduler: Optional[str] = options.SCHEDULER, gpus: Optional[str] = options.GPUS, work_dir: Optional[Path] = options.WORK_DIR,
    resume: bool = options.RESUME, seed: int = options.SEED, device: str = options.DEVICE,
    tiles_per_task: int = typer.Option(1, "--tiles-per-task", help="Tiles per Prefect task (batches cut orchestration overhead)."),
    tile_timeout: Optional[float] = typer.Option(None, "--tile-timeout", help="Seconds one tile may take before it is retried."),
    retries: int = typer.Option(2, "--retries", help="Tries again after a tile fails (5 s apart)."),
    assume_crs: Optional[str] = options.ASSUME_CRS, min_valid: float = options.MIN_VALID,
    stitch: str = typer.Option("core", "--stitch", help="core (each pixel from one tile) | feather."),
    survey_model: Optional[bool] = options.SURVEY_MODEL, model: Optional[Path] = options.MODEL,
    old_survey_model_flag: bool = options.WARM_START,
    tile_fn: Optional[str] = typer.Option(None, "--tile-fn", help="Custom per-tile function 'module:function'.", hidden=True),
    guide_bands: Optional[str] = options.GUIDE_BANDS, target_bands: Optional[str] = options.TARGET_BANDS,
    target_nodata: Optional[float] = options.TARGET_NODATA, rgb_nodata: Optional[float] = options.RGB_NODATA,
    write_guide_weight: bool = options.WRITE_GUIDE_WEIGHT,
    registration_smoothing: bool = options.REGISTRATION_SMOOTHING,
    quiet: bool = options.QUIET, as_json: bool = options.JSON, verbose: bool = options.VERBOSE,
) -> None:
    """Super-resolve one survey: TARGET onto RGB's grid, written as a COG with a JSON report and a quick-look PNG."""
    engine_logging(verbose)
    with exit_codes(verbose):
        config = job_config(scale=scale, method=method, preset=preset, tile_size=tile_size, halo=halo, seed=seed,
                            device=device, work_dir=work_dir, resume=resume, assume_crs=assume_crs,
                            min_valid=min_valid, stitch=stitch, tile_fn=tile_fn,
                            survey_model=options.survey_model_choice(survey_model, old_survey_model_flag), model=model,
                            guide_bands=guide_bands, target_bands=target_bands, target_nodata=target_nodata,
                            rgb_nodata=rgb_nodata, write_guide_weight=write_guide_weight,
                            registration_smoothing=registration_smoothing)
        summary = run_job(rgb, target, out, config, workers=workers, scheduler=scheduler, gpus=options.parse_gpus(gpus),
                          tiles_per_task=tiles_per_task, tile_timeout=tile_timeout, quiet=quiet, as_json=as_json,
                          retries=retries)
        print_outputs(summary, quiet, as_json)
