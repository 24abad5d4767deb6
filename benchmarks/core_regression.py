"""Before/after record of the core's results: presets x fixed dev pairs, plus one pipeline run.

Why: a restructuring of the core (one trainer, one config shape) must not change results. This
records, for each preset and pair, what a result *is* (PSNR to 3 decimals, iterations per stage,
the chosen base, the registration in HR px, a hash of the output) and what it costs (CPU seconds),
so that the same script run on the old and the new code gives a table to compare side by side.

Usage (from the repo root; any checkout, it imports the code next to it)::

    python benchmarks/core_regression.py --tag after                 # every preset x pair, 1 thread
    python benchmarks/core_regression.py --presets fast --pairs ulb17vt_thermal_x4/006 --repeats 3
    python benchmarks/core_regression.py --pipeline-only --tag after  # the Sentinel-2 `cmsr run`
    python benchmarks/core_regression.py --compare before after       # the before/after table

Writes ``benchmarks/out/regression-<tag>.json``; ``--compare`` prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "pairs"
OUT = ROOT / "benchmarks" / "out"
PAIRS = ("ulb17vt_thermal_x4/006", "ulb17vt_thermal_x4/064", "ulb17vt_thermal_x4/277",
         "epfl_rgbnir_x4/indoor_0001", "middlebury_depth_x4/Aloe_2_18")
PRESETS = ("best", "fast", "paper")


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()[:16]


def run_pair(pair: str, preset: str, repeats: int) -> dict:
    import cmsr
    from cmsr.metrics import score

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import stretch_map

    dataset, name = pair.split("/")
    base = DATA / dataset / name
    lr, guide, gt = (_load(Path(f"{base}_{k}.png")) for k in ("lr", "guide", "gt"))
    if guide.ndim == 3 and guide.shape[-1] == 4:
        guide = guide[..., :3]
    cfg = cmsr.CMSRConfig.preset(preset)
    cpus, result = [], None
    for _ in range(repeats):
        c0 = time.process_time()
        result = cmsr.run(lr, guide, 4, cfg, method="cmsr", seed=0, device="cpu")
        cpus.append(time.process_time() - c0)
    assert result is not None
    out = result.image.astype(np.float64)
    if dataset.startswith("middlebury"):
        a, b = stretch_map(gt, lr)
        out = (out - b) / a
    st = result.stats
    return {"pair": pair, "preset": preset, "psnr": round(float(score(out, gt.astype(np.float64))["psnr"]), 3),
            "iterations": st.get("iterations"),
            "stage_iterations": [s.get("iterations") for s in st.get("stages", [])],
            "base": st.get("base"), "registration_px": round(float(st.get("mean_warp_px") or 0.0), 3),
            "digest": _digest(result.image), "cpu_seconds": [round(c, 2) for c in cpus],
            "cpu_seconds_median": round(statistics.median(cpus), 2)}


def run_pipeline() -> dict:
    """``cmsr run --preset fast --tile-size 128`` on the bundled Sentinel-2 sample, fresh work dir."""
    import rasterio

    sample = ROOT / "flows" / "sample"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sr.tif"
        cmd = [sys.executable, "-c", "from flows.cli import main; main()", "run", str(sample / "rgb_10m.tif"),
               str(sample / "nir_40m.tif"), "-o", str(out), "--preset", "fast", "--tile-size", "128",
               "--workers", "1", "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"cmsr run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with rasterio.open(out) as ds:
            img = ds.read(1).astype(np.float64)
        with rasterio.open(sample / "nir_10m_truth.tif") as ds:
            truth = ds.read(1).astype(np.float64)
    ok = np.isfinite(img) & np.isfinite(truth)
    rng = float(np.ptp(truth[ok]))
    mse = float(np.mean((img[ok] - truth[ok]) ** 2))
    return {"pair": "sentinel2 cmsr run", "preset": "fast",
            "psnr": round(10 * np.log10(rng ** 2 / mse), 3), "digest": _digest(img),
            "wall_seconds": round(wall, 1), "mean": round(float(np.nanmean(img)), 4)}


def compare(tags: list[str]) -> str:
    runs = [json.loads((OUT / f"regression-{t}.json").read_text()) for t in tags]
    key = lambda r: (r["pair"], r["preset"])  # noqa: E731
    rows = {key(r): [None] * len(runs) for run in runs for r in run["rows"]}
    for j, run in enumerate(runs):
        for r in run["rows"]:
            rows[key(r)][j] = r
    head = "| pair | preset | " + " | ".join(f"{t} PSNR / iters / base / reg px / CPU s" for t in tags) + \
           " | dPSNR | same output |"
    lines = [head, "|" + "---|" * (4 + len(tags))]
    for (pair, preset), rs in rows.items():
        cells = []
        for r in rs:
            if r is None:
                cells.append("-")
                continue
            iters = "+".join(str(i) for i in r.get("stage_iterations") or []) or str(r.get("iterations", ""))
            cpu = r.get("cpu_seconds_median", r.get("wall_seconds", ""))
            cells.append(f"{r['psnr']:.3f} / {iters or '-'} / {r.get('base') or '-'} / "
                         f"{r.get('registration_px', '-')} / {cpu}")
        done = [r for r in rs if r is not None]
        d = f"{done[-1]['psnr'] - done[0]['psnr']:+.3f}" if len(done) > 1 else "-"
        same = "yes" if len(done) > 1 and len({r["digest"] for r in done}) == 1 else "no"
        lines.append(f"| {pair} | {preset} | " + " | ".join(cells) + f" | {d} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="run")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS))
    ap.add_argument("--repeats", type=int, default=1, help="runs per pair (median CPU seconds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pipeline-only", action="store_true")
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--compare", nargs="+", default=None, metavar="TAG")
    args = ap.parse_args(argv)
    if args.compare:
        print(compare(args.compare))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"regression-{args.tag}.json"
    rows: list[dict] = []
    meta = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "root": str(ROOT)}
    if not args.pipeline_only:
        for pair in args.pairs:
            for preset in args.presets:
                row = run_pair(pair, preset, args.repeats)
                rows.append(row)
                print(json.dumps(row), flush=True)
                path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if not args.no_pipeline:
        row = run_pipeline()
        rows.append(row)
        print(json.dumps(row), flush=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
