"""Where the pasted-object loss comes from (issue 14, part 2): each part of the default measured alone.

``python benchmarks/object_causes.py [--jobs 2] [--draws A|B|i,j]`` (a script, not a test).

For every draw of :data:`pasted_objects.DRAWS` the default preset's pieces are run one at a time,
on the pasted guide and on the unmodified one, and scored inside the pasted silhouette:

* **registration**: the affine the preset's registration finds, with and without the paste; the
  mean change of the guide's displacement (HR px) says whether the object pulled it;
* **base choice**: which candidate ``AutoBase`` picks, with and without the paste;
* **the base alone** (no training): the chosen base's PSNR inside the silhouette, pasted vs
  no-paste, and the no-paste base's gain over back-projection there (the detail the real guide
  gives under the silhouette, which the paste removes);
* **the gate**: the last stage's guide gate ``c`` averaged inside the silhouette (0 = the target
  alone), with and without the paste;
* **the trained run**: the full run's change (pasted vs no-paste) split into the base's change and
  what training on top of it changes (the learned branches, the gated blend, back-projection);
* **the guide-free ceiling**: the same preset without a guide (``without_guide()``) inside the
  silhouette. Where the no-paste run beats it by more than the tolerance, the guide's detail there
  was worth more than the tolerance, and no run on the pasted guide (which no longer has it) can
  come within the tolerance of the no-paste run without inventing it: the "vs no-paste" bar is
  then out of reach by construction, and "vs guide-free" is the bar that measures harm.

The full runs are ``object_stress``'s (same cache); the rest is seconds per draw. Writes
``out/objects/causes.json`` / ``causes.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import object_stress as runs  # noqa: E402
import pasted_objects as po  # noqa: E402
from cmsr.baselines import guide_confidence  # noqa: E402
from cmsr.bases import BACK_PROJECTED, choose_base, make_base  # noqa: E402
from cmsr.config import DEFAULT_PRESET, CMSRConfig  # noqa: E402
from cmsr.guide import TileGuide  # noqa: E402
from cmsr.inputs import prepare_tiles, restore  # noqa: E402
from cmsr.registration import register  # noqa: E402
from cmsr.warp import AffineWarp, displacement_px  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pairs"
SCALE = runs.SCALE


def pieces(lr: np.ndarray, guide: np.ndarray, config: CMSRConfig) -> dict:
    """The preset's untrained pieces on one pair: displacement, base choice, base images, gate."""
    t = prepare_tiles([lr], [guide], SCALE, needs_guide=True, target_range=None, guide_range=None)[0]
    small, valid = t.target.lr, t.target.valid
    affine = register(t.guide, small, valid, SCALE, config.registration) if config.registration else None
    warp = AffineWarp(affine) if affine is not None else None
    tile_guide = TileGuide(t.guide.contiguous(), tuple(small.shape), warp, config.guide.train_sampling)
    base = choose_base(small, valid, config.base, tile_guide.at_lr_centres(), config.degradation)
    grid = tile_guide.stage_grid(SCALE)
    image = lambda b: restore(t, make_base(small, SCALE, b, grid if b.needs_guide else None,  # noqa: E731
                                           config.degradation), SCALE)
    h, w = grid.shape[-2:]
    gate = guide_confidence(small, grid, SCALE, config.guide_gate).numpy() if config.guide_gate else np.ones((h, w))
    return {"displacement": displacement_px(warp, h, w) if warp is not None else np.zeros((h, w, 2), np.float32),
            "base": base.name, "base_image": image(base), "bp_image": image(BACK_PROJECTED), "gate": gate}


