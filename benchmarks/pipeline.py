"""Pipeline throughput and memory on a large mosaic built from real data (not a test).

Builds an N x N HR RGB (uint16, 512-px tiles, DEFLATE, like an orthomosaic) by mirroring the
real Sentinel-2 10 m clip with per-copy jitter (gain and a few-pixel shift), and its LR target
(the mirrored real 10 m NIR averaged over 4 x 4 blocks, float32), under /tmp. Then, each in a
fresh process: prepare -> all tiles with the bicubic tile function on a process pool of W
workers -> finish (stitch + COG + report + quick-look). Reports HR megapixels/s, the phase
times, the tile function's share of tile time, and peak RSS (the job process and its workers).

    python benchmarks/pipeline.py --size 8192 --workers 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT.parent / "shared" / "data" / "geo" / "sentinel2_10m"
sys.path.insert(0, str(ROOT))


def mirrored(src: np.ndarray, rows: slice, cols: slice, seed: int) -> np.ndarray:
    """Rows/cols of an infinite mosaic made of the (C, h, w) clip mirrored like a tiled floor,
    each copy with its own gain (0.9-1.1) and shift (0-7 px): real texture, no repeats."""
    C, h, w = src.shape
    r = np.arange(rows.start, rows.stop)
    c = np.arange(cols.start, cols.stop)
    br, bc = r // h, c // w
    rng = np.random.default_rng(seed)
    nb = max(br.max(), bc.max()) + 2
    gain = rng.uniform(0.9, 1.1, size=(nb, nb))
    shift = rng.integers(0, 8, size=(nb, nb, 2))
    out = np.empty((C, len(r), len(c)), dtype=np.float64)
    for i in np.unique(br):
        for j in np.unique(bc):
            rr, cc = r[br == i], c[bc == j]
            lr_ = (rr - i * h + shift[i, j, 0]) % h
            lc = (cc - j * w + shift[i, j, 1]) % w
            lr_ = lr_ if i % 2 == 0 else h - 1 - lr_
            lc = lc if j % 2 == 0 else w - 1 - lc
            block = src[:, lr_][:, :, lc] * gain[i, j]
            out[:, (br == i).nonzero()[0][0] : (br == i).nonzero()[0][-1] + 1,
                (bc == j).nonzero()[0][0] : (bc == j).nonzero()[0][-1] + 1] = block
    return out


def build(size: int, out_dir: Path) -> tuple[str, str]:
    import rasterio
    from affine import Affine

    rgb_p, nir_p = out_dir / f"mosaic_rgb_{size}.tif", out_dir / f"mosaic_nir40_{size}.tif"
    if rgb_p.exists() and nir_p.exists():
        return str(rgb_p), str(nir_p)
    with rasterio.open(S2 / "rgb.tif") as ds:
        rgb = ds.read().astype(np.float64)
        crs, t = ds.crs, ds.transform
    with rasterio.open(S2 / "nir.tif") as ds:
        nir = ds.read().astype(np.float64)
    both = np.concatenate([rgb, nir])  # same jitter for guide and target
    prof = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint16", crs=crs, transform=t,
                tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
    lprof = dict(prof, width=size // 4, height=size // 4, count=1, dtype="float32", nodata=float("nan"),
                 transform=t @ Affine.scale(4), blockxsize=256, blockysize=256, predictor=3)
    with rasterio.open(rgb_p, "w", **prof) as g, rasterio.open(nir_p, "w", **lprof) as n:
        for r0 in range(0, size, 512):
            strip = mirrored(both, slice(r0, r0 + 512), slice(0, size), seed=7)
            g.write(np.clip(strip[:3], 0, 65535).astype(np.uint16), window=((r0, r0 + 512), (0, size)))
            lr = strip[3].reshape(128, 4, size // 4, 4).mean(axis=(1, 3)).astype(np.float32)
            n.write(lr[None], window=((r0 // 4, r0 // 4 + 128), (0, size // 4)))
    return str(rgb_p), str(nir_p)


def _batch(args: tuple[str, list[int]]):
    import pipelines

    return [r.to_dict() for r in pipelines.run_tiles(args[0], args[1])]


def run_once(rgb: str, nir: str, workers: int, work: Path) -> dict:
    """One job in this (fresh) process; pool workers are fresh processes too."""
    import pipelines

    out = work / "out.tif"
    cfg = pipelines.JobConfig(method="bicubic", tile_fn="pipelines.tilefn:bicubic_tile_fn", resume=False,
                              work_dir=str(work / "job"))
    t0 = time.perf_counter()
    job = pipelines.prepare(rgb, nir, str(out), cfg)
    t1 = time.perf_counter()
    todo = pipelines.pending(job)
    # neighbouring tiles per task (rows of the plan), several tasks per worker for balance
    per = max(1, len(todo) // (workers * 8))
    batches = [(job.job_path, todo[i : i + per]) for i in range(0, len(todo), per)]
    results = []
    if workers == 1:
        for b in batches:
            results += _batch(b)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for rs in pool.map(_batch, batches):
                results += rs
    t2 = time.perf_counter()
    pipelines.finish(job.job_path, [pipelines.TileResult.from_dict(r) for r in results])
    t3 = time.perf_counter()
    mp = job.plan.hr_grid.height * job.plan.hr_grid.width / 1e6
    tile_s = sum(r["seconds"] for r in results)
    fn_s = sum(r["stats"].get("fn_seconds", 0.0) for r in results)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "workers": workers, "hr_megapixels": mp, "tiles": len(results), "seconds_total": t3 - t0,
        "seconds_prepare": t1 - t0, "seconds_tiles": t2 - t1, "seconds_finish": t3 - t2,
        "hr_mp_per_s": mp / (t3 - t0), "tile_fn_share_of_tile_time": fn_s / tile_s if tile_s else None,
        "peak_rss_mb_job_process": self_rss, "peak_rss_mb_worker": child_rss if workers > 1 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/cmsr_pipeline_bench")
    ap.add_argument("--one", nargs=3, metavar=("RGB", "NIR", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.one:
        work = Path(a.dir) / f"run_w{a.one[2]}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(json.dumps(run_once(a.one[0], a.one[1], int(a.one[2]), work)))
        shutil.rmtree(work, ignore_errors=True)
        return
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rgb, nir = build(a.size, d)
    print(f"mosaic {a.size}x{a.size}: {os.path.getsize(rgb) / 1e6:.0f} MB RGB, built/reused in {time.perf_counter() - t:.0f} s",
          flush=True)
    rows = []
    for w in a.workers:
        runs = []
        for _ in range(a.repeats):
            p = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--one", rgb, nir, str(w)],
                               capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if p.returncode:
                sys.exit(p.stderr)
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        med = {k: statistics.median([r[k] for r in runs]) if isinstance(runs[0][k], (int, float)) else runs[0][k]
               for k in runs[0]}
        med["peak_rss_mb_job_process"] = max(r["peak_rss_mb_job_process"] for r in runs)
        if w > 1:
            med["peak_rss_mb_worker"] = max(r["peak_rss_mb_worker"] for r in runs)
        med["repeats"] = len(runs)
        rows.append(med)
    print("\nworkers | HR MP/s | total s | prepare s | tiles s | finish s | tile fn share | peak RSS job / worker MB")
    for m in rows:
        print(f"{m['workers']} | {m['hr_mp_per_s']:.2f} | {m['seconds_total']:.1f} | {m['seconds_prepare']:.1f} | "
              f"{m['seconds_tiles']:.1f} | {m['seconds_finish']:.1f} | {m['tile_fn_share_of_tile_time']:.2f} | "
              f"{m['peak_rss_mb_job_process']:.0f} / {m['peak_rss_mb_worker'] or 0:.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
