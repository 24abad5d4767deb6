"""Fault benchmark (issue 11): every fault of issue 11 and issue 3's bad-input list, against the
real ``cmsr`` CLI in subprocesses, on inputs built from the real Sentinel-2 clip (a benchmark,
not a test: it judges the tool from outside and prints PASS / FAIL / SKIP per case).

    python benchmarks/faults.py                    # everything (several minutes on 2 cores)
    python benchmarks/faults.py --only 1,2a,B7     # item 1 (1a, 1b), case 2a, B7a-c
    python benchmarks/faults.py --list             # the cases, what each runs and expects

One line per case while it runs, then a markdown table (case | what | expected | result |
verdict | seconds); ``benchmarks/out/faults.json`` holds every command with its exit code and
stderr. SKIP means the case could not be judged here (the reason is given), never a pass.
ERROR means the benchmark itself broke (a bug here, not in cmsr). Cases: ``fault_cases.py``
(items 1-9), ``fault_cases_messages.py`` (10-17), ``fault_cases_bad_input.py`` (issue 3).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fault_cases import CASES as RESULT_CASES  # noqa: E402
from fault_cases_bad_input import CASES as BAD_INPUT_CASES  # noqa: E402
from fault_cases_messages import CASES as MESSAGE_CASES  # noqa: E402
import fault_harness  # noqa: E402
from fault_checks import Case, Verdict  # noqa: E402
from fault_context import Context  # noqa: E402
from fault_inputs import S2  # noqa: E402

CASES: list[Case] = RESULT_CASES + MESSAGE_CASES + BAD_INPUT_CASES


def selected(cases: list[Case], only: str | None) -> list[Case]:
    """``--only 1,2a,B``: a full id, an item (``1`` -> 1a, 1b; ``B7`` -> B7a-c) or ``B`` (issue 3)."""
    if not only:
        return cases
    tokens = [t.strip() for t in only.split(",") if t.strip()]

    def item(case_id: str) -> str:
        return re.match(r"^B?\d+", case_id).group(0)  # type: ignore[union-attr]

    chosen = [c for c in cases if any(t == c.id or t == item(c.id) or (t == "B" and c.id.startswith("B"))
                                      for t in tokens)]
    unknown = [t for t in tokens if not any(t == c.id or t == item(c.id) or t == "B" for c in cases)]
    if unknown:
        raise SystemExit(f"error: --only: no case {', '.join(unknown)} (see --list)")
    return chosen


def judge(case: Case, ctx: Context) -> tuple[Verdict, float]:
    t0 = time.monotonic()
    try:
        v = case.check(ctx)
    except Exception as exc:  # noqa: BLE001 - the benchmark's own bug: shown, never a PASS
        v = Verdict("ERROR", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])
        traceback.print_exc()
    return v, time.monotonic() - t0


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> str:
    lines = ["| case | what | expected | result | verdict | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {cell(r['what'])} | {cell(r['expected'])} | {cell(r['result'][:220])} | "
                     f"{r['status']} | {r['seconds']:.0f} |")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "SKIP", "ERROR")}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(rows)} cases")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", help="comma-separated case ids or items (1, 2a, B7, B)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (inputs, outputs, work dirs)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds one command may take (default 180)")
    ap.add_argument("--scratch", type=Path, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--json", type=Path, default=HERE / "out" / "faults.json", help="where to write the results")
    args = ap.parse_args(argv)
    cases = selected(CASES, args.only)
    if args.list:
        for c in cases:
            print(f"{c.id:5} {c.source:13} {c.what}\n{'':19} PASS: {c.expected}")
        return 0
    if not (S2 / "rgb.tif").is_file():
        print(f"error: real data not found at {S2.parents[1]} (set CMSR_SHARED_DATA)", file=sys.stderr)
        return 2
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="cmsr-faults-"))
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o755)  # B9b runs one command as nobody: it must reach the inputs
    fault_harness.PLACES.update({str(scratch): "SCRATCH/", str(S2.parents[1]): "shared/data/", str(HERE.parent): ""})
    ctx = Context(scratch, args.timeout)
    rows: list[dict] = []
    t_all = time.monotonic()
    try:
        for case in cases:
            v, seconds = judge(case, ctx)
            print(f"{case.id:5} {v.status:5} {seconds:6.1f} s  {v.result[:200]}", flush=True)
            rows.append({"id": case.id, "source": case.source, "what": case.what, "expected": case.expected,
                         "status": v.status, "result": v.result, "seconds": round(seconds, 2),
                         "commands": [r.to_dict() for r in v.runs]})
    finally:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seconds": round(time.monotonic() - t_all, 1), "scratch": str(scratch),
                                         "cases": rows}, indent=1))
        if not args.keep and not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(rows))
    print(f"\n{time.monotonic() - t_all:.0f} s in all; details in {args.json}")
    return 0 if all(r["status"] in ("PASS", "SKIP") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
