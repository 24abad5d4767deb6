"""The ``cmsr`` command: run, plan, demo, sr, serve, submit.

Bad input is one line ``error: <message>`` on stderr and exit code 2 (no traceback); a job that
fails while running (a tile raised) is one ``error:`` line and exit code 1. Heavy imports
(Prefect, Dask, torch) happen inside the commands so ``cmsr --help`` is instant.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    name="cmsr", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Guided super-resolution of thermal/NIR orthomosaics with CMSR (single-pair cross-modality SR).",
    context_settings={"help_option_names": ["-h", "--help"]},
)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

#: Rough single-core seconds per active 512 px tile, by method (``plan``'s estimate; ``plan
#: --probe`` measures one real tile instead).
TILE_SECONDS_ESTIMATE = {"bicubic": 0.2, "bp": 0.5, "guided": 1.0, "zssr": 60.0, "cmsr": 120.0}


class UserError(Exception):
    """A problem with the command line itself (printed as one line, exit 2)."""


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """What counts as the user's bad input, by type: the core's and tiling's ``InvalidInput``, a
    command-line problem, a missing or unreadable file."""
    from cmsr.errors import InvalidInput as CoreInvalid
    from tiling.errors import InvalidInput as TilingInvalid

    return (CoreInvalid, TilingInvalid, UserError, FileNotFoundError, PermissionError)


def _error(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _one_line_errors(verbose: bool = False) -> Any:
    """Bad input -> ``error: ...`` + exit 2; a failed job -> ``error: ...`` + exit 1; anything else
    (an internal ``ValueError`` included) is a bug: exit 1, its traceback with ``--verbose``."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise _error("interrupted; finished tiles are kept, run the same command again to resume", 130) from None
    except _bad_input_types() as exc:
        raise _error(str(exc), 2) from None
    except Exception as exc:  # noqa: BLE001 - a failed job, or a bug
        survey = sys.modules.get("flows.survey")  # only a flow raises TileFailed; sr never imports Prefect
        if survey is not None and isinstance(exc, survey.TileFailed):
            raise _error(str(exc), 1) from None
        if verbose:
            raise
        raise _error(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)",
                     1) from None


def _scale(value: str) -> Optional[int]:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"--scale {value!r}: expected 'auto' or an integer 2..16") from None
    return n


def _bands(value: Optional[str], flag: str) -> tuple[int, ...] | None:
    """``"3,2,1"`` -> (3, 2, 1): 1-based band numbers, in the order the tiles use them."""
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"{flag} {value!r}: expected comma-separated band numbers, e.g. 3,2,1") from None
    if not bands or min(bands) < 1:
        raise UserError(f"{flag} {value!r}: band numbers start at 1")
    return bands


GUIDE_BANDS = typer.Option(None, "--guide-bands", help="RGB bands to use, 1-based, e.g. 3,2,1 (default: the first 3).")
TARGET_BANDS = typer.Option(None, "--target-bands", help="Target bands to super-resolve, 1-based, e.g. 4 or 4,5 (default: all).")


def _gpus(value: Optional[str]) -> int | str | None:
    if value is None:
        return None
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--gpus {value!r}: expected a number or 'auto'") from None


