"""What the survey commands share: the ``JobConfig`` from their options, the cheap input checks,
the flow run with a progress bar, and the printed outputs.

Heavy imports (pipelines, Prefect, Dask) happen inside the functions, at command time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import UsageError
from .options import parse_bands, parse_scale, workers_check
from .progress import TileProgressBar


def engine_logging(verbose: bool) -> None:
    """Prefect's console log level (the CLI renders progress, warnings and errors itself unless
    ``--verbose``), then the offline engine defaults; before Prefect is first imported."""
    from ..engine import configure_environment

    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO" if verbose else "CRITICAL")
    configure_environment()


def job_config(*, scale: str = "auto", method: str = "cmsr", preset: Optional[str] = None, tile_size: int = 512,
               halo: int = 32, seed: int = 0, device: str = "cpu", work_dir: Optional[Path] = None,
               resume: bool = True, assume_crs: Optional[str] = None, min_valid: float = 0.05,
               stitch: str = "core", tile_fn: Optional[str] = None, survey_model: Optional[bool] = None,
               model: Optional[Path] = None,
               guide_bands: Optional[str] = None, target_bands: Optional[str] = None,
               target_nodata: Optional[float] = None, rgb_nodata: Optional[float] = None,
               write_guide_weight: bool = False, registration_smoothing: bool = True) -> Any:
    """The ``pipelines.JobConfig`` of the command-line options; its own checks (method, stitch,
    ...) are the user's to fix, so they become :class:`UsageError`."""
    import pipelines

    chosen_scale = parse_scale(scale)
    guide_selection = parse_bands(guide_bands, "--guide-bands")
    target_selection = parse_bands(target_bands, "--target-bands")
    try:
        return pipelines.JobConfig(
            method=method, preset=preset, scale=chosen_scale, tile_size=tile_size, halo=halo, seed=seed,
            device=device, work_dir=str(work_dir) if work_dir else None, resume=resume, assume_crs=assume_crs,
            min_valid_fraction=min_valid, stitch=stitch, tile_fn=tile_fn, survey_model=survey_model,
            model=os.path.abspath(model) if model is not None else None,
            guide_bands=guide_selection, target_bands=target_selection, target_nodata=target_nodata,
            rgb_nodata=rgb_nodata, write_guide_weight=write_guide_weight,
            registration=pipelines.SurveyRegistration(smooth=registration_smoothing),
        )
    except ValueError as exc:  # JobConfig.__post_init__ validates exactly these options
        raise UsageError(str(exc)) from None


def preflight(rgb: Path, target: Path, out: Path, config: Any) -> None:
    """The cheap input checks (files, CRS, output path) before any engine starts, so bad input
    costs milliseconds and prints one line; the job's own prepare step checks the rest."""
    from tiling import align, rasters

    rasters.inspect(str(rgb), "RGB", config.assume_crs)
    rasters.inspect(str(target), "target", config.assume_crs)
    align.check_output(os.path.abspath(out), [str(rgb), str(target)])


def run_job(rgb: Path, target: Path, out: Path, config: Any, *, workers: Optional[int], scheduler: Optional[str],
            gpus: int | str | None, tiles_per_task: int, tile_timeout: Optional[float], quiet: bool,
            as_json: bool, retries: int = 2) -> dict:
    """Run the flow with a progress bar; returns the summary or raises the job's error."""
    from ..cluster import ClusterSpec
    from ..survey import RunOptions, progress_listener, run_survey

    workers_check(workers)
    if scheduler and (workers or gpus):
        raise UsageError("--scheduler uses the cluster's own workers; drop --workers/--gpus")
    options = RunOptions(
        cluster=ClusterSpec(scheduler=scheduler, workers=workers, gpus=gpus),
        tiles_per_task=tiles_per_task, tile_timeout_s=tile_timeout, tile_retries=retries,
    )
    show = not quiet and not as_json
    preflight(rgb, target, out, config)

    def on_cluster(handle: Any) -> None:
        if show:
            typer.echo(f"running on {handle.describe()}", err=True)

    def notice(message: str) -> None:  # a crashed run's lock taken over: said, not a traceback-like warning
        if not quiet:
            typer.echo(f"warning: {message}", err=True)

    t0 = time.perf_counter()
    with TileProgressBar(show) as bar, progress_listener(bar):
        state = run_survey(str(rgb), str(target), str(out), config, options, on_cluster=on_cluster, notice=notice)
    summary = state.result(raise_on_failure=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def print_outputs(summary: dict, quiet: bool, as_json: bool) -> None:
    """Where the outputs are and how many tiles ran (or the whole summary as JSON)."""
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
    elif not quiet:
        typer.echo(f"output:     {summary['cog']}")
        typer.echo(f"quick-look: {summary.get('quicklook')}")
        typer.echo(f"report:     {summary['report']}")
        if summary.get("registration"):
            typer.echo(f"registration map: {summary['registration']}")
        if summary.get("model"):
            typer.echo(f"survey model: {summary['model']}")
        typer.echo(f"{summary['processed']} tile(s), {summary['reused']} reused, {summary['seconds']} s")