def causes(config: CMSRConfig, jobs: int, draws: list[int] | None, seed: int = 0) -> list[dict]:
    chosen = [po.DRAWS[i] for i in (draws if draws is not None else range(len(po.DRAWS)))]
    hosts = list(dict.fromkeys((d.host_dataset, d.host_scene) for d in chosen))
    runner = runs.Runner(DATA, ROOT, ROOT / "benchmarks" / "out" / "objects", jobs)
    job = lambda ds, sc, draw, cfg, method: (DATA, ds, sc, draw, cfg, method, seed)  # noqa: E731
    outs = runner.run([job(ds, sc, None, None, "bicubic") for ds, sc in hosts]
                      + [job(ds, sc, None, config, "cmsr") for ds, sc in hosts]
                      + [job(ds, sc, None, config, "zssr") for ds, sc in hosts]
                      + [job(d.host_dataset, d.host_scene, d.index, config, "cmsr") for d in chosen])
    n = len(hosts)
    bicubic, nopaste, guide_free = (dict(zip(hosts, outs[k * n:(k + 1) * n])) for k in range(3))
    pasted_runs = outs[3 * n:]
    host_pieces: dict = {}
    rows = []
    for d, pasted_run in zip(chosen, pasted_runs):
        host = (d.host_dataset, d.host_scene)
        lr, guide, gt = po.read_pair(DATA, *host)
        if host not in host_pieces:
            host_pieces[host] = pieces(lr, guide, config)
        a = host_pieces[host]
        pasted_guide, region = po.paste(guide, *po.cut(po.DONORS[d.donor], DATA, SCALE), d)
        b = pieces(lr, pasted_guide, config)
        score = lambda x: runs.psnr(x, gt, region)  # noqa: E731
        run_change = score(pasted_run) - score(nopaste[host])
        base_change = score(b["base_image"]) - score(a["base_image"])
        row = {
            "draw": d.index, "split": d.split, "modality": "thermal" if d.host_dataset == po.THERMAL else "nir",
            "object": po.describe(d),
            "registration_change_px": round(float(np.abs(b["displacement"] - a["displacement"]).mean()), 2),
            "base_nopaste": a["base"], "base_pasted": b["base"],
            "guide_detail_db": round(score(a["base_image"]) - score(a["bp_image"]), 2),
            "gate_nopaste": round(float(a["gate"][region].mean()), 2),
            "gate_pasted": round(float(b["gate"][region].mean()), 2),
            "run_vs_nopaste_db": round(run_change, 2),
            "from_base_db": round(base_change, 2),
            "from_training_db": round(run_change - base_change, 2),
            "run_vs_bicubic_db": round(score(pasted_run) - score(bicubic[host]), 2),
            "run_vs_guide_free_db": round(score(pasted_run) - score(guide_free[host]), 2),
            "nopaste_vs_guide_free_db": round(score(nopaste[host]) - score(guide_free[host]), 2),
        }
        row["nopaste_bar_reachable"] = row["nopaste_vs_guide_free_db"] <= runs.TOLERANCE_DB
        rows.append(row)
    return rows


COLUMNS = [("draw", "draw"), ("split", "split"), ("modality", "mod"), ("registration_change_px", "reg change px"),
           ("base_nopaste", "base no-paste"), ("base_pasted", "base pasted"), ("guide_detail_db", "guide detail dB"),
           ("gate_nopaste", "gate no-paste"), ("gate_pasted", "gate pasted"), ("run_vs_nopaste_db", "vs no-paste"),
           ("from_base_db", "of which base"), ("from_training_db", "of which training"),
           ("run_vs_bicubic_db", "vs bicubic"), ("run_vs_guide_free_db", "vs guide-free"),
           ("nopaste_vs_guide_free_db", "no-paste vs guide-free"), ("nopaste_bar_reachable", "no-paste bar reachable")]


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        cells = [("yes" if r[k] else "no") if isinstance(r[k], bool) else
                 (f"{r[k]:+.2f}" if k.endswith("_db") else str(r[k])) for k, _ in COLUMNS]
        print("| " + " | ".join(cells) + " |")
    print("\n| split | draws | mean vs no-paste | of which base | of which training | worst vs guide-free | "
          "no-paste bar reachable | registration moved > 1 px | base flipped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for split in ("A", "B", "all"):
        sel = [r for r in rows if split in ("all", r["split"])]
        if sel:
            print(f"| {split} | {len(sel)} | {np.mean([r['run_vs_nopaste_db'] for r in sel]):+.2f} | "
                  f"{np.mean([r['from_base_db'] for r in sel]):+.2f} | {np.mean([r['from_training_db'] for r in sel]):+.2f} | "
                  f"{min(r['run_vs_guide_free_db'] for r in sel):+.2f} | {sum(r['nopaste_bar_reachable'] for r in sel)} | "
                  f"{sum(r['registration_change_px'] > 1 for r in sel)} | {sum(r['base_nopaste'] != r['base_pasted'] for r in sel)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--jobs", type=int, default=2, help="processes for the full runs (one thread each)")
    ap.add_argument("--draws", default=None, help="comma-separated draw indexes, or A / B (a split)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    draws = None
    if args.draws in ("A", "B"):
        draws = [d.index for d in po.DRAWS if d.split == args.draws]
    elif args.draws:
        draws = [int(x) for x in args.draws.split(",")]
    rows = causes(CMSRConfig.preset(args.preset), args.jobs, draws)
    out = ROOT / "benchmarks" / "out" / "objects"
    (out / "causes.json").write_text(json.dumps(rows, indent=1))
    with open(out / "causes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