def _job_config(*, scale: str = "auto", method: str = "cmsr", preset: Optional[str] = None, tile_size: int = 512,
                halo: int = 32, seed: int = 0, device: str = "cpu", work_dir: Optional[Path] = None,
                resume: bool = True, assume_crs: Optional[str] = None, min_valid: float = 0.05,
                stitch: str = "core", tile_fn: Optional[str] = None, warm_start: bool = False,
                guide_bands: Optional[str] = None, target_bands: Optional[str] = None):
    import pipelines

    guide_sel, target_sel = _bands(guide_bands, "--guide-bands"), _bands(target_bands, "--target-bands")
    try:
        return pipelines.JobConfig(
            method=method, preset=preset, scale=_scale(scale), tile_size=tile_size, halo=halo, seed=seed,
            device=device, work_dir=str(work_dir) if work_dir else None, resume=resume, assume_crs=assume_crs,
            min_valid_fraction=min_valid, stitch=stitch, tile_fn=tile_fn, warm_start=warm_start,
            guide_bands=guide_sel, target_bands=target_sel,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


class _Bar:
    """Rich progress bar fed by the flow's progress events (tiles done/total, ETA, s/tile)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None
        self.seconds: list[float] = []

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]tiles"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), TimeElapsedColumn(), TextColumn("{task.fields[per_tile]}"),
                console=Console(stderr=True), transient=False,
            )
            self.progress.__enter__()
        return self

    def __call__(self, event) -> None:
        if self.progress is None:
            return
        if event.kind == "planned":
            self.task = self.progress.add_task("tiles", total=event.total, completed=event.done,
                                               per_tile=f"{event.reused} reused" if event.reused else "")
        elif event.kind == "tile" and self.task is not None:
            if event.seconds is not None:
                self.seconds.append(event.seconds)
            mean = sum(self.seconds) / len(self.seconds) if self.seconds else 0.0
            self.progress.update(self.task, completed=event.done,
                                 per_tile=f"{event.seconds or 0:.1f} s/tile (mean {mean:.1f})")

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


def _run_job(rgb: Path, target: Path, out: Path, config, *, workers: Optional[int], scheduler: Optional[str],
             gpus: int | str | None, tiles_per_task: int, tile_timeout: Optional[float], quiet: bool,
             as_json: bool, dashboard: bool = False, retries: int = 2) -> dict:
    """Run the flow with a progress bar; returns the summary or raises the job's error."""
    from .cluster import ClusterSpec
    from .survey import RunOptions, progress_listener, run_survey

    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: expected at least 1")
    if scheduler and (workers or gpus):
        raise UserError("--scheduler uses the cluster's own workers; drop --workers/--gpus")
    options = RunOptions(
        cluster=ClusterSpec(scheduler=scheduler, workers=workers, gpus=gpus, dashboard=dashboard),
        tiles_per_task=tiles_per_task, tile_timeout_s=tile_timeout, tile_retries=retries,
    )
    show = not quiet and not as_json
    _preflight(rgb, target, out, config)

    def on_cluster(handle) -> None:
        if show:
            typer.echo(f"running on {handle.describe()}" + (f", dashboard {handle.dashboard}" if dashboard and
                                                             handle.dashboard else ""), err=True)

    t0 = time.perf_counter()
    with _Bar(show) as bar, progress_listener(bar):
        state = run_survey(str(rgb), str(target), str(out), config, options, on_cluster=on_cluster)
    summary = state.result(raise_on_failure=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _preflight(rgb: Path, target: Path, out: Path, config) -> None:
    """The cheap input checks (files, CRS, output path) before any engine starts, so bad input
    costs milliseconds and prints one line; the job's own prepare step checks the rest."""
    from tiling import align, rasters

    rasters.inspect(str(rgb), "RGB", config.assume_crs)
    rasters.inspect(str(target), "target", config.assume_crs)
    align.check_output(os.path.abspath(out), [str(rgb), str(target)])


def _print_outputs(summary: dict, quiet: bool, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
    elif not quiet:
        typer.echo(f"output:     {summary['cog']}")
        typer.echo(f"quick-look: {summary.get('quicklook')}")
        typer.echo(f"report:     {summary['report']}")
        typer.echo(f"{summary['processed']} tile(s), {summary['reused']} reused, {summary['seconds']} s")


# ------------------------------------------------------------------------------------ options

RGB = typer.Argument(..., help="RGB orthomosaic GeoTIFF (the high-resolution guide; its grid is the output grid).")
TARGET = typer.Argument(..., help="Low-resolution thermal/NIR/any-band GeoTIFF to super-resolve.")
SCALE = typer.Option("auto", "--scale", help="Zoom factor: 'auto' (ratio of pixel sizes) or an integer 2..16.")
METHOD = typer.Option("cmsr", "--method", help="cmsr | zssr | bicubic | bp | guided.")
PRESET = typer.Option(None, "--preset", help="cmsr/zssr preset: paper | fast | best (default: best).")
TILE = typer.Option(512, "--tile-size", help="Tile core edge in output pixels.")
HALO = typer.Option(32, "--halo", help="Tile context on each side in output pixels.")
WORKERS = typer.Option(None, "--workers", help="Embedded cluster: worker processes (default: sized to the machine).")
SCHED = typer.Option(None, "--scheduler", help="Use an existing Dask cluster, e.g. tcp://HOST:8786.")
GPUS = typer.Option(None, "--gpus", help="Run on N local GPUs ('auto': all visible) with dask-cuda, one worker each.")
WORKDIR = typer.Option(None, "--work-dir", help="Job state folder (default: OUT.work next to the output).")
RESUME = typer.Option(True, "--resume/--no-resume", help="Reuse finished tiles of the same plan.")
SEED = typer.Option(0, "--seed", help="Base seed (tile i uses seed+i).")
DEVICE = typer.Option("cpu", "--device", help="cpu | cuda (GPU clusters set cuda themselves).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress or summary; errors only.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout (no progress bar).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show Prefect's and Dask's log lines.")


def _verbose(verbose: bool) -> None:
    from .engine import configure_environment

    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO")
    else:
        # the CLI renders progress, warnings and errors itself
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    configure_environment()


# ------------------------------------------------------------------------------------ commands


@app.command(epilog="""[bold]Examples[/bold]

  cmsr run ortho_rgb.tif thermal.tif -o thermal_sr.tif

  cmsr run rgb.tif thermal.tif -o sr.tif --method bp --tile-size 1024 --workers 4

  cmsr run rgb.tif thermal.tif -o sr.tif --gpus auto

  cmsr run /data/s1/rgb.tif /data/s1/thermal.tif -o /data/s1/sr.tif --scheduler tcp://dask-scheduler:8786 --json
""")
def run(
    rgb: Path = RGB, target: Path = TARGET,
    out: Path = typer.Option(..., "--out", "-o", help="Output Cloud-Optimized GeoTIFF."),
    scale: str = SCALE, method: str = METHOD, preset: Optional[str] = PRESET, tile_size: int = TILE,
    halo: int = HALO, workers: Optional[int] = WORKERS, scheduler: Optional[str] = SCHED,
    gpus: Optional[str] = GPUS, work_dir: Optional[Path] = WORKDIR, resume: bool = RESUME, seed: int = SEED,
    device: str = DEVICE,
    tiles_per_task: int = typer.Option(1, "--tiles-per-task", help="Tiles per Prefect task (batches cut orchestration overhead)."),
    tile_timeout: Optional[float] = typer.Option(None, "--tile-timeout", help="Seconds one tile may take before it is retried."),
    retries: int = typer.Option(2, "--retries", help="Tries again after a tile fails (5 s apart)."),
    assume_crs: Optional[str] = typer.Option(None, "--assume-crs", help="CRS for inputs without one, e.g. EPSG:32632."),
    min_valid: float = typer.Option(0.05, "--min-valid", help="Skip tiles with a smaller valid fraction."),
    stitch: str = typer.Option("core", "--stitch", help="core (each pixel from one tile) | feather."),
    warm_start: bool = typer.Option(False, "--warm-start", help="Survey warm start (cmsr): pretrain on a few representative tiles, fine-tune each tile briefly (~7x faster per tile)."),
    tile_fn: Optional[str] = typer.Option(None, "--tile-fn", help="Custom per-tile function 'module:function'.", hidden=True),
    dashboard: bool = typer.Option(False, "--dashboard", help="Serve the embedded cluster's Dask dashboard."),
    guide_bands: Optional[str] = GUIDE_BANDS, target_bands: Optional[str] = TARGET_BANDS,
    quiet: bool = QUIET, as_json: bool = JSON, verbose: bool = VERBOSE,
) -> None:
    """Super-resolve one survey: TARGET onto RGB's grid, written as a COG with a JSON report and a quick-look PNG."""
    _verbose(verbose)
    with _one_line_errors(verbose):
        config = _job_config(scale=scale, method=method, preset=preset, tile_size=tile_size, halo=halo, seed=seed,
                             device=device, work_dir=work_dir, resume=resume, assume_crs=assume_crs,
                             min_valid=min_valid, stitch=stitch, tile_fn=tile_fn, warm_start=warm_start,
                             guide_bands=guide_bands, target_bands=target_bands)
        summary = _run_job(rgb, target, out, config, workers=workers, scheduler=scheduler, gpus=_gpus(gpus),
                           tiles_per_task=tiles_per_task, tile_timeout=tile_timeout, quiet=quiet, as_json=as_json,
                           dashboard=dashboard, retries=retries)
        _print_outputs(summary, quiet, as_json)


@app.command(epilog="""[bold]Examples[/bold]

  cmsr plan ortho_rgb.tif thermal.tif

  cmsr plan rgb.tif thermal.tif --tile-size 256 --workers 8 --json

  cmsr plan rgb.tif thermal.tif --method cmsr --preset fast --probe
""")
def plan(
    rgb: Path = RGB, target: Path = TARGET, scale: str = SCALE, method: str = METHOD,
    preset: Optional[str] = PRESET, tile_size: int = TILE, halo: int = HALO,
    workers: Optional[int] = typer.Option(None, "--workers", help="Workers to estimate the time for (default: this machine's)."),
    assume_crs: Optional[str] = typer.Option(None, "--assume-crs", help="CRS for inputs without one."),
    min_valid: float = typer.Option(0.05, "--min-valid", help="Skip tiles with a smaller valid fraction."),
    probe: bool = typer.Option(False, "--probe", help="Time one real tile here instead of using the rough table."),
    guide_bands: Optional[str] = GUIDE_BANDS, target_bands: Optional[str] = TARGET_BANDS,
    as_json: bool = JSON,
) -> None:
    """Dry run: grids, scale, tile count, valid fraction and an estimated time. Writes nothing."""
    import tempfile

    with _one_line_errors():
        import pipelines

        from .cluster import auto_workers

        config = _job_config(scale=scale, method=method, preset=preset, tile_size=tile_size, halo=halo,
                             assume_crs=assume_crs, min_valid=min_valid, guide_bands=guide_bands,
                             target_bands=target_bands)
        with tempfile.TemporaryDirectory(prefix="cmsr-plan-") as tmp:
            config = config.replace(work_dir=tmp, quicklook=False)
            job = pipelines.prepare(str(rgb), str(target), os.path.join(tmp, "plan.tif"), config)
            tiles = job.plan.tiles
            active = [t for t in tiles if not t.skip]
            n_workers = workers or auto_workers(len(active))
            if probe and active:
                best = max(active, key=lambda t: t.valid_fraction)
                per_tile = pipelines.run_tile(job.job_path, best.index).seconds
                source = f"measured on tile {best.index}"
            else:
                side = job.plan.tile_size + 2 * job.plan.halo
                per_tile = TILE_SECONDS_ESTIMATE.get(method, 60.0) * side * side / 576**2
                source = "rough table (use --probe to measure)"
        hr, lr = job.plan.hr_grid, job.plan.lr_grid
        valid = [t.valid_fraction for t in tiles]
        info = {
            "rgb": str(rgb), "target": str(target),
            "hr_grid": {"shape": [hr.height, hr.width], "resolution": _res(hr), "crs": _crs(hr)},
            "lr_grid": {"shape": [lr.height, lr.width], "resolution": _res(lr), "crs": _crs(lr)},
            "scale": job.scale, "gsd_ratio": round(job.gsd_ratio, 3), "overlap": round(job.overlap, 3),
            "target_resampling": job.resampling, "tile_size": job.plan.tile_size, "halo": job.plan.halo,
            "tiles": len(tiles), "active_tiles": len(active), "skipped_tiles": len(tiles) - len(active),
            "valid_fraction": round(sum(valid) / len(valid), 4) if valid else 0.0,
            "method": method, "workers": n_workers, "seconds_per_tile": round(per_tile, 2),
            "estimate_source": source,
            "estimated_seconds": round(math.ceil(len(active) / n_workers) * per_tile, 1),
            "warnings": list(job.warnings),
        }
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    typer.echo(f"HR grid (output): {hr.height} x {hr.width} px, {info['hr_grid']['resolution']} m, {info['hr_grid']['crs']}")
    typer.echo(f"LR grid (target): {lr.height} x {lr.width} px, {info['lr_grid']['resolution']} m "
               f"(target {info['target_resampling']})")
    typer.echo(f"scale x{job.scale} (pixel size ratio {info['gsd_ratio']}), overlap {info['overlap']:.0%}")
    typer.echo(f"tiles: {len(tiles)} of {job.plan.tile_size} px + {job.plan.halo} px halo; "
               f"{len(active)} to process, {info['skipped_tiles']} skipped; mean valid fraction {info['valid_fraction']:.2f}")
    typer.echo(f"estimate: ~{_human(info['estimated_seconds'])} with {n_workers} worker(s), "
               f"~{per_tile:.1f} s/tile ({source})")
    for w in job.warnings:
        typer.echo(f"warning: {w}", err=True)


def _res(grid) -> list[float]:
    t = grid.affine
    return [abs(float(t.a)), abs(float(t.e))]


def _crs(grid) -> str:
    return str(getattr(grid, "crs", ""))


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


DEMO_METHOD, DEMO_PRESET = "cmsr", "fast"


@app.command(epilog="""[bold]Examples[/bold]

  cmsr demo

  cmsr demo --out /tmp/cmsr-demo --method bp

  cmsr demo --json
""")
def demo(
    out_dir: Path = typer.Option(Path("cmsr-demo"), "--out", "-o", help="Folder for the demo's output."),
    method: str = typer.Option(DEMO_METHOD, "--method", help="Method for the demo (cmsr with the fast preset by default)."),
    preset: Optional[str] = typer.Option(DEMO_PRESET, "--preset", help="cmsr/zssr preset."),
    workers: Optional[int] = WORKERS, quiet: bool = QUIET, as_json: bool = JSON, verbose: bool = VERBOSE,
) -> None:
    """Run the whole flow on the real sample bundled with cmsr (Sentinel-2 NIR 40 m -> 10 m, guided by RGB 10 m)."""
    _verbose(verbose)
    with _one_line_errors(verbose):
        rgb, target, truth = SAMPLE_DIR / "rgb_10m.tif", SAMPLE_DIR / "nir_40m.tif", SAMPLE_DIR / "nir_10m_truth.tif"
        if not rgb.exists() or not target.exists():
            raise UserError(f"sample folder {SAMPLE_DIR}: the bundled sample is missing (reinstall cmsr)")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"demo folder {out_dir}: cannot be created ({exc.strerror})") from None
        out = out_dir.resolve() / f"nir_10m_{method}.tif"
        config = _job_config(method=method, preset=preset if method in ("cmsr", "zssr") else None)
        summary = _run_job(rgb, target, out, config, workers=workers, scheduler=None, gpus=None, tiles_per_task=1,
                           tile_timeout=None, quiet=quiet, as_json=as_json)
        if truth.exists():
            summary["score"] = _score(Path(summary["cog"]), target, truth, summary["scale"])
        _print_outputs(summary, quiet, as_json)
        if not quiet and not as_json and "score" in summary:
            sc = summary["score"]
            typer.echo(f"vs the real 10 m NIR: RMSE {sc['rmse']:.1f} ({method}) vs {sc['rmse_bicubic']:.1f} (bicubic)")


def _score(out: Path, target: Path, truth: Path, scale: int) -> dict:
    """RMSE of the output and of plain bicubic against the real high-resolution band."""
    import numpy as np
    import rasterio

    from cmsr.resize import imresize

    with rasterio.open(out) as ds:
        sr = ds.read(1).astype(np.float64)
    with rasterio.open(truth) as ds:
        gt = ds.read(1).astype(np.float64)
    with rasterio.open(target) as ds:
        lr = ds.read(1).astype(np.float64)
    bic = imresize(lr, float(scale))[: gt.shape[0], : gt.shape[1]]
    ok = np.isfinite(sr) & np.isfinite(gt) & np.isfinite(bic)
    return {"rmse": float(np.sqrt(np.mean((sr[ok] - gt[ok]) ** 2))),
            "rmse_bicubic": float(np.sqrt(np.mean((bic[ok] - gt[ok]) ** 2)))}


@app.command(epilog="""[bold]Examples[/bold]

  cmsr sr --target thermal_lr.png --guide rgb.png --scale 4 --out thermal_sr.png

  cmsr sr --target flir.jpg --guide flir.jpg --scale 4 --out sr.tif --preset fast --save-warp warp.png

  cmsr sr --target nir_lr.tif --guide rgb.png --scale 2 --out nir_sr.tif --method guided
""")
def sr(
    target: Path = typer.Option(..., "--target", help="Low-resolution target image (PNG/TIFF, or a FLIR radiometric JPEG)."),
    guide: Optional[Path] = typer.Option(None, "--guide", help="High-resolution guide image (RGB; FLIR: its optical image)."),
    scale: int = typer.Option(..., "--scale", help="Integer zoom factor 2..8."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image (.png keeps the target's dtype, .tif float32)."),
    method: str = typer.Option("cmsr", "--method", help="cmsr | zssr | bicubic | bp | guided."),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper | fast | best (default: best)."),
    no_warp: bool = typer.Option(False, "--no-warp", help="Ablation: no learned guide deformation."),
    seed: int = SEED,
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    save_warp: Optional[Path] = typer.Option(None, "--save-warp", help="Draw the learned displacement field to this PNG."),
    quiet: bool = QUIET, as_json: bool = JSON,
) -> None:
    """Super-resolve one image pair (no georeferencing, no tiling): the core algorithm on two files."""
    with _one_line_errors():
        from cmsr.single_pair import run_single_pair, summary

        echo = None if (quiet or as_json) else (lambda line: typer.echo(line, err=True))
        res = run_single_pair(target, guide, out, scale, method=method, preset=preset, no_warp=no_warp, seed=seed,
                              device=device, save_warp=save_warp, echo=echo)
        if as_json:
            typer.echo(json.dumps(summary(res), indent=1, default=str))


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
    method: str = METHOD, preset: Optional[str] = PRESET, tile_size: int = TILE, halo: int = HALO,
    workers: Optional[int] = WORKERS, scheduler: Optional[str] = SCHED, gpus: Optional[str] = GPUS,
    as_json: bool = JSON, verbose: bool = VERBOSE,
) -> None:
    """Process every survey folder under --watch that has no up-to-date output, on a schedule (Prefect deployment)."""
    _verbose(verbose)
    with _one_line_errors(verbose):
        from . import watch as watchmod

        if not watch.is_dir():
            raise UserError(f"watch folder {watch}: is not a directory")
        defaults = {"method": method, "preset": preset, "tile_size": tile_size, "halo": halo}
        engine = {"workers": workers, "scheduler": scheduler, "gpus": _gpus(gpus)}
        if once:
            done = watchmod.process_pending(str(watch), defaults, engine)
            if as_json:
                typer.echo(json.dumps(done, indent=1))
            else:
                for d in done:
                    typer.echo(f"{d['status']:9s} {d['survey']}" + (f" -> {d['out']}" if d.get("out") else "")
                               + (f" ({d['error']})" if d.get("error") else ""))
            return
        typer.echo(f"serving deployment 'scan-surveys/{name}' over {watch} "
                   f"({'cron ' + cron if cron else f'every {interval:.0f} s'}); Ctrl-C stops", err=True)
        watchmod.serve(str(watch), defaults, engine, cron=cron, interval=interval, name=name)


@app.command(epilog="""[bold]Examples[/bold]

  cmsr submit rgb.tif thermal.tif -o sr.tif --scheduler tcp://dask-scheduler:8786

  cmsr submit rgb.tif thermal.tif -o sr.tif --deployment superresolve-survey/cmsr

  PREFECT_API_URL=http://prefect:4200/api cmsr submit rgb.tif t.tif -o sr.tif --scheduler tcp://sched:8786 --json
""")
def submit(
    rgb: Path = RGB, target: Path = TARGET,
    out: Path = typer.Option(..., "--out", "-o", help="Output Cloud-Optimized GeoTIFF (a path the workers see)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the flow on this Dask cluster (detached)."),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="Create a run of this Prefect deployment (FLOW/NAME)."),
    scale: str = SCALE, method: str = METHOD, preset: Optional[str] = PRESET, tile_size: int = TILE,
    halo: int = HALO, seed: int = SEED, as_json: bool = JSON,
) -> None:
    """Send a job to a Dask cluster or a Prefect deployment and print its flow run id (returns at once)."""
    _verbose(False)
    with _one_line_errors():
        from . import submit as submitmod

        if bool(scheduler) == bool(deployment):
            raise UserError("give exactly one of --scheduler ADDR or --deployment NAME")
        config = _job_config(scale=scale, method=method, preset=preset, tile_size=tile_size, halo=halo, seed=seed)
        args = (str(rgb.resolve()), str(target.resolve()), str(out.resolve()), config.to_dict())
        if scheduler:
            run_id = submitmod.to_scheduler(scheduler, *args)
        else:
            run_id = submitmod.to_deployment(deployment, *args)
        typer.echo(json.dumps({"flow_run_id": run_id}) if as_json else run_id)


#: Commands that train in this process or its children: run them with the allocator settings.
_TRAINING_COMMANDS = {"run", "demo", "sr", "serve"}


def main() -> None:
    """Console entry point (``cmsr``)."""
    if len(sys.argv) > 1 and sys.argv[1] in _TRAINING_COMMANDS and "--help" not in sys.argv and "-h" not in sys.argv:
        try:
            from cmsr.runtime import ensure_allocator_env

            ensure_allocator_env()  # may re-exec this command once with MALLOC_* set
        except ImportError:  # pragma: no cover
            pass
    app()


if __name__ == "__main__":
    main()
