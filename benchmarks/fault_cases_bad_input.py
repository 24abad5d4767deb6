"""Issue 3's bad-input list, through the CLI: one line ``error: <file>: <problem>``, exit 2,
nothing written, inputs untouched (``tests/test_bad_inputs.py`` checks the same in-process).

The odd files are real: Sentinel-2's netCDF bands carry no CRS GDAL can see, Landsat 8 over
Marburg does not overlap a Chilean clip, Landsat 7 over Olinda has 6 bands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from fault_checks import Case, Verdict, nothing_new, refused, skip, succeeded, verdict, warned_once
from fault_context import FAST, Context, run_args
from fault_harness import engine_env

NOBODY = 65534


def _refusal(ctx: Context, case_id: str, rgb: str, target: str, must_say: Sequence[str], *extra: str,
             out: str = "sr.tif") -> Verdict:
    d = ctx.folder(case_id)
    before = {p.name for p in d.iterdir()}
    run = ctx.run(run_args(rgb, target, d / out, *extra))
    return verdict(refused(run, must_say) + nothing_new(d, before), run.brief(), run)


def missing_rgb(ctx: Context) -> Verdict:
    return _refusal(ctx, "B1a", str(ctx.scratch / "nope.tif"), ctx.survey.thermal, ["nope.tif", "does not exist"])


def missing_target(ctx: Context) -> Verdict:
    return _refusal(ctx, "B1b", ctx.survey.rgb, str(ctx.scratch / "gone.tif"), ["gone.tif", "does not exist"])


def junk_target(ctx: Context) -> Verdict:
    return _refusal(ctx, "B1c", ctx.survey.rgb, ctx.inputs.junk(), ["junk.tif", "not a readable raster"])


def folder_as_rgb(ctx: Context) -> Verdict:
    return _refusal(ctx, "B1d", str(ctx.inputs.folder), ctx.survey.thermal, ["inputs", "not a regular file"])


def no_crs(ctx: Context) -> Verdict:
    return _refusal(ctx, "B2", ctx.inputs.no_crs_rgb(), ctx.survey.thermal, ["red_band.nc", "--assume-crs EPSG:N"])


def no_overlap(ctx: Context) -> Verdict:
    far = ctx.inputs.far_away_target()
    return _refusal(ctx, "B3", ctx.survey.rgb, far, [Path(far).name, "does not overlap"])


def low_overlap(ctx: Context) -> Verdict:
    """Below 10% overlap is a warning, not a refusal: `cmsr plan` (the dry run) must say it once."""
    clip = ctx.inputs.thermal_clip()
    run = ctx.run(["plan", ctx.survey.rgb, clip, *FAST[:6]])
    return verdict(succeeded(run) + warned_once(run, "covers only", ["thermal_clip.tif", "1.0%"]), run.brief(), run)


def six_bands(ctx: Context) -> Verdict:
    l7, dem = ctx.inputs.six_band_rgb_and_dem()
    return _refusal(ctx, "B5", l7, dem, ["L7_ETMs.tif", "--guide-bands"])


def all_nodata(ctx: Context) -> Verdict:
    return _refusal(ctx, "B6", ctx.survey.rgb, ctx.inputs.thermal_all_nodata(), ["thermal_all_nodata.tif", "nodata"])


def bad_scale(value: str) -> Case:
    def check(ctx: Context) -> Verdict:
        return _refusal(ctx, f"B7-{value}", ctx.survey.rgb, ctx.survey.thermal, ["--scale", value],
                        "--scale", value)
    what = {"2.5": "non-integer", "1": "below the range", "17": "above the range"}[value]
    return Case(f"B7{'abc'['2.5 1 17'.split().index(value)]}", "issue 3", f"`--scale {value}` ({what})",
                "exit 2, one line naming --scale and the value, nothing written", check)


def output_is_target(ctx: Context) -> Verdict:
    """``-o`` the target itself (a copy, so nothing of the shared inputs is at stake)."""
    d = ctx.folder("B8")
    target = d / "thermal.tif"
    shutil.copyfile(ctx.survey.thermal, target)
    run = ctx.run(run_args(ctx.survey.rgb, str(target), target))
    return verdict(refused(run, ["thermal.tif", "same file as input"]) + nothing_new(d, {"thermal.tif"}),
                   run.brief(), run)


def output_dir_missing(ctx: Context) -> Verdict:
    return _refusal(ctx, "B9a", ctx.survey.rgb, ctx.survey.thermal, ["sr.tif", "does not exist"],
                    out="no/such/sr.tif")


def _immutable(folder: Path, on: bool) -> bool:
    """``chattr +i`` / ``-i``: a folder even root cannot write into (where the file system has it)."""
    try:
        return subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True).returncode == 0
    except OSError:
        return False


def output_dir_read_only(ctx: Context) -> Verdict:
    """A directory of mode 0555. Root may write anywhere, so as root the folder is also made
    immutable (``chattr +i``), or, where that is not possible, the command runs as ``nobody``
    (the inputs and the code are world-readable); without any of these: SKIP."""
    d = ctx.folder("B9b")
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0 and _immutable(ro, True):
        try:
            run = ctx.cli.run(run_args(ctx.survey.rgb, ctx.survey.thermal, ro / "sr.tif"))
        finally:
            _immutable(ro, False)
        return verdict(refused(run, ["sr.tif", "not writable"]) + nothing_new(ro, set()), run.brief(), run)
    user = NOBODY if os.geteuid() == 0 else None
    if user is None and os.access(ro, os.W_OK):
        return skip("a mode-0555 folder is writable for this user")
    home = Path(tempfile.mkdtemp(prefix="cmsr-nobody-"))
    home.chmod(0o777)
    try:
        env = dict(engine_env(home), HOME=str(home))
        run = ctx.cli.run(run_args(ctx.survey.rgb, ctx.survey.thermal, ro / "sr.tif"), user=user, env=env)
    except PermissionError as exc:
        return skip(f"as root; {exc.filename} cannot be run as nobody, so an unwritable folder cannot be made")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if user is not None and run.rc != 2 and "Permission denied" in run.stderr and "readonly" not in run.stderr:
        return skip("as nobody the command could not even start (code or inputs not readable)", run)
    return verdict(refused(run, ["sr.tif", "not writable"]) + nothing_new(ro, set()), run.brief(), run)


CASES = [
    Case("B1a", "issue 3", "RGB path that does not exist", "exit 2, one line naming the file", missing_rgb),
    Case("B1b", "issue 3", "target path that does not exist", "exit 2, one line naming the file", missing_target),
    Case("B1c", "issue 3", "target that is a text file named .tif", "exit 2, one line: not a readable raster",
         junk_target),
    Case("B1d", "issue 3", "a directory given as the RGB", "exit 2, one line: not a regular file", folder_as_rgb),
    Case("B2", "issue 3", "RGB without CRS (Sentinel-2 red_band.nc)", "exit 2, one line offering --assume-crs "
         "EPSG:N", no_crs),
    Case("B3", "issue 3", "target that does not overlap (Landsat 8 B10 over Marburg)", "exit 2, one line: does not "
         "overlap", no_overlap),
    Case("B4", "issue 3", "`cmsr plan` with a target covering 1% of the RGB", "exit 0, one 'warning:' line: covers "
         "only 1.0%", low_overlap),
    Case("B5", "issue 3", "6-band Landsat 7 as the RGB", "exit 2, one line naming --guide-bands", six_bands),
    Case("B6", "issue 3", "all-nodata target", "exit 2, one line naming the file", all_nodata),
    bad_scale("2.5"), bad_scale("1"), bad_scale("17"),
    Case("B8", "issue 3", "`-o` equal to the target", "exit 2, one line: same file as input, target unchanged",
         output_is_target),
    Case("B9a", "issue 3", "`-o` in a directory that does not exist", "exit 2, one line, nothing created",
         output_dir_missing),
    Case("B9b", "issue 3", "`-o` in a directory of mode 0555 (as nobody when root)", "exit 2, one line: not "
         "writable", output_dir_read_only),
]
