"""``cmsr submit``: hand one job to a Dask cluster or a Prefect deployment; prints the flow run id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from . import options
from .app import app
from .exit_codes import exit_codes
from .job import engine_logging, job_config


@app.command(epilog="""[bold]Examples[/bold]

  cmsr submit rgb.tif thermal.tif -o sr.tif --scheduler tcp://dask-scheduler:8786

  cmsr submit rgb.tif thermal.tif -o sr.tif --deployment superresolve-survey/cmsr

  PREFECT_API_URL=http://prefect:4200/api cmsr submit rgb.tif t.tif -o sr.tif --scheduler tcp://sched:8786 --json
""")
def submit(
    rgb: Path = options.RGB, target: Path = options.TARGET, out: Path = options.SURVEY_OUT,
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the flow on this Dask cluster (detached)."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="Create a run of this Prefect deployment (FLOW/NAME)."),
    scale: str = options.scale_option(), method: str = options.method_option(), preset: Optional[str] = options.preset_option(),
    tile_size: int = options.TILE_SIZE, halo: int = options.HALO, seed: int = options.SEED,
    guide_bands: Optional[str] = options.GUIDE_BANDS, target_bands: Optional[str] = options.TARGET_BANDS,
    target_nodata: Optional[float] = options.TARGET_NODATA, rgb_nodata: Optional[float] = options.RGB_NODATA,
    write_guide_weight: bool = options.WRITE_GUIDE_WEIGHT,
    registration_smoothing: bool = options.REGISTRATION_SMOOTHING,
    survey_model: Optional[bool] = options.SURVEY_MODEL, model: Optional[Path] = options.MODEL,
    as_json: bool = options.JSON, verbose: bool = options.VERBOSE,
) -> None:
    """Send a job to a Dask cluster or a Prefect deployment and print its flow run id (returns at once)."""
    engine_logging(verbose)
    with exit_codes(verbose):
        from .. import submit as submission

        if bool(scheduler) == bool(deployment):
            raise UsageError("give exactly one of --scheduler ADDR or --deployment NAME")
        config = job_config(scale=scale, method=method, preset=preset, tile_size=tile_size, halo=halo, seed=seed,
                            guide_bands=guide_bands, target_bands=target_bands, target_nodata=target_nodata,
                            rgb_nodata=rgb_nodata, write_guide_weight=write_guide_weight,
                            registration_smoothing=registration_smoothing, survey_model=survey_model,
                            model=model)
        from tiling.align import check_output_name

        check_output_name(str(out))
        args = (str(rgb.resolve()), str(target.resolve()), str(out.resolve()), config.to_dict())
        if scheduler:
            run_id = submission.to_scheduler(scheduler, *args)
        else:
            run_id = submission.to_deployment(deployment, *args)
        typer.echo(json.dumps({"flow_run_id": run_id}) if as_json else run_id)
