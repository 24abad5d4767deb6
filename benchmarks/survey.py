"""Survey-level learning vs per-tile training from scratch (issue 12). A benchmark, not a test.

Quality, always on distinct real content (never a mirrored copy: a mirrored mosaic repeats its
tiles and flatters survey learning):

* ``sentinel`` -- the bundled Sentinel-2 clip (300x200 at 10 m) in six 100x100 tiles; LR = 4x4 mean
  of the real 10 m NIR, RGB guide, survey-level normalisation; scored against the real 10 m NIR
  (PSNR on the normalised range, peak 1). Survey: learned from the six tiles, each fine-tuned.
* ``landsat7`` -- Landsat 7 ETM+ Olinda (28.5 m), the 3x3 100x100 tiles of its top-left 300x300;
  LR = 4x4 mean of band 4 (NIR), guide bands 3, 2, 1; scored against band 4 the same way.
* ``thermal`` -- the 16 ULB17-VT dev pairs as one camera's survey: learn on 15, fine-tune and score
  the 16th (all 16 rotations), uint8 PSNR against the GT; per-pair normalisation as ``cmsr.run``.
  Halves A (even index) / B (odd) reported apart.

Speed (``speed``, the only use of a mirrored mosaic): one 512-px tile with a 16-px halo (544x544 HR,
136x136 LR) of the Sentinel-2 clip mirror-extended: CPU seconds of per-tile ``best`` from scratch
vs fine-tuning from a survey model, and the one-off cost of learning that model on 12 such tiles.

Every run is one process with one thread (``torch.set_num_threads(1)``, CPU seconds by
``time.process_time``); ``--workers`` runs that many at once. Results are cached per run under
``benchmarks/out/survey/`` keyed by the core's source, so a rerun only computes what changed.
Prints the tables and writes ``benchmarks/out/survey.json`` / ``.csv``.

    python benchmarks/survey.py --workers 2            # everything
    python benchmarks/survey.py --only thermal sentinel
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
THERMAL = DATA / "pairs" / "ulb17vt_thermal_x4"
LANDSAT7 = DATA / "geo" / "landsat7_olinda" / "L7_ETMs.tif"
SAMPLE = ROOT / "flows" / "sample"
OUT = ROOT / "benchmarks" / "out"
CACHE = OUT / "survey"
SPEED_TILE, SPEED_HALO, SPEED_SAMPLE, SPEED_REPEATS = 512, 16, 12, 3


# --- data ---------------------------------------------------------------------------------------
def thermal_pairs() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, lr uint8 (h, w), guide uint8 (H, W, 3), gt uint8 (H, W)) of every dev pair, sorted."""
    from PIL import Image

    names = sorted(p.name[: -len("_lr.png")] for p in THERMAL.glob("*_lr.png"))
    out = []
    for n in names:
        lr = np.asarray(Image.open(THERMAL / f"{n}_lr.png").convert("L"))
        g = np.asarray(Image.open(THERMAL / f"{n}_guide.png").convert("RGB"))
        gt = np.asarray(Image.open(THERMAL / f"{n}_gt.png").convert("L"))
        out.append((n, lr, g, gt))
    return out


def _area(x: np.ndarray, s: int) -> np.ndarray:
    h, w = x.shape[0] // s, x.shape[1] // s
    return x[: h * s, : w * s].reshape(h, s, w, s).mean(axis=(1, 3)).astype(np.float32)


def geo_survey(name: str) -> dict:
    """Tiles of a real multi-band raster: LR targets (area /4 of the truth band), guides, truths and
    the survey-level ranges (2/98 percentiles of the whole clip, as a survey run takes them)."""
    import tifffile

    from cmsr.inputs import robust_range

    if name == "sentinel":
        rgb = tifffile.imread(SAMPLE / "rgb_10m.tif").astype(np.float32)
        nir = tifffile.imread(SAMPLE / "nir_10m_truth.tif").astype(np.float32)
        tile = 100
    else:
        import rasterio

        with rasterio.open(LANDSAT7) as f:
            bands = f.read().astype(np.float32)
        rgb = bands[[2, 1, 0]].transpose(1, 2, 0)[:300, :300]
        nir = bands[3][:300, :300]
        tile = 100
    t_range = robust_range(nir)
    g_range = np.asarray([robust_range(rgb[..., c]) for c in range(rgb.shape[-1])], np.float64)
    boxes = [(y, x) for y in range(0, nir.shape[0] - tile + 1, tile) for x in range(0, nir.shape[1] - tile + 1, tile)]
    return {"tile": tile, "target_range": t_range, "guide_range": g_range,
            "lrs": [_area(nir[y:y + tile, x:x + tile], 4) for y, x in boxes],
            "guides": [rgb[y:y + tile, x:x + tile] for y, x in boxes],
            "truths": [nir[y:y + tile, x:x + tile] for y, x in boxes], "boxes": boxes}


