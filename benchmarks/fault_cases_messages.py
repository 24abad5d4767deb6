"""Issue 11, items 10-17: honest messages and grids, resume bookkeeping, a moved work dir.

A warning is one ``warning:`` line on stderr that says what was measured and what was done; a
refusal is one ``error:`` line stating the one range or the one remedy that applies.
"""

from __future__ import annotations

import json
import shutil

import rasterio

from fault_checks import Case, Verdict, behaved, nothing_new, refused, succeeded, verdict, warned_once
from fault_cases import without_reference
from fault_context import Context, run_args
from fault_harness import pixels, same_pixels

# ---------------------------------------------------------------------- 10-13: grids and scales


def rotated_rgb(ctx: Context) -> Verdict:
    rgb = ctx.inputs.rgb_rotated()
    out = ctx.folder("10") / "sr.tif"
    run = ctx.run(run_args(rgb, ctx.survey.thermal, out))
    problems = succeeded(run) + warned_once(run, "north-up", ["odm_orthophoto_rotated.tif"])
    report = out.with_suffix(".report.json")
    warnings = json.loads(report.read_text()).get("warnings", []) if report.exists() else []
    if not any("north-up" in w for w in warnings):
        problems.append("the report does not say the grid is north-up")
    measured = run.brief()
    if out.exists():
        with rasterio.open(out) as ds:
            t = ds.transform
        if t.b or t.d:
            problems.append("the output grid is not north-up although that is what was said")
        measured += f"; output {t.a:g} m north-up" if not (t.b or t.d) else "; output rotated"
    return verdict(problems, measured, run)


def _ratio_warning(ctx: Context, case_id: str, res: tuple[float, float], must_say: list[str]) -> Verdict:
    target = ctx.inputs.thermal_at(*res)
    out = ctx.folder(case_id) / "sr.tif"
    run = ctx.run(run_args(ctx.survey.rgb, target, out))
    return verdict(succeeded(run) + warned_once(run, target.rsplit("/", 1)[-1], must_say), run.brief(), run)


def ratio_20(ctx: Context) -> Verdict:
    target = ctx.inputs.thermal_at(200, 200)
    d = ctx.folder("12a")
    run = ctx.run(run_args(ctx.survey.rgb, target, d / "sr.tif"))
    problems = refused(run, ["thermal_200x200m.tif", "20.00", "2..8"]) + nothing_new(d, set())
    line = run.lines()[0] if run.lines() else ""
    if "16" in line.replace("20.00", ""):
        problems.append("a second range (16) is stated")
    return verdict(problems, run.brief(), run)


def scale_16(ctx: Context) -> Verdict:
    d = ctx.folder("12b")
    run = ctx.run(run_args(ctx.survey.rgb, ctx.survey.thermal, d / "sr.tif", "--scale", "16"))
    problems = refused(run, ["--scale", "16", "2..8"]) + nothing_new(d, set())
    if run.lines() and "2..16" in run.lines()[0]:
        problems.append("states 2..16 as well")
    return verdict(problems, run.brief(), run)


def gcp_target(ctx: Context, case_id: str, *extra: str) -> Verdict:
    target = ctx.inputs.thermal_gcps()
    d = ctx.folder(case_id)
    run = ctx.run(run_args(ctx.survey.rgb, target, d / "sr.tif", *extra))
    problems = refused(run, ["thermal_gcps.tif", "gdalwarp"]) + nothing_new(d, set())
    if run.lines() and "--assume-crs" in run.lines()[0]:
        problems.append("still suggests --assume-crs")
    return verdict(problems, run.brief(), run)


# ---------------------------------------------------------------------- 14, 15: names and plain images


def png_output(ctx: Context) -> Verdict:
    d = ctx.folder("14")
    run = ctx.run(run_args(ctx.survey.rgb, ctx.survey.thermal, d / "sr.png"))
    problems = refused(run, ["sr.png"]) + nothing_new(d, set())
    if run.lines() and "tif" not in run.lines()[0].lower():
        problems.append("does not say a .tif name is needed")
    return verdict(problems, run.brief(), run)


def sr_one_pixel(ctx: Context) -> Verdict:
    d = ctx.folder("15a")
    run = ctx.run(["sr", "--target", ctx.inputs.sr_target_1x1(), "--scale", "4", "--out", str(d / "sr.png"),
                   "--method", "bp"])
    # not strict: `cmsr sr` announces the pair it runs on before the error, which is fine
    return verdict(refused(run, ["thermal_1x1.png"], strict=False) + nothing_new(d, set()), run.brief(), run)


def sr_small_guide(ctx: Context) -> Verdict:
    d = ctx.folder("15b")
    target, _ = ctx.inputs.sr_pair()
    guide = ctx.inputs.sr_guide_8x_small()
    run = ctx.run(["sr", "--target", target, "--guide", guide, "--scale", "4", "--out", str(d / "sr.png"),
                   "--method", "bp"])
    problems = behaved(run)
    said = [ln for ln in run.lines() if ln.startswith(("warning:", "error:")) and "guide" in ln]
    if len(said) != 1:
        problems.append(f"{len(said)} warning/error lines about the guide, expected 1")
    if run.rc not in (0, 2):
        problems.append(f"exit {run.rc}")
    return verdict(problems, run.brief(), run)


