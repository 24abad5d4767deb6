"""Every option more than one command takes, declared once, and the parsers of their values.

Why one module: ``--method`` or ``--scale`` must mean the same thing, with the same help and the
same checks, wherever it appears. Options whose default differs by command (``demo`` runs a quick
preset) are small factories; the rest are shared ``typer`` option objects. Nothing here imports
the engine or torch, so ``cmsr --help`` stays instant.
"""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import UsageError

#: The zoom factors every built-in method supports: the core's ``cmsr.api.MIN_SCALE..MAX_SCALE``.
#: ``tiling`` alone could plan up to x16, but every tile goes through the core, which refuses more
#: than x8. Stated here, not imported, because importing ``cmsr`` loads torch and ``--help`` must
#: stay instant; ``tests/test_cli.py`` checks that the two agree.
MIN_SCALE, MAX_SCALE = 2, 8

METHOD_NAMES = "cmsr | zssr | bicubic | bp | guided"


def parse_scale(value: str, *, auto: bool = True) -> Optional[int]:
    """``--scale`` -> an integer in MIN_SCALE..MAX_SCALE, or None for ``auto`` (where allowed)."""
    expected = (f"'auto' or an integer {MIN_SCALE}..{MAX_SCALE}" if auto
                else f"an integer {MIN_SCALE}..{MAX_SCALE}")
    if auto and value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--scale {value!r}: expected {expected}") from None
    if not MIN_SCALE <= n <= MAX_SCALE:
        raise UsageError(f"--scale {n}: out of range, expected {expected}")
    return n


def parse_gpus(value: Optional[str]) -> int | str | None:
    """``--gpus`` -> a GPU count, ``"auto"`` or None (CPU)."""
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--gpus {value!r}: expected a number or 'auto'") from None
    if n < 0:
        raise UsageError(f"--gpus {n}: expected a positive number or 'auto'")
    return n


def parse_bands(value: Optional[str], flag: str) -> tuple[int, ...] | None:
    """``"3,2,1"`` -> (3, 2, 1): 1-based band numbers, in the order the tiles use them. Whether
    the file has those bands is checked by ``pipelines.prepare``, which names the file."""
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected comma-separated band numbers, e.g. 3,2,1") from None
    if min(bands) < 1:
        raise UsageError(f"{flag} {value!r}: band numbers start at 1")
    return bands


def survey_model_choice(survey_model: Optional[bool], old_flag: bool) -> Optional[bool]:
    """``--survey-model/--no-survey-model`` (None: auto), with the hidden old ``--warm-start`` as
    ``--survey-model``; both spellings at odds is the user's to fix."""
    if old_flag and survey_model is False:
        raise UsageError("--warm-start (the old name of --survey-model) contradicts --no-survey-model")
    return True if old_flag else survey_model


