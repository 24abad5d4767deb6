"""Conservativeness on real pasted objects (``python benchmarks/stress.py --only objects``).

For every draw of :data:`pasted_objects.DRAWS` the object is pasted into the host's guide only and
the host is super-resolved with the preset; inside the pasted silhouette the output is scored
against the truth and compared with bicubic and with the same run on the unmodified guide (the
"no-paste" run, one per host). Pass: within :data:`TOLERANCE_DB` of both. The whole-image gain
over bicubic (and over back-projection) says what the preset still gains elsewhere.

Runs go through the public ``cmsr.run`` (what ``cmsr sr`` and the pipeline use), one process per
core, one thread each; each output is cached under ``out/objects/cache`` by a key of the config,
the input and a hash of the core's source, so a rerun with other draws or a knob changed computes
only what changed. Writes ``objects.json`` / ``objects.csv`` and one picture per draw (guide |
output | |output - no-paste| x4 with the silhouette outlined).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import pasted_objects as po

SCALE = 4
#: a draw passes when the pasted region is within this of bicubic and of the no-paste run
TOLERANCE_DB = 0.3


def psnr(x: np.ndarray, gt: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR of uint8-rounded ``x`` against ``gt`` (grey levels), over ``where`` (all if None)."""
    d = np.clip(np.round(x), 0, 255) - gt
    mse = float(np.mean(d[where] ** 2 if where is not None else d**2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _core_fingerprint(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted((root / "cmsr").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _super_resolve(job: tuple) -> np.ndarray:
    """One run: (data, dataset, scene, draw index or None, config, method, seed) -> HR image."""
    import cmsr

    data, dataset, scene, draw, config, method, seed = job
    lr, guide, _ = po.read_pair(data, dataset, scene)
    if draw is not None:
        d = po.DRAWS[draw]
        guide, _ = po.paste(guide, *po.cut(po.DONORS[d.donor], data, SCALE), d)
    result = cmsr.run(lr, guide if method in ("cmsr", "guided") else None, SCALE, config, method=method, seed=seed)
    return result.image.astype(np.float32)


class Runner:
    """Runs and caches ``cmsr.run`` outputs, ``jobs`` processes at a time."""

    def __init__(self, data: Path, root: Path, out: Path, jobs: int) -> None:
        self.data, self.cache, self.jobs = data, out / "cache", jobs
        self.cache.mkdir(parents=True, exist_ok=True)
        self.fingerprint = _core_fingerprint(root)

    def _path(self, job: tuple) -> Path:
        _, dataset, scene, draw, config, method, seed = job
        key = repr((self.fingerprint, dataset, scene, draw, repr(config), method, seed,
                    po.DRAWS[draw] if draw is not None else None))
        return self.cache / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npy"

    def run(self, jobs: list[tuple]) -> list[np.ndarray]:
        todo = [j for j in dict.fromkeys(jobs) if not self._path(j).exists()]
        if todo:
            print(f"{len(todo)} run(s) to compute ({len(jobs) - len(todo)} cached), {self.jobs} process(es)", flush=True)
            with ProcessPoolExecutor(self.jobs, initializer=_init_worker) as pool:
                for job, image in zip(todo, pool.map(_super_resolve, todo)):
                    np.save(self._path(job), image)
                    print(f"  done {job[1]} {job[2]} draw {job[3]} {job[5]}", flush=True)
        return [np.load(self._path(j)) for j in jobs]


def _picture(path: Path, guide: np.ndarray, out: np.ndarray, nopaste: np.ndarray, region: np.ndarray) -> None:
    import scipy.ndimage as ndi
    from PIL import Image

    edge = region & ~ndi.binary_erosion(region)
    grey = lambda a: np.repeat(np.clip(a, 0, 255)[..., None], 3, -1)  # noqa: E731
    panels = [guide.copy(), grey(out), grey(np.abs(out - nopaste) * 4)]
    for p in panels:
        p[edge] = (255, 0, 0)
    Image.fromarray(np.concatenate(panels, 1).astype(np.uint8)).save(path)


def run_objects(config, label: str, data: Path, root: Path, out: Path, jobs: int, seed: int,
                draws: list[int] | None) -> list[dict]:
    """Score every draw (or ``draws``); returns the rows and writes the table files and pictures."""
    out.mkdir(parents=True, exist_ok=True)
    chosen = [po.DRAWS[i] for i in (draws if draws is not None else range(len(po.DRAWS)))]
    hosts = list(dict.fromkeys((d.host_dataset, d.host_scene) for d in chosen))
    runner = Runner(data, root, out, jobs)
    job = lambda ds, sc, draw, method: (data, ds, sc, draw, config if method == "cmsr" else None, method, seed)  # noqa: E731
    baselines = runner.run([job(ds, sc, None, m) for ds, sc in hosts for m in ("bicubic", "bp")])
    bic = {h: baselines[2 * i] for i, h in enumerate(hosts)}
    bp = {h: baselines[2 * i + 1] for i, h in enumerate(hosts)}
    learned = runner.run([job(ds, sc, None, "cmsr") for ds, sc in hosts]
                         + [job(d.host_dataset, d.host_scene, d.index, "cmsr") for d in chosen])
    nopaste = dict(zip(hosts, learned[:len(hosts)]))
    cuts = {name: po.cut(po.DONORS[name], data, SCALE) for name in {d.donor for d in chosen}}
    rows = []
    for d, image in zip(chosen, learned[len(hosts):]):
        host = (d.host_dataset, d.host_scene)
        _, guide, gt = po.read_pair(data, *host)
        pasted, region = po.paste(guide, *cuts[d.donor], d)
        p_out, p_bic, p_np = (psnr(a, gt, region) for a in (image, bic[host], nopaste[host]))
        row = {
            "draw": d.index, "split": d.split, "modality": "thermal" if d.host_dataset == po.THERMAL else "nir",
            "host": d.host_scene, "object": po.describe(d), "region_px": int(region.sum()), "preset": label,
            "region_out": round(p_out, 3), "region_bicubic": round(p_bic, 3), "region_nopaste": round(p_np, 3),
            "vs_bicubic_db": round(p_out - p_bic, 3), "vs_nopaste_db": round(p_out - p_np, 3),
            "whole_gain_db": round(psnr(image, gt) - psnr(bic[host], gt), 3),
            "nopaste_whole_vs_bp_db": round(psnr(nopaste[host], gt) - psnr(bp[host], gt), 3),
        }
        row["pass"] = bool(row["vs_bicubic_db"] >= -TOLERANCE_DB and row["vs_nopaste_db"] >= -TOLERANCE_DB)
        rows.append(row)
        _picture(out / f"draw_{d.index:02d}.png", pasted, image, nopaste[host], region)
    (out / "objects.json").write_text(json.dumps(rows, indent=1))
    with open(out / "objects.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    """The draws, then per split and modality: passes, mean and worst margins."""
    print("| draw | split | object | px | vs bicubic dB | vs no-paste dB | whole gain dB | pass |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['draw']} | {r['split']} | {r['object']} | {r['region_px']} | {r['vs_bicubic_db']:+.2f} | "
              f"{r['vs_nopaste_db']:+.2f} | {r['whole_gain_db']:+.2f} | {'PASS' if r['pass'] else 'FAIL'} |")
    print("\n| split | modality | draws | pass | mean vs bicubic | worst vs bicubic | mean vs no-paste | worst vs no-paste |")
    print("|---|---|---|---|---|---|---|---|")
    for split in ("A", "B", "all"):
        for modality in ("thermal", "nir", "all"):
            sel = [r for r in rows if split in ("all", r["split"]) and modality in ("all", r["modality"])]
            if not sel:
                continue
            vb, vn = [r["vs_bicubic_db"] for r in sel], [r["vs_nopaste_db"] for r in sel]
            print(f"| {split} | {modality} | {len(sel)} | {sum(r['pass'] for r in sel)} | {np.mean(vb):+.2f} | "
                  f"{min(vb):+.2f} | {np.mean(vn):+.2f} | {min(vn):+.2f} |")
