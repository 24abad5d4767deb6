"""Issue 11, items 1-9: wrong or lost results, interrupts and debris, readable outputs.

Each case is written against the issue's demand, not against today's output, and judged from
outside: exit codes, stderr lines, the files left, the pixels against the clean run and the real
10 m truth. Items 10-17 are in ``fault_cases_messages.py``, issue 3's list in
``fault_cases_bad_input.py``.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fault_checks import (Case, Verdict, behaved, no_warning, nothing_new, refused, sane_output, skip,
                          succeeded, verdict, warned_once)
from fault_context import Context, run_args
from fault_harness import CliRun, CreateWatch, listing, pixels, same_pixels

# ---------------------------------------------------------------------- 0: the clean run


def without_reference(ctx: Context) -> Verdict | None:
    """SKIP for a case that compares with the clean run when that run made no map (case 0 says why)."""
    b = ctx.baseline()
    return None if b.pixels is not None else skip("the clean run (case 0) made no map to compare with", b.run)


def clean_run(ctx: Context) -> Verdict:
    b = ctx.baseline()
    problems = succeeded(b.run) + no_warning(b.run)
    bad, measured = sane_output(b.out, ctx.survey)
    totals = b.report.get("totals", {})
    if totals.get("processed") != len(b.finished_tiles()):
        problems.append(f"report says {totals.get('processed')} tiles, work dir holds {len(b.finished_tiles())}")
    return verdict(problems + bad, f"{len(b.finished_tiles())} tiles, {measured}", b.run)


# ---------------------------------------------------------------------- 1: one output per job


def _together(ctx: Context, args_a: list[str], args_b: list[str]) -> tuple[CliRun, CliRun, int]:
    a, b = ctx.cli.start(args_a), ctx.cli.start(args_b)
    return a.wait(ctx.timeout), b.wait(ctx.timeout), a.proc.pid


def _one_wins(runs: tuple[CliRun, CliRun], pids: tuple[int, int], out_name: str) -> tuple[list[str], int | None]:
    """Exactly one run exits 0; the other is refused with one line naming the output and the
    running job (its pid or the word 'running'). Returns (problems, the winner's position)."""
    problems = behaved(runs[0]) + behaved(runs[1])
    winners = [i for i, r in enumerate(runs) if r.rc == 0]
    if len(winners) != 1:
        return problems + [f"exit codes {runs[0].rc} and {runs[1].rc}: expected one 0 and one refusal"], None
    w = winners[0]
    loser = runs[1 - w]
    if loser.rc in (None, 130):
        return problems + [f"the second run ended with {loser.rc}"], w
    problems += refused(loser, [out_name], strict=False, code=loser.rc)
    line = next((ln for ln in loser.lines() if ln.startswith("error:")), "")
    if line and str(pids[w]) not in line and "running" not in line:
        problems.append("the refusal does not name the running job (pid or 'running')")
    return problems, w


def identical_runs_at_once(ctx: Context) -> Verdict:
    if (missing := without_reference(ctx)) is not None:
        return missing
    b = ctx.baseline()
    out = ctx.folder("1a") / "sr.tif"
    args = run_args(b.rgb, b.thermal, out)
    s1, s2 = ctx.cli.start(args), ctx.cli.start(args)
    runs = (s1.wait(ctx.timeout), s2.wait(ctx.timeout))
    problems, w = _one_wins(runs, (s1.proc.pid, s2.proc.pid), "sr.tif")
    measured = f"{runs[0].brief()} | {runs[1].brief()}"
    if not out.exists():
        problems.append("no output")
    elif not same_pixels(pixels(out), b.pixels):
        nan = float(np.isnan(pixels(out)).mean())
        problems.append(f"output differs from the clean run ({100 * nan:.0f}% NaN)")
    else:
        measured += "; map == clean run"
    return verdict(problems, measured, *runs)


def different_jobs_at_once(ctx: Context) -> Verdict:
    s = ctx.survey
    other = ctx.inputs.thermal_other_flight()
    out = ctx.folder("1b") / "sr.tif"
    s1, s2 = ctx.cli.start(run_args(s.rgb, s.thermal, out)), ctx.cli.start(run_args(s.rgb, other, out))
    runs = (s1.wait(ctx.timeout), s2.wait(ctx.timeout))
    problems, w = _one_wins(runs, (s1.proc.pid, s2.proc.pid), "sr.tif")
    measured = f"{runs[0].brief()} | {runs[1].brief()}"
    if out.exists():  # whose map is it? the other flight is 5 degC warmer
        offset = float(np.nanmean(pixels(out)[s.inside_hr]) - np.nanmean(s.thermal_c))
        report_path = out.with_suffix(".report.json")
        named = json.loads(report_path.read_text()).get("inputs", {}).get("target") if report_path.exists() else None
        measured += f"; map {offset:+.1f} degC vs job 1's target, report names {Path(str(named)).name}"
        if w is not None and abs(offset - (0.0, 5.0)[w]) > 1.0:
            problems.append("the map is not the winner's job")
        if w is not None and named != (s.thermal, other)[w]:
            problems.append("the report names the other job's target")
    return verdict(problems, measured, *runs)


# ---------------------------------------------------------------------- 2: damaged tile results


def _damaged(ctx: Context, pick: int, damage: Callable[[Path, Path], None]) -> Verdict:
    """Damage one finished tile result of the clean run, rerun the same command: the tile is
    recomputed (and said so), only it, and the map is exactly the clean one."""
    if (missing := without_reference(ctx)) is not None:
        return missing
    b = ctx.restored_baseline()
    tiles = b.finished_tiles()
    i = tiles[min(len(tiles) // 2 + pick, len(tiles) - 1)]
    damage(b.work / "tiles" / f"{i}.npy", b.work / "tiles" / f"{i}.json")
    run = ctx.run(b.args())
    problems = succeeded(run)
    said = run.mentioning(f"tile {i}")
    if not said:
        problems.append(f"nothing on stderr says tile {i} was recomputed")
    elif not said[0].startswith("warning:"):
        problems.append(f"tile {i} said as a raw Python warning, not one 'warning:' line")
    if b.pixels is not None and (not b.out.exists() or not same_pixels(pixels(b.out), b.pixels)):
        bad = np.abs(np.nan_to_num(pixels(b.out) - b.pixels)) > 1e-3 if b.out.exists() else None
        problems.append("map differs from the clean run" + (f" in {int(bad.sum())} px" if bad is not None else ""))
    rep = json.loads(b.report_path.read_text()) if b.report_path.exists() else {}
    totals, ref = rep.get("totals", {}), b.report.get("totals", {})
    if totals.get("consistency_max") != ref.get("consistency_max"):
        problems.append(f"report consistency_max {totals.get('consistency_max')} != clean {ref.get('consistency_max')}")
    if totals.get("reused") != len(tiles) - 1:
        problems.append(f"report reused {totals.get('reused')}, expected {len(tiles) - 1} (only tile {i} again)")
    return verdict(problems, f"tile {i}: {run.brief()}", run)


def _overwrite(npy: Path, _json: Path) -> None:
    garbage = np.random.default_rng(0).uniform(-50, 80, 3000).astype(np.float32).tobytes()
    with open(npy, "r+b") as f:
        f.seek(200)
        f.write(garbage)


def _truncate(npy: Path, _json: Path) -> None:
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size // 2)


def _wrong_shape_json(_npy: Path, record: Path) -> None:
    record.write_text("[1]")


# ---------------------------------------------------------------------- 3, 4: nodata borders, nothing valid


def zero_border_warns(ctx: Context) -> Verdict:
    target = ctx.inputs.thermal_zero_border()
    out = ctx.folder("3a") / "sr.tif"
    run = ctx.run(run_args(ctx.survey.rgb, target, out))
    problems = succeeded(run) + warned_once(run, "thermal_zero_border.tif", ["--target-nodata 0"])
    report = json.loads(out.with_suffix(".report.json").read_text()) if out.with_suffix(".report.json").exists() else {}
    if not any("--target-nodata" in w for w in report.get("warnings", [])):
        problems.append("the report does not list the warning")
    measured = run.brief()
    b = ctx.baseline()
    if out.exists() and b.pixels is not None:
        diff = float(np.nanmax(np.abs(pixels(out) - b.pixels)))
        measured += f"; zeros processed as data (expected when undeclared): up to {diff:.1f} degC off the clean map"
    return verdict(problems, measured, run)


def zero_border_declared(ctx: Context) -> Verdict:
    """Declared, the zeros are nodata like the clean survey's -9999: the map must be the clean run's
    (no ringing towards a fake 0 at the edge)."""
    if (missing := without_reference(ctx)) is not None:
        return missing
    b = ctx.baseline()
    target = ctx.inputs.thermal_zero_border()
    out = ctx.folder("3b") / "sr.tif"
    run = ctx.run(run_args(ctx.survey.rgb, target, out, "--target-nodata", "0"))
    bad, measured = sane_output(out, ctx.survey)
    if out.exists() and b.pixels is not None:
        diff = float(np.nanmax(np.abs(pixels(out) - b.pixels)))
        measured += f"; max |map - clean map| {diff:.3g} degC"
        if not same_pixels(pixels(out), b.pixels):
            bad.append("map differs from the clean run's")
    return verdict(succeeded(run) + no_warning(run) + bad, measured, run)


def one_valid_pixel(ctx: Context) -> Verdict:
    target = ctx.inputs.thermal_one_pixel()
    d = ctx.folder("4")
    run = ctx.run(run_args(ctx.survey.rgb, target, d / "sr.tif"))
    problems = refused(run, ["thermal_one_pixel.tif", "valid"], strict=False)
    line = next((ln for ln in run.lines() if ln.startswith("error:")), "")
    if line and not re.search(r"\d%", line):
        problems.append("the error does not state the valid fraction")
    if (d / "sr.tif").exists():
        problems.append("an output was written")
    return verdict(problems, run.brief(), run)


# ---------------------------------------------------------------------- 5, 6: interrupts, SIGKILL


def _interrupted(ctx: Context, case_id: str, to_group: bool) -> Verdict:
    """Ctrl-C once a tile is finished (``cmsr`` fast: tiles take seconds, so the run is mid-way)."""
    d = ctx.folder(case_id)
    out, tiles = d / "sr.tif", d / "sr.tif.work" / "tiles"
    args = ["run", ctx.survey.rgb, ctx.survey.thermal, "-o", str(out), "--method", "cmsr", "--preset", "fast",
            "--tile-size", "64", "--halo", "8", "--workers", "1"]
    r = ctx.cli.start(args)
    deadline = time.monotonic() + ctx.timeout
    while r.proc.poll() is None and time.monotonic() < deadline and not list(tiles.glob("*.json")):
        r.look()
        time.sleep(0.3)
    if r.proc.poll() is not None:
        return skip("the run ended before a tile was finished: nothing to interrupt", r.wait(1))
    r.look()
    signalled = time.monotonic()
    (r.signal_group if to_group else r.signal_main)(signal.SIGINT)
    run = r.wait(30.0, note="SIGINT to the " + ("process group" if to_group else "main process"))
    took = run.seconds - (signalled - r.started)
    kept = len(list(tiles.glob("*.json")))
    problems = behaved(run)
    if run.rc != 130:
        problems.append(f"exit {run.rc}, expected 130")
    if took > 10:
        problems.append(f"took {took:.0f} s after the signal")
    said = [ln for ln in run.lines() if "interrupted" in ln.lower() or ln.startswith("error:")]
    if len(said) != 1:
        problems.append(f"{len(said)} error/interrupted lines, expected 1")
    else:
        m = re.search(r"(\d+) finished tile", said[0])
        if "interrupted" not in said[0] or m is None or int(m.group(1)) != kept or "sr.tif.work" not in said[0]:
            problems.append(f"not 'interrupted; {kept} finished tiles kept in .../sr.tif.work': {said[0][:90]!r}")
    return verdict(problems, f"{run.brief()}; exit {took:.1f} s after the signal, {kept} tile(s) kept", run)


def killed_cog_write(ctx: Context) -> Verdict:
    if (missing := without_reference(ctx)) is not None:
        return missing
    b = ctx.restored_baseline()
    ctx.remove_outputs(b)  # every tile done: the rerun goes straight to stitch + COG
    before = listing(b.folder)
    watch = CreateWatch(b.folder, f".{b.out.name}.")
    try:
        r = ctx.cli.start(b.args())
        caught, deadline = None, time.monotonic() + ctx.timeout
        while r.proc.poll() is None and time.monotonic() < deadline and caught is None:
            caught = watch.wait(0.2)
            r.look()
        if caught:
            r.signal_group(signal.SIGKILL)
        killed = r.wait(30.0, note=f"SIGKILL to the group when {caught} appeared")
    finally:
        watch.close()
    if not caught:
        return skip("the COG's temp file was never seen: could not kill during the write", killed)
    outputs = {b.out.name, b.report_path.name, b.out.with_suffix(".quicklook.png").name}
    debris = sorted(p for p in listing(b.folder) - before if p not in outputs)
    rerun = ctx.run(b.args())
    problems = succeeded(rerun)
    left = [p for p in debris if (b.folder / p).exists()]
    temps = [p for p in listing(b.folder) if Path(p).name.startswith(f".{b.out.name}.") or ".tmp" in Path(p).name
             or Path(p).name == "stitched.tif"]
    if left or temps:
        problems.append(f"debris kept: {', '.join(sorted(set(left + temps))[:3])}")
    if b.pixels is not None and (not b.out.exists() or not same_pixels(pixels(b.out), b.pixels)):
        problems.append("rerun's map differs from the clean run")
    return verdict(problems, f"killed left {len(debris)} file(s) ({', '.join(Path(p).name for p in debris)[:80]}); "
                             f"rerun {rerun.brief()}", killed, rerun)


# ---------------------------------------------------------------------- 7, 8: refused before anything starts


def _refused_at_once(ctx: Context, case_id: str, bad_rgb: str | None = None, bad_target: str | None = None) -> Verdict:
    """One input replaced by a bad one: refused in one line naming it, before anything starts."""
    d = ctx.folder(case_id)
    rgb, target = bad_rgb or ctx.survey.rgb, bad_target or ctx.survey.thermal
    run = ctx.run(run_args(rgb, target, d / "sr.tif"))
    problems = refused(run, [Path(bad_rgb or bad_target or "").name]) + nothing_new(d, set())
    return verdict(problems, run.brief(), run)


# ---------------------------------------------------------------------- 9: readable outputs


def output_modes(ctx: Context) -> Verdict:
    b = ctx.baseline()
    wrong = {p: oct(m) for p, m in b.modes.items() if m != 0o644}
    measured = f"{len(b.modes)} files, modes {sorted({oct(m) for m in b.modes.values()})}"
    problems = succeeded(b.run) + ([f"{len(wrong)} not 0o644, e.g. {next(iter(wrong.items()))}"] if wrong else [])
    return verdict(problems, measured, b.run)


CASES = [
    Case("0", "baseline", "clean ODM-style survey (RGBA uint8 + float degC, -9999 nodata): `cmsr run --method bp`",
         "exit 0, no warning, finite inside / NaN outside, RMSE vs real 10 m <= nearest", clean_run),
    Case("1a", "issue 11 #1", "two identical `cmsr run` on the same -o at once",
         "one exits 0 with the clean map; the other: one error line naming the running job", identical_runs_at_once),
    Case("1b", "issue 11 #1", "two different jobs (other target: UTM 20S, +5 degC) on the same -o at once",
         "one exits 0, its map and report are its own; the other is refused in one line", different_jobs_at_once),
    Case("2a", "issue 11 #2", "part of a finished tile's .npy overwritten (same size), rerun",
         "warning names the tile, recomputed (only it), map == clean run, report consistency kept",
         lambda ctx: _damaged(ctx, 0, _overwrite)),
    Case("2b", "issue 11 #2", "a finished tile's .npy truncated to half, rerun",
         "warning names the tile, recomputed, map == clean run", lambda ctx: _damaged(ctx, 1, _truncate)),
    Case("2c", "issue 11 #2", "a tile JSON replaced by `[1]`, rerun",
         "warning names the tile, recomputed, map == clean run", lambda ctx: _damaged(ctx, 2, _wrong_shape_json)),
    Case("3a", "issue 11 #3", "target whose outside is 0 with no nodata tag", "exit 0, one 'warning:' line naming "
         "--target-nodata 0, listed in the report", zero_border_warns),
    Case("3b", "issue 11 #3", "the same with `--target-nodata 0`", "exit 0, no warning, map == the clean run's (no "
         "ringing at the edge)", zero_border_declared),
    Case("4", "issue 11 #4", "target with one valid pixel", "exit 2, one error line naming the file and the valid "
         "fraction, no output", one_valid_pixel),
    Case("5a", "issue 11 #5", "Ctrl-C (SIGINT to the process group) mid-run, `--method cmsr --preset fast`",
         "exit 130 within 10 s, one line 'interrupted; N finished tiles kept in DIR', no process left",
         lambda ctx: _interrupted(ctx, "5a", True)),
    Case("5b", "issue 11 #5", "SIGINT to the main process only, mid-run", "exit 130 within 10 s, one line "
         "'interrupted; N finished tiles kept in DIR', no process left", lambda ctx: _interrupted(ctx, "5b", False)),
    Case("6", "issue 11 #6", "SIGKILL to the process group as the COG's temp file appears, then rerun",
         "rerun exit 0, no temp/stitched file left, map == clean run", killed_cog_write),
    Case("7a", "issue 11 #7", "all-nodata target (-9999 everywhere)", "exit 2, only the error line (nothing "
         "started), nothing left (no OUT.work)",
         lambda ctx: _refused_at_once(ctx, "7a", bad_target=ctx.inputs.thermal_all_nodata())),
    Case("7b", "issue 11 #7", "all-transparent RGB (alpha 0 everywhere)", "exit 2, only the error line, nothing left",
         lambda ctx: _refused_at_once(ctx, "7b", bad_rgb=ctx.inputs.rgb_transparent())),
    Case("8a", "issue 11 #8", "truncated target GeoTIFF (60% of its bytes)", "exit 2, one line naming the file",
         lambda ctx: _refused_at_once(ctx, "8a", bad_target=ctx.inputs.truncated("thermal"))),
    Case("8b", "issue 11 #8", "truncated RGB GeoTIFF (60% of its bytes)", "exit 2, one line naming the file",
         lambda ctx: _refused_at_once(ctx, "8b", bad_rgb=ctx.inputs.truncated("rgb"))),
    Case("9", "issue 11 #9", "the clean run under umask 022", "COG, report, quick-look, job, work and tile files 0644",
         output_modes),
]