def workers_check(workers: Optional[int]) -> Optional[int]:
    """``--workers`` must be a positive count when given."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: expected at least 1")
    return workers


def scale_option(default: str = "auto") -> typer.models.OptionInfo:
    """``--scale``: ``default="auto"`` for georeferenced inputs (the pixel sizes tell the ratio);
    ``...`` (required) for ``sr``, whose plain images carry no pixel size."""
    if default == "auto":
        text = f"Zoom factor: 'auto' (the ratio of pixel sizes) or an integer {MIN_SCALE}..{MAX_SCALE}."
    else:
        text = f"Zoom factor: an integer {MIN_SCALE}..{MAX_SCALE}."
    return typer.Option(default, "--scale", help=text)


def method_option(default: str = "cmsr") -> typer.models.OptionInfo:
    return typer.Option(default, "--method", help=f"Per-tile method: {METHOD_NAMES}.")


def preset_option(default: Optional[str] = None) -> typer.models.OptionInfo:
    shown = default or "best"
    return typer.Option(default, "--preset", help=f"cmsr/zssr preset: paper | fast | best (default: {shown}).")


RGB = typer.Argument(..., help="RGB orthomosaic GeoTIFF (the high-resolution guide; its grid is the output grid).")
TARGET = typer.Argument(..., help="Low-resolution thermal/NIR/any-band GeoTIFF to super-resolve.")
SURVEY_OUT = typer.Option(..., "--out", "-o", help="Output Cloud-Optimized GeoTIFF (a path the workers see).")
TILE_SIZE = typer.Option(512, "--tile-size", help="Tile core edge in output pixels.")
HALO = typer.Option(32, "--halo", help="Tile context on each side in output pixels.")
WORKERS = typer.Option(None, "--workers",
                       help="Worker processes of the embedded cluster (plan: the count to estimate for); "
                            "default: sized to this machine.")
SCHEDULER = typer.Option(None, "--scheduler", help="Use an existing Dask cluster, e.g. tcp://HOST:8786.")
GPUS = typer.Option(None, "--gpus", help="Run on N local GPUs ('auto': all visible) with dask-cuda, one worker each.")
WORK_DIR = typer.Option(None, "--work-dir", help="Job state folder (default: OUT.work next to the output).")
RESUME = typer.Option(True, "--resume/--no-resume", help="Reuse finished tiles of the same plan.")
SEED = typer.Option(0, "--seed", help="Base seed (tile i uses seed+i).")
DEVICE = typer.Option("cpu", "--device", help="torch device: cpu | cuda | cuda:N (GPU clusters choose cuda themselves).")
ASSUME_CRS = typer.Option(None, "--assume-crs", help="CRS for inputs whose files carry none, e.g. EPSG:32632.")
MIN_VALID = typer.Option(0.05, "--min-valid", help="Skip tiles whose valid fraction is smaller (0..1).")
TARGET_NODATA = typer.Option(None, "--target-nodata", metavar="VALUE",
                             help="The target's nodata value, declared: overrides the file's tag (e.g. 0 for a "
                                  "thermal export whose outside is 0 with no tag).")
RGB_NODATA = typer.Option(None, "--rgb-nodata", metavar="VALUE",
                          help="The RGB's nodata value: pixels whose guide bands all equal it are invalid, like "
                               "alpha 0 (e.g. 0 or 255 for an RGB without alpha whose outside is black or white); "
                               "overrides the file's tag.")
GUIDE_BANDS = typer.Option(None, "--guide-bands",
                           help="RGB file bands to guide with, 1-based, e.g. 3,2,1 (default: all but alpha, 1 to 4).")
TARGET_BANDS = typer.Option(None, "--target-bands",
                            help="Target file bands to super-resolve, 1-based, e.g. 4 or 4,5 (default: all).")
WRITE_GUIDE_WEIGHT = typer.Option(False, "--write-guide-weight",
                                  help="Also write where the RGB was trusted: a guide_weight band (0 = the target "
                                       "alone, 1 = the guide shaped the pixel), shown in the quick-look.")
REGISTRATION_SMOOTHING = typer.Option(
    True, "--registration-smoothing/--no-registration-smoothing",
    help="cmsr: make the tiles' guide registrations one consistent field (outliers rejected, gaps filled, "
         "smoothed) before training; --no-registration-smoothing: every tile keeps its own. The field is "
         "written as OUT.registration.tif either way.")
SURVEY_MODEL = typer.Option(
    None, "--survey-model/--no-survey-model",
    help="cmsr: learn once from tiles across the survey, each tile fine-tunes briefly; auto: on from 4 tiles "
         "(--no-survey-model: every tile trains from scratch). The model is written as OUT.model.pt.",
    show_default="auto")
WARM_START = typer.Option(False, "--warm-start", hidden=True, help="Old name of --survey-model.")
MODEL = typer.Option(None, "--model", metavar="PATH",
                     help="cmsr: reuse a survey model from an earlier flight of the same sensor pair (its "
                          "OUT.model.pt) instead of learning one; refused for another band count or scale.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress or summary; errors only.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout (no progress bar).")
VERBOSE = typer.Option(False, "--verbose", "-v",
                       help="Show Prefect's and Dask's log lines, and the traceback of an internal error.")
