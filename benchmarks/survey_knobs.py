"""Knobs of the survey path on the dev pairs, fit on one half, confirmed on the other (issue 12,
items 1 and 4). A benchmark, not a test.

Two kinds of knob: inference cuts (item 4: the survey path fine-tunes each tile in one stage, so
its training does not depend on the inference, and two inference settings differ only in the
image) and the fine-tune's budget (item 1). Per dataset (ULB17-VT thermal, 16 pairs; EPFL NIR, 2), each half (A: even
index, B: odd) is scored with a survey model learned on the *other* half, fine-tuned pair by pair
under each setting (the shipped ``best`` and the cuts). Fit on A, confirm on B: a cut becomes the
default only if it is free on both. uint8 PSNR against the GT; CPU seconds of the fine-tune
(1 thread).

    python benchmarks/survey_knobs.py --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAIRS = ROOT.parent / "shared" / "data" / "pairs"
OUT = ROOT / "benchmarks" / "out"
DATASETS = ("ulb17vt_thermal_x4", "epfl_rgbnir_x4")
#: name -> (CMSRConfig changes, SurveyLearning changes)
CUTS: dict[str, tuple[dict, dict]] = {
    "shipped": ({}, {}),
    "gate_reference_1": ({"gate_reference_ensemble": False}, {}),
    "finetune_320": ({}, {"finetune_iters": 320}),
}


def _pairs(dataset: str) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    from PIL import Image

    folder = PAIRS / dataset
    out = []
    for n in sorted(p.name[: -len("_lr.png")] for p in folder.glob("*_lr.png")):
        out.append((n, np.asarray(Image.open(folder / f"{n}_lr.png").convert("L")),
                    np.asarray(Image.open(folder / f"{n}_guide.png").convert("RGB")),
                    np.asarray(Image.open(folder / f"{n}_gt.png").convert("L"))))
    return out


def run_half(job: tuple[str, str]) -> list[dict]:
    """Score half ``half`` of ``dataset`` under every cut, from a model learned on the other half."""
    import torch

    import cmsr
    from cmsr import survey_model as SM
    from cmsr.config import CMSRConfig
    from cmsr.metrics import psnr
    from cmsr.runtime import configure_allocator

    configure_allocator()
    torch.set_num_threads(1)
    dataset, half = job
    pairs = _pairs(dataset)
    mine = [i for i in range(len(pairs)) if (i % 2 == 0) == (half == "A")]
    other = [i for i in range(len(pairs)) if i not in mine]
    cfg = CMSRConfig.best()
    c0 = time.process_time()
    model = SM.learn_arrays([pairs[i][1] for i in other], [pairs[i][2] for i in other], 4, cfg, seed=0)
    learn_s = time.process_time() - c0
    rows = []
    for i in mine:
        name, lr, g, gt = pairs[i]
        for cut, (changes, learning) in CUTS.items():
            c0 = time.process_time()
            tile_cfg = SM.tile_config(cfg.replace(**changes), model, SM.SurveyLearning(**learning))
            r = cmsr.run_many([lr], [g], 4, tile_cfg, seeds=[0],
                              init_state=model.weights)[0]
            rows.append({"dataset": dataset, "half": half, "pair": name, "cut": cut,
                         "cpu_s": round(time.process_time() - c0, 2), "learn_cpu_s": round(learn_s, 1),
                         "psnr": round(psnr(np.asarray(r.image, np.float64), gt.astype(np.float64)), 3)})
        print(rows[-len(CUTS):], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    jobs = [(d, h) for d in DATASETS for h in ("A", "B")]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        rows = [r for part in pool.map(run_half, jobs, chunksize=1) for r in part]
    print("| dataset | half | cut | pairs | mean dPSNR vs shipped | worst | median CPU s | shipped median CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for d in DATASETS:
        for h in ("A", "B"):
            base = {r["pair"]: r for r in rows if r["dataset"] == d and r["half"] == h and r["cut"] == "shipped"}
            for cut in CUTS:
                if cut == "shipped":
                    continue
                sel = [r for r in rows if r["dataset"] == d and r["half"] == h and r["cut"] == cut]
                dd = [r["psnr"] - base[r["pair"]]["psnr"] for r in sel]
                print(f"| {d} | {h} | {cut} | {len(sel)} | {np.mean(dd):+.3f} | {min(dd):+.3f} | "
                      f"{np.median([r['cpu_s'] for r in sel]):.1f} | "
                      f"{np.median([b['cpu_s'] for b in base.values()]):.1f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "survey_knobs.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {OUT / 'survey_knobs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