def norm_psnr(pred: np.ndarray, truth: np.ndarray, rng: tuple[float, float]) -> float:
    """PSNR on the survey's normalised range (peak 1)."""
    lo, hi = rng
    mse = float(np.mean(((np.asarray(pred, np.float64) - truth) / (hi - lo)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def speed_tile(count: int) -> tuple[list, list, tuple, np.ndarray]:
    """``count`` 544x544 tiles (512 + 2 x 16 halo) of the Sentinel-2 clip mirror-extended to 3x that
    side, at evenly spaced offsets, with the mosaic's ranges. For speed only: they repeat content."""
    import tifffile

    from cmsr.inputs import robust_range

    side = SPEED_TILE + 2 * SPEED_HALO
    rgb = tifffile.imread(SAMPLE / "rgb_10m.tif").astype(np.float32)
    nir = tifffile.imread(SAMPLE / "nir_10m_truth.tif").astype(np.float32)
    big = side * 3
    pads = ((0, big - nir.shape[0]), (0, big - nir.shape[1]))
    nir = np.pad(nir, pads, mode="symmetric")
    rgb = np.pad(rgb, pads + ((0, 0),), mode="symmetric")
    per_side = int(np.ceil(np.sqrt(count)))
    offsets = np.linspace(0, big - side, per_side).astype(int)
    boxes = [(int(y), int(x)) for y in offsets for x in offsets][:count]
    return ([_area(nir[y:y + side, x:x + side], 4) for y, x in boxes], [rgb[y:y + side, x:x + side] for y, x in boxes],
            robust_range(nir), np.asarray([robust_range(rgb[..., c]) for c in range(3)]))


# --- one run (a worker process) ------------------------------------------------------------------
def _config(dataset: str):
    from cmsr.config import CMSRConfig

    cfg = CMSRConfig.preset("best")
    return cfg if dataset == "thermal" else cfg.replace(degradation="area")


def run_job(job: dict) -> dict:
    """One cell: ``job`` = {dataset, kind: scratch|survey, index | None}. 1 thread, CPU seconds."""
    import torch

    import cmsr
    from cmsr import survey_model as SM
    from cmsr.metrics import psnr
    from cmsr.runtime import configure_allocator

    configure_allocator()
    torch.set_num_threads(1)
    ds, kind, idx = job["dataset"], job["kind"], job.get("index")
    cfg = _config(ds)
    row: dict = dict(job)
    if ds == "thermal":
        pairs = thermal_pairs()
        name, lr, g, gt = pairs[idx]
        row.update(pair=name, half="A" if idx % 2 == 0 else "B")
        c0 = time.process_time()
        if kind == "scratch":
            r = cmsr.run(lr, g, 4, cfg, seed=0)
        else:
            rest = [p for k, p in enumerate(pairs) if k != idx]
            model = SM.learn_arrays([p[1] for p in rest], [p[2] for p in rest], 4, cfg, seed=0)
            row["learn_cpu_s"] = round(time.process_time() - c0, 2)
            row["survey_base"] = model.base
            c0 = time.process_time()
            r = cmsr.run_many([lr], [g], 4, SM.tile_config(cfg, model), seeds=[0], init_state=model.weights)[0]
        row.update(cpu_s=round(time.process_time() - c0, 2), base=r.stats.get("base"),
                   iterations=r.stats.get("iterations"),
                   psnr=round(psnr(np.asarray(r.image, np.float64), gt.astype(np.float64)), 3))
        return row
    if ds in ("sentinel", "landsat7"):
        d = geo_survey(ds)
        kw = dict(target_range=d["target_range"], guide_range=d["guide_range"])
        if kind == "scratch":
            c0 = time.process_time()
            r = cmsr.run(d["lrs"][idx], d["guides"][idx], 4, cfg, seed=idx, **kw)
            row.update(cpu_s=round(time.process_time() - c0, 2), base=r.stats.get("base"),
                       iterations=r.stats.get("iterations"),
                       psnr=round(norm_psnr(r.image, d["truths"][idx], d["target_range"]), 3))
            return row
        c0 = time.process_time()
        model = SM.learn_arrays(d["lrs"], d["guides"], 4, cfg, seed=0, **kw)
        row.update(learn_cpu_s=round(time.process_time() - c0, 2), survey_base=model.base, tiles=[])
        for i, (lr, g) in enumerate(zip(d["lrs"], d["guides"])):
            c0 = time.process_time()
            r = cmsr.run_many([lr], [g], 4, SM.tile_config(cfg, model), seeds=[i], init_state=model.weights, **kw)[0]
            row["tiles"].append({"index": i, "cpu_s": round(time.process_time() - c0, 2), "base": r.stats.get("base"),
                                 "iterations": r.stats.get("iterations"),
                                 "psnr": round(norm_psnr(r.image, d["truths"][i], d["target_range"]), 3)})
        return row
    # speed: 544x544 HR tiles of the mirrored clip
    lrs, guides, t_range, g_range = speed_tile(SPEED_SAMPLE)
    kw = dict(target_range=t_range, guide_range=g_range)
    if kind == "scratch":
        c0 = time.process_time()
        r = cmsr.run(lrs[0], guides[0], 4, cfg, seed=idx or 0, **kw)
        row.update(cpu_s=round(time.process_time() - c0, 2), iterations=r.stats.get("iterations"),
                   base=r.stats.get("base"), train_cpu_s=r.stats.get("train_seconds"))
        return row
    c0 = time.process_time()
    model = SM.learn_arrays(lrs, guides, 4, cfg, seed=0, **kw)
    row.update(learn_cpu_s=round(time.process_time() - c0, 2), survey_base=model.base,
               learn_iterations=model.iterations, finetune_cpu_s=[])
    for rep in range(SPEED_REPEATS):
        c0 = time.process_time()
        r = cmsr.run_many([lrs[0]], [guides[0]], 4, SM.tile_config(cfg, model), seeds=[rep],
                          init_state=model.weights, **kw)[0]
        row["finetune_cpu_s"].append(round(time.process_time() - c0, 2))
        row["finetune_iterations"] = r.stats.get("iterations")
    return row


# --- orchestration ------------------------------------------------------------------------------
def code_key() -> str:
    """Hash of the core's source: cached cells are reused only for the same core."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "cmsr").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def jobs_for(parts: list[str]) -> list[dict]:
    jobs: list[dict] = []
    if "thermal" in parts:
        for i in range(16):
            jobs += [{"dataset": "thermal", "kind": "survey", "index": i}, {"dataset": "thermal", "kind": "scratch", "index": i}]
    for ds, n in (("sentinel", 6), ("landsat7", 9)):
        if ds in parts:
            jobs.append({"dataset": ds, "kind": "survey", "index": None})
            jobs += [{"dataset": ds, "kind": "scratch", "index": i} for i in range(n)]
    if "speed" in parts:
        jobs.append({"dataset": "speed", "kind": "survey", "index": None})
        jobs += [{"dataset": "speed", "kind": "scratch", "index": r} for r in range(SPEED_REPEATS)]
    return jobs


def _cached(job: dict, key: str) -> Path:
    return CACHE / f"{key}_{job['dataset']}_{job['kind']}_{job.get('index')}.json"


def _run_cached(args: tuple[dict, str]) -> dict:
    job, key = args
    path = _cached(job, key)
    if path.exists():
        return json.loads(path.read_text())
    row = run_job(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(path)
    print(f"done {job}: {({k: v for k, v in row.items() if k != 'tiles'})}", flush=True)
    return row


def summarise(rows: list[dict]) -> tuple[str, list[dict]]:
    """Markdown tables and flat per-tile rows (scratch vs survey, same tile)."""
    flat: list[dict] = []
    lines: list[str] = []
    by = {(r["dataset"], r["kind"], r.get("index")): r for r in rows}
    for ds in ("thermal", "sentinel", "landsat7"):
        cells = []
        if ds == "thermal":
            for i in range(16):
                sc, sv = by.get((ds, "scratch", i)), by.get((ds, "survey", i))
                if sc and sv:
                    cells.append({"dataset": ds, "tile": sc["pair"], "half": sc["half"], "scratch_psnr": sc["psnr"],
                                  "survey_psnr": sv["psnr"], "scratch_cpu_s": sc["cpu_s"], "survey_cpu_s": sv["cpu_s"],
                                  "scratch_base": sc["base"], "survey_base": sv["base"], "learn_cpu_s": sv["learn_cpu_s"]})
        else:
            sv = by.get((ds, "survey", None))
            for t in (sv or {}).get("tiles", []):
                sc = by.get((ds, "scratch", t["index"]))
                if sc:
                    cells.append({"dataset": ds, "tile": t["index"], "half": "A" if t["index"] % 2 == 0 else "B",
                                  "scratch_psnr": sc["psnr"], "survey_psnr": t["psnr"], "scratch_cpu_s": sc["cpu_s"],
                                  "survey_cpu_s": t["cpu_s"], "scratch_base": sc["base"], "survey_base": t["base"],
                                  "learn_cpu_s": sv["learn_cpu_s"]})
        if not cells:
            continue
        for c in cells:
            c["dpsnr"] = round(c["survey_psnr"] - c["scratch_psnr"], 3)
        flat += cells
        lines += [f"\n#### {ds}\n", "| tile | half | scratch PSNR | survey PSNR | dPSNR | scratch CPU s | survey CPU s "
                  "(fine-tune) | bases scratch -> survey |", "|---|---|---|---|---|---|---|---|"]
        for c in cells:
            lines.append(f"| {c['tile']} | {c['half']} | {c['scratch_psnr']:.3f} | {c['survey_psnr']:.3f} | "
                         f"{c['dpsnr']:+.3f} | {c['scratch_cpu_s']:.1f} | {c['survey_cpu_s']:.1f} | "
                         f"{c['scratch_base']} -> {c['survey_base']} |")
        for half in ("A", "B", "all"):
            sel = [c for c in cells if half == "all" or c["half"] == half]
            if sel:
                d = [c["dpsnr"] for c in sel]
                lines.append(f"| **{half}** ({len(sel)}) | | | | mean {np.mean(d):+.3f}, worst {min(d):+.3f} | "
                             f"median {statistics.median(c['scratch_cpu_s'] for c in sel):.1f} | "
                             f"median {statistics.median(c['survey_cpu_s'] for c in sel):.1f} | |")
        learns = sorted({c["learn_cpu_s"] for c in cells})
        lines.append(f"\none-off survey learning: {', '.join(f'{x:.0f}' for x in learns[:4])}"
                     f"{' ...' if len(learns) > 4 else ''} CPU s (median {statistics.median(learns):.0f})")
    sp = by.get(("speed", "survey", None))
    scr = [by[("speed", "scratch", r)]["cpu_s"] for r in range(SPEED_REPEATS) if ("speed", "scratch", r) in by]
    if sp and scr:
        ft = statistics.median(sp["finetune_cpu_s"])
        sc = statistics.median(scr)
        lines += ["\n#### speed: one 512-px tile + 16-px halo (544x544 HR), 1 thread, CPU s\n",
                  "| per-tile best from scratch | survey fine-tune | ratio | survey learning (one-off, 12 tiles) |",
                  "|---|---|---|---|",
                  f"| {' / '.join(f'{x:.1f}' for x in scr)} (median {sc:.1f}) | "
                  f"{' / '.join(f'{x:.1f}' for x in sp['finetune_cpu_s'])} (median {ft:.1f}) | "
                  f"1/{sc / ft:.1f} | {sp['learn_cpu_s']:.0f} |"]
        tiles = int(np.ceil(40000 / SPEED_TILE)) ** 2
        hours = (tiles * ft / 16 + sp["learn_cpu_s"]) / 3600
        lines.append(f"\nprojection, 40 000 x 40 000 px on 16 cores: {tiles} tiles x {ft:.1f} CPU s / 16 + "
                     f"{sp['learn_cpu_s']:.0f} s learning = {hours:.2f} h")
        flat.append({"dataset": "speed", "scratch_cpu_s": sc, "survey_cpu_s": ft, "learn_cpu_s": sp["learn_cpu_s"],
                     "projected_hours_16_cores": round(hours, 2)})
    return "\n".join(lines), flat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=["thermal", "sentinel", "landsat7", "speed"],
                    choices=["thermal", "sentinel", "landsat7", "speed"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    key = code_key()
    jobs = jobs_for(args.only)
    # the longest cells first, so the pool does not end on one
    jobs.sort(key=lambda j: (j["kind"] != "survey", j["dataset"] != "speed"))
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            rows = pool.map(_run_cached, [(j, key) for j in jobs], chunksize=1)
    else:
        rows = [_run_cached((j, key)) for j in jobs]
    text, flat = summarise(rows)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "survey.json").write_text(json.dumps({"code": key, "rows": rows, "summary": flat}, indent=2, default=str))
    if flat:
        keys = sorted({k for r in flat for k in r})
        with open(OUT / "survey.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(flat)
    print(f"wrote {OUT / 'survey.json'} / .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
