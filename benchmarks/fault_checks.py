"""What a PASS means, written once for every fault case (``benchmarks/fault_cases*.py``).

Each helper returns the list of problems it found (empty: fine) so a case's verdict can say
exactly which demand failed. The demands are the README's and issue 11's, not today's output:
a refusal is exit 2 and *one* stderr line ``error: <file>: <problem>`` with nothing written; a
warning is said once, as one ``warning: ...`` line; a run leaves no process behind and never
changes an input; an output is finite inside the survey, NaN outside, and no worse than the
plainest upsampling against the real 10 m truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from fault_harness import CliRun, listing, pixels, shown
from fault_inputs import Survey

if TYPE_CHECKING:
    from fault_context import Context


@dataclass(frozen=True)
class Verdict:
    status: str  # PASS | FAIL | SKIP
    result: str  # what was measured (and, on FAIL, which demand failed)
    runs: tuple[CliRun, ...] = ()


def verdict(problems: Sequence[str], measured: str, *runs: CliRun) -> Verdict:
    if problems:
        return Verdict("FAIL", "; ".join(problems) + (f" [{measured}]" if measured else ""), runs)
    return Verdict("PASS", measured, runs)


def skip(reason: str, *runs: CliRun) -> Verdict:
    return Verdict("SKIP", reason, runs)


def behaved(run: CliRun) -> list[str]:
    """Demands on every command: it ended, printed no traceback, left no process, kept its inputs."""
    problems = []
    if run.rc is None:
        problems.append("did not end within the time limit (killed)")
    if run.traceback:
        problems.append("printed a traceback")
    if run.orphans:
        problems.append(f"left {len(run.orphans)} process(es) running: {run.orphans[0][:60]}")
    if run.inputs_changed:
        problems.append(f"changed input(s) {', '.join(Path(p).name for p in run.inputs_changed)}")
    return problems


def succeeded(run: CliRun) -> list[str]:
    return behaved(run) + ([] if run.rc == 0 else [f"exit {run.rc}, expected 0 ({run.brief()})"])


def refused(run: CliRun, must_say: Sequence[str], *, strict: bool = True, code: int = 2) -> list[str]:
    """Exit ``code`` with one ``error:`` line that contains every fragment of ``must_say``;
    ``strict``: that line is all of stderr (no engine start-up line, no progress bar)."""
    problems = behaved(run)
    if run.rc != code:
        problems.append(f"exit {run.rc}, expected {code}")
    errors = [ln for ln in run.lines() if ln.startswith("error:")]
    if len(errors) != 1:
        problems.append(f"{len(errors)} 'error:' lines, expected 1")
    elif strict and len(run.lines()) != 1:
        problems.append(f"{len(run.lines())} stderr lines, expected only the error line")
    line = errors[0] if errors else ""
    missing = [m for m in must_say if m not in line]
    if errors and missing:
        problems.append(f"error line lacks {', '.join(repr(m) for m in missing)}")
    return problems


def warned_once(run: CliRun, about: str, must_say: Sequence[str] = ()) -> list[str]:
    """Exactly one stderr line mentions ``about``; it is a ``warning:`` line saying ``must_say``."""
    hits = run.mentioning(about)
    if len(hits) != 1:
        return [f"{len(hits)} stderr lines mention {about!r}, expected one 'warning:' line"]
    problems = [] if hits[0].startswith("warning: ") else [f"not a 'warning:' line: {hits[0][:80]!r}"]
    missing = [m for m in must_say if m not in hits[0]]
    return problems + ([f"warning lacks {', '.join(repr(m) for m in missing)}"] if missing else [])


def no_warning(run: CliRun) -> list[str]:
    said = [ln for ln in run.lines() if "warning" in ln.lower()]
    return [f"warned: {shown(said[0])[:100]!r}"] if said else []


def nothing_new(folder: Path, before: set[str]) -> list[str]:
    new = sorted(listing(folder) - before)
    return [f"left {len(new)} file(s): {', '.join(new[:3])}"] if new else []


def output_range(values: np.ndarray, data: np.ndarray, margin: float = 0.1) -> tuple[float, float, bool]:
    """(min, max, within the data's own range widened by ``margin`` of its span)."""
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    span = hi - lo
    return vmin, vmax, lo - margin * span <= vmin and vmax <= hi + margin * span


def sane_output(path: str | Path, survey: Survey, lr: np.ndarray | None = None) -> tuple[list[str], str]:
    """Problems of an output on the base survey's grid, and what was measured: finite inside the
    footprint, NaN outside, within the real 10 m truth's range (+-10% of its span), and closer to
    that truth than the nearest-neighbour upsampling of ``lr`` (default the base thermal)."""
    if not Path(path).is_file():
        return [f"no output at {Path(path).name}"], ""
    img = pixels(path)
    lr = survey.thermal_c if lr is None else lr
    if img.shape != survey.inside_hr.shape:
        return [f"output is {img.shape}, expected {survey.inside_hr.shape}"], ""
    inside, outside = img[survey.inside_hr], img[~survey.inside_hr]
    finite = float(np.isfinite(inside).mean())
    problems = [] if finite >= 0.99 else [f"only {100 * finite:.1f}% finite inside the footprint"]
    if np.isfinite(outside).any():
        problems.append(f"{int(np.isfinite(outside).sum())} px outside the footprint are not NaN")
    if finite == 0:
        return problems, "all NaN"
    vmin, vmax, ok = output_range(inside, survey.truth_c[survey.inside_hr])
    if not ok:
        problems.append(f"values {vmin:.1f}..{vmax:.1f} outside the real 10 m range")
    near = np.repeat(np.repeat(lr, 4, 0), 4, 1)
    both = survey.inside_hr & np.isfinite(img)
    rmse = float(np.sqrt(np.mean((img[both] - survey.truth_c[both]) ** 2)))
    rmse_near = float(np.sqrt(np.mean((near[both] - survey.truth_c[both]) ** 2)))
    if not rmse <= rmse_near:
        problems.append(f"RMSE {rmse:.3f} vs truth is worse than nearest upsampling's {rmse_near:.3f}")
    return problems, f"{100 * finite:.0f}% finite, {vmin:.1f}..{vmax:.1f} degC, RMSE {rmse:.2f} (nearest {rmse_near:.2f})"


@dataclass(frozen=True)
class Case:
    """One fault: its id (issue 11's item number and a letter, ``B..`` for issue 3's list), what
    input and command, what a PASS means, and the check that runs it and judges."""

    id: str
    source: str
    what: str
    expected: str
    check: Callable[["Context"], Verdict]
