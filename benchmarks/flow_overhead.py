"""Per-tile orchestration overhead of the Prefect + Dask flow (a benchmark script, not a test).

Same job both ways, on the bundled real sample cut into tiny tiles, with a no-op tile function
(so the tile function costs nothing and only orchestration + the per-tile window IO remain):

* direct: ``pipelines.run_tile`` called in a loop in this process (the per-tile IO floor);
* flow: ``flows.survey.run_survey`` with the embedded default (temporary Prefect API + local
  Dask cluster), 1 worker, one Prefect task per tile (and a batched variant).

Overhead per tile = (flow's tile phase wall time - direct loop time) / tiles.
Start-up = from the call to the first progress event (API + cluster + prepare).

    PYTHONPATH=. python benchmarks/flow_overhead.py [--tiles 100 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "flows" / "sample"
# tile edges (HR px, multiples of the sample's scale 4) giving ~100 and ~1000 tiles of 300 x 200
TILE_FOR = {100: 24, 1000: 8}


def noop(target, guide, scale, ctx):
    """The no-op tile function: the right shape, no work."""
    return np.zeros((target.shape[0] * scale, target.shape[1] * scale), dtype=np.float32)


def _config(tile: int, work: str):
    import pipelines

    return pipelines.JobConfig(method="bicubic", tile_fn="flow_overhead:noop", tile_size=tile, halo=4,
                               work_dir=work, quicklook=False)


def direct(tile: int, tmp: str) -> tuple[int, float]:
    import pipelines

    job = pipelines.prepare(str(SAMPLE / "rgb_10m.tif"), str(SAMPLE / "nir_40m.tif"), os.path.join(tmp, "d.tif"),
                            _config(tile, os.path.join(tmp, "dw")))
    idx = [t.index for t in job.plan.tiles if not t.skip]
    t0 = time.perf_counter()
    for i in idx:
        pipelines.run_tile(job.job_path, i)
    return len(idx), time.perf_counter() - t0


def flow(tile: int, tmp: str, tiles_per_task: int) -> dict:
    from flows.cluster import ClusterSpec
    from flows.survey import RunOptions, progress_listener, run_survey

    marks: dict[str, float] = {}

    def on(ev) -> None:
        now = time.perf_counter()
        if ev.kind == "planned":
            marks["planned"] = now
        elif ev.kind == "tile":
            marks["last_tile"] = now
        elif ev.kind == "finished":
            marks["finished"] = now

    t0 = time.perf_counter()
    with progress_listener(on):
        state = run_survey(str(SAMPLE / "rgb_10m.tif"), str(SAMPLE / "nir_40m.tif"), os.path.join(tmp, "f.tif"),
                           _config(tile, os.path.join(tmp, "fw")),
                           RunOptions(cluster=ClusterSpec(workers=1), tiles_per_task=tiles_per_task))
    total = time.perf_counter() - t0
    summary = state.result()
    return {"tiles": summary["processed"], "startup_s": marks["planned"] - t0,
            "tile_phase_s": marks["last_tile"] - marks["planned"], "total_s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=50, help="tiles per task of the batched variant")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for n in args.tiles:
        tile = TILE_FOR.get(n) or max(4, int(round(np.sqrt(300 * 200 / n) / 4)) * 4)
        for tpt in (1, args.batch):
            d_runs, f_runs = [], []
            for _ in range(args.repeats):
                tmp = tempfile.mkdtemp(prefix="cmsr-overhead-")
                try:
                    count, dt = direct(tile, tmp)
                    d_runs.append(dt)
                    f_runs.append(flow(tile, tmp, tpt))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            direct_s = statistics.median(d_runs)
            phase = statistics.median(r["tile_phase_s"] for r in f_runs)
            row = {"tiles": count, "tile_px": tile, "tiles_per_task": tpt, "direct_s": round(direct_s, 3),
                   "flow_tile_phase_s": round(phase, 3),
                   "overhead_ms_per_tile": round(1000 * (phase - direct_s) / count, 1),
                   "startup_s": round(statistics.median(r["startup_s"] for r in f_runs), 2),
                   "flow_total_s": round(statistics.median(r["total_s"] for r in f_runs), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
