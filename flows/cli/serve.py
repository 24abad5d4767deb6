"""``cmsr serve``: process the survey folders under a watched folder on a schedule (Prefect deployment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from . import options
from .app import app
from .exit_codes import exit_codes
from .job import engine_logging


@app.command(epilog="""[bold]Examples[/bold]

  cmsr serve --watch /surveys                      # process new surveys every 10 minutes

  cmsr serve --watch /surveys --cron "0 2 * * *"   # every night at 02:00

  cmsr serve --watch /surveys --once --method bp   # one pass, then exit

Survey folders: any folder under DIR holding one RGB GeoTIFF and one thermal GeoTIFF, found by
name ([bold]*rgb*[/bold] / [bold]*ortho*[/bold] / [bold]*visible*[/bold] and [bold]*thermal*[/bold] /
[bold]*tir*[/bold] / [bold]*lwir*[/bold] / [bold]*nir*[/bold]) or named in a [bold]survey.toml[/bold]:

  rgb = "odm_orthophoto.tif"
  target = "thermal_ortho.tif"
  out = "thermal_sr.tif"          # optional (default: cmsr/<target stem>_sr.tif)
  [config]                        # optional pipelines.JobConfig fields
  method = "cmsr"
""")
def serve(
    watch: Path = typer.Option(..., "--watch", help="Folder whose survey sub-folders are processed."),
    cron: Optional[str] = typer.Option(None, "--cron", help="Cron schedule (default: every --interval seconds)."),
    interval: float = typer.Option(600.0, "--interval", help="Seconds between scans when no --cron is given."),
    once: bool = typer.Option(False, "--once", help="Scan and process once, then exit (no deployment)."),
    name: str = typer.Option("cmsr", "--name", help="Deployment name (shown in the Prefect UI)."),
    method: str = options.method_option(), preset: Optional[str] = options.preset_option(), tile_size: int = options.TILE_SIZE,
    halo: int = options.HALO, workers: Optional[int] = options.WORKERS, scheduler: Optional[str] = options.SCHEDULER,
    gpus: Optional[str] = options.GPUS, as_json: bool = options.JSON, verbose: bool = options.VERBOSE,
) -> None:
    """Process every survey folder under --watch that has no up-to-date output, on a schedule (Prefect deployment)."""
    engine_logging(verbose)
    with exit_codes(verbose):
        from .. import watch as watcher

        if not watch.is_dir():
            raise UsageError(f"watch folder {watch}: is not a directory")
        options.workers_check(workers)
        defaults = {"method": method, "preset": preset, "tile_size": tile_size, "halo": halo}
        engine = {"workers": workers, "scheduler": scheduler, "gpus": options.parse_gpus(gpus)}
        if once:
            done = watcher.process_pending(str(watch), defaults, engine)
            if as_json:
                typer.echo(json.dumps(done, indent=1))
            else:
                for row in done:
                    typer.echo(f"{row['status']:9s} {row['survey']}" + (f" -> {row['out']}" if row.get("out") else "")
                               + (f" ({row['error']})" if row.get("error") else ""))
            return
        typer.echo(f"serving deployment 'scan-surveys/{name}' over {watch} "
                   f"({'cron ' + cron if cron else f'every {interval:.0f} s'}); Ctrl-C stops", err=True)
        watcher.serve(str(watch), defaults, engine, cron=cron, interval=interval, name=name)
