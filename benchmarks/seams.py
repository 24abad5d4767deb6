"""Seams with the learned method: per-tile training vs the survey model (issue 12, item 3).

``cmsr run`` on the bundled Sentinel-2 clip (RGB 10 m, NIR 40 m) with the shipped default
(``--method cmsr``, preset ``best``) in many small tiles (``--tile-size 64``: 20 tiles), once with
per-tile training (``--no-survey-model``, every tile deciding its own base and learning alone) and
once as shipped (the survey model). Reads the job report's seam ratio (mean |difference| across
tile borders / across LR-pixel borders inside tiles; 1 = no seam) and scores the output against the
real 10 m NIR (PSNR on its range). Copies both quick-looks and writes a border picture (the
output's horizontal + vertical gradient magnitude, tile borders where seams would show) to
``benchmarks/out/seams/``; the table goes to ``benchmarks/out/seams.json``.

    python benchmarks/seams.py [--tile-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "flows" / "sample"
OUT = ROOT / "benchmarks" / "out"
MODES = {"per-tile": ["--no-survey-model"], "survey model": []}


def gradient_picture(img: np.ndarray, path: Path, tile: int) -> None:
    """|d/dx| + |d/dy| of ``img`` on a shared 99th-percentile scale, with the tile grid marked by
    ticks on the frame only (so seams, if any, are the image's own)."""
    from PIL import Image

    g = np.zeros_like(img)
    g[:, 1:] += np.abs(np.diff(img, axis=1))
    g[1:, :] += np.abs(np.diff(img, axis=0))
    g = np.nan_to_num(g)
    top = float(np.percentile(g, 99)) or 1.0
    pic = (255 * np.clip(g / top, 0, 1)).astype(np.uint8)
    pic = np.pad(pic, 4, constant_values=0)
    for k in range(tile, img.shape[1], tile):
        pic[:4, k + 4] = pic[-4:, k + 4] = 255
    for k in range(tile, img.shape[0], tile):
        pic[k + 4, :4] = pic[k + 4, -4:] = 255
    Image.fromarray(pic).resize((pic.shape[1] * 2, pic.shape[0] * 2), Image.NEAREST).save(path)


def run(mode: str, flags: list[str], tile: int, workers: int, keep: Path) -> dict:
    import rasterio

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sr.tif"
        cmd = [sys.executable, "-c", "from flows.cli import main; main()", "run", str(SAMPLE / "rgb_10m.tif"),
               str(SAMPLE / "nir_40m.tif"), "-o", str(out), "--tile-size", str(tile), "--workers", str(workers),
               "--quiet", *flags]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"cmsr run ({mode}) failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        report = json.loads(next(Path(tmp).glob("sr*.json")).read_text())
        with rasterio.open(out) as ds:
            img = ds.read(1).astype(np.float64)
        with rasterio.open(SAMPLE / "nir_10m_truth.tif") as ds:
            truth = ds.read(1).astype(np.float64)
        slug = mode.replace(" ", "_")
        for q in Path(tmp).glob("*.png"):
            shutil.copy(q, keep / f"{slug}.{q.name}")
        gradient_picture(img, keep / f"{slug}.gradients.png", tile)
    ok = np.isfinite(img) & np.isfinite(truth)
    rng = float(np.ptp(truth[ok]))
    mse = float(np.mean((img[ok] - truth[ok]) ** 2))
    totals = report.get("totals", {})
    tiles = report.get("tiles", [])
    bases = sorted({b.get("base") for t in tiles for b in (t.get("stats", {}).get("bands") or [t.get("stats", {})])
                    if b.get("base")})
    return {"mode": mode, "tile_size": tile, "seam_ratio": totals.get("seam_ratio"),
            "seam_across": totals.get("seam_across"), "seam_inside": totals.get("seam_inside"),
            "psnr": round(10 * np.log10(rng ** 2 / mse), 3), "wall_s": round(wall, 1), "bases": bases,
            "tiles": len(tiles), "survey_model": report.get("survey_model")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    keep = OUT / "seams"
    keep.mkdir(parents=True, exist_ok=True)
    rows = [run(m, f, args.tile_size, args.workers, keep) for m, f in MODES.items()]
    print("| mode | tiles | seam ratio | PSNR vs 10 m NIR | bases | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sr = f"{r['seam_ratio']:.3f}" if r["seam_ratio"] is not None else "-"
        print(f"| {r['mode']} | {r['tiles']} | {sr} | {r['psnr']:.3f} | {', '.join(r['bases'])} | {r['wall_s']} |")
    (OUT / "seams.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"wrote {OUT / 'seams.json'} and pictures in {keep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