# ---------------------------------------------------------------------- 16, 17: resume and moved work dirs


def reused_after_resume(ctx: Context) -> Verdict:
    """An interrupted run's state: the clean run without its outputs and its last 5 tile results."""
    if (missing := without_reference(ctx)) is not None:
        return missing
    b = ctx.restored_baseline()
    ctx.remove_outputs(b)
    tiles = b.finished_tiles()
    for i in tiles[-5:]:
        for ext in ("npy", "json"):
            (b.work / "tiles" / f"{i}.{ext}").unlink()
    run = ctx.run(b.args())
    problems = succeeded(run)
    totals = json.loads(b.report_path.read_text()).get("totals", {}) if b.report_path.exists() else {}
    if (totals.get("processed"), totals.get("reused")) != (len(tiles), len(tiles) - 5):
        problems.append(f"report processed {totals.get('processed')}, reused {totals.get('reused')}; "
                        f"expected {len(tiles)}, {len(tiles) - 5}")
    summary = f"{len(tiles)} tile(s), {len(tiles) - 5} reused"
    if summary not in run.stdout:
        problems.append(f"stdout does not say {summary!r}")
    if b.pixels is not None and (not b.out.exists() or not same_pixels(pixels(b.out), b.pixels)):
        problems.append("map differs from the clean run")
    return verdict(problems, f"{run.brief()}; totals {totals.get('processed')} / {totals.get('reused')} reused", run)


def moved_work_dir(ctx: Context) -> Verdict:
    if (missing := without_reference(ctx)) is not None:
        return missing
    b = ctx.restored_baseline()
    ctx.remove_outputs(b)
    moved = b.folder / "elsewhere" / "w"
    moved.parent.mkdir()
    shutil.move(str(b.work), moved)
    tiles = sorted(int(p.stem) for p in (moved / "tiles").glob("*.json"))
    run = ctx.run(b.args("--work-dir", str(moved)))
    problems = succeeded(run)
    if b.work.exists():
        problems.append("the old work dir was created again")
    totals = json.loads(b.report_path.read_text()).get("totals", {}) if b.report_path.exists() else {}
    if totals.get("reused") != len(tiles):
        problems.append(f"report reused {totals.get('reused')} of {len(tiles)} tiles")
    if b.pixels is not None and (not b.out.exists() or not same_pixels(pixels(b.out), b.pixels)):
        problems.append("map differs from the clean run")
    return verdict(problems, f"{run.brief()}; reused {totals.get('reused')} of {len(tiles)}", run)


CASES = [
    Case("10", "issue 11 #10", "RGB with a geotransform rotated 30 degrees", "exit 0, one 'warning:' line saying "
         "north-up, the report says so, the output is north-up", rotated_rgb),
    Case("11a", "issue 11 #11", "target at 15 m on the 10 m RGB (GSD ratio 1.5)", "exit 0, one 'warning:' line "
         "with 1.50 and scale 2", lambda ctx: _ratio_warning(ctx, "11a", (15, 15), ["1.50", "scale 2"])),
    Case("11b", "issue 11 #11", "target with 40 x 20 m pixels (the issue's 10 x 5 m, here on a 10 m RGB)",
         "exit 0, one 'warning:' line with 4.00, 2.00 and scale 3",
         lambda ctx: _ratio_warning(ctx, "11b", (40, 20), ["4.00", "2.00", "scale 3"])),
    Case("12a", "issue 11 #12", "target at 200 m (ratio 20)", "exit 2, one line with 20.00 and the one range 2..8",
         ratio_20),
    Case("12b", "issue 11 #12", "`--scale 16` on the clean survey", "exit 2, one line stating 2..8 only", scale_16),
    Case("13a", "issue 11 #13", "target georeferenced by 9 GCPs", "exit 2, one line saying gdalwarp (not "
         "--assume-crs)", lambda ctx: gcp_target(ctx, "13a")),
    Case("13b", "issue 11 #13", "the GCP target with `--assume-crs EPSG:32719`", "exit 2, one line saying gdalwarp",
         lambda ctx: gcp_target(ctx, "13b", "--assume-crs", "EPSG:32719")),
    Case("14", "issue 11 #14", "`-o sr.png`", "exit 2, one line naming sr.png and .tif, nothing written", png_output),
    Case("15a", "issue 11 #15", "`cmsr sr` with a 1x1 PNG target (real ULB17-VT crop), --method bp, no guide",
         "exit 2, one line naming the target file", sr_one_pixel),
    Case("15b", "issue 11 #15", "`cmsr sr`, real 80x60 thermal, guide 8x too small (40x30), --method bp",
         "one 'warning:'/'error:' line about the guide", sr_small_guide),
    Case("16", "issue 11 #16", "resume: the clean run without its outputs and 5 tile results, rerun",
         "report totals reused = tiles - 5, stdout says so, map == clean run", reused_after_resume),
    Case("17", "issue 11 #17", "work dir moved elsewhere, rerun with --work-dir NEW", "every tile reused from the "
         "new place, old place not recreated, map == clean run", moved_work_dir),
]
