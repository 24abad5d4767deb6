"""Where one 512-px tile's CPU time goes, end to end (issue 12, item 4). A benchmark, not a test.

One 544x544 HR tile (512 + a 16-px halo; 136x136 LR) of the mirror-extended Sentinel-2 clip
(``benchmarks/survey.py``'s speed tile), the shipped ``best`` preset, one thread, under cProfile:

* ``scratch`` -- per-tile ``best`` from scratch (what every tile cost before survey learning);
* ``finetune`` -- one tile fine-tuned from a survey model (the model itself is learned cheaply
  here, 2 tiles x 24 iterations: its quality does not change what a fine-tune computes, only
  when the lr policy may stop it, and the 160-iteration cap bounds that).

Time is attributed to the phases by the cumulative time of the functions that implement them
(registration, base choice, training steps, the reconstruction check, each stage's inference
split into the guided self-ensemble, the gate's second self-ensemble without F_g, the gate's
confidence and the final back-projection). Prints a table, writes
``benchmarks/out/tile_profile.json``.

    python benchmarks/tile_profile.py               # both modes
    python benchmarks/tile_profile.py --modes finetune
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "out"

# (phase, module file suffix, function name): cumulative time of that function
PHASES = (
    ("registration", "cmsr/registration.py", "register"),
    ("base choice", "cmsr/bases.py", "choose_base"),
    ("training: father draws", "cmsr/augment.py", "sample_augmentation"),
    ("training: forward + loss", "cmsr/losses.py", "batch_losses"),
    ("training: backward", "torch/_tensor.py", "backward"),
    ("training: Adam", "cmsr/optim.py", "step"),
    ("training: reconstruction check", "cmsr/losses.py", "reconstruction_errors"),
    ("inference (all)", "cmsr/infer.py", "infer_stage"),
    ("inference: self-ensembles (guided + gate's reference)", "cmsr/infer.py", "_ensemble"),
    ("inference: gate confidence", "cmsr/baselines.py", "guide_confidence"),
    ("inference/base: back-projection (everywhere)", "cmsr/baselines.py", "back_projection"),
    ("base: guided filter (everywhere)", "cmsr/baselines.py", "guided_filter_upsample"),
)


def _cumulative(stats: pstats.Stats) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for (path, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for phase, suffix, fn in PHASES:
            if name == fn and path.replace("\\", "/").endswith(suffix):
                t, n = out.get(phase, (0.0, 0))
                out[phase] = (t + ct, n + nc)
    return out


def profile(mode: str) -> dict:
    import torch

    import cmsr
    from cmsr import survey_model as SM
    from cmsr.config import CMSRConfig
    from cmsr.runtime import configure_allocator
    from survey import speed_tile

    configure_allocator()
    torch.set_num_threads(1)
    cfg = CMSRConfig.best().replace(degradation="area")
    lrs, guides, t_range, g_range = speed_tile(2)
    kw = dict(target_range=t_range, guide_range=g_range)
    init, run_cfg = None, cfg
    if mode == "finetune":
        model = SM.learn_arrays(lrs, guides, 4, cfg, learning=SM.SurveyLearning(sample_tiles=2, iterations_per_stage=24),
                                **kw)
        init, run_cfg = model.weights, SM.tile_config(cfg, model)
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    r = cmsr.run_many([lrs[0]], [guides[0]], 4, run_cfg, seeds=[0], init_state=init, **kw)[0]
    prof.disable()
    total = time.process_time() - c0
    phases = _cumulative(pstats.Stats(prof))
    return {"mode": mode, "cpu_s": round(total, 2), "iterations": r.stats.get("iterations"),
            "stages": [s["iterations"] for s in r.stats.get("stages", [])], "base": r.stats.get("base"),
            "phases": {k: {"cpu_s": round(v[0], 2), "share": round(v[0] / total, 3), "calls": v[1]}
                       for k, v in phases.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["scratch", "finetune"], choices=["scratch", "finetune"])
    args = ap.parse_args(argv)
    rows = [profile(m) for m in args.modes]
    print("| phase | " + " | ".join(f"{r['mode']} CPU s (share)" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| **total** | " + " | ".join(f"{r['cpu_s']:.1f} ({r['iterations']} its, {r['base']})" for r in rows) + " |")
    for phase, _, _ in PHASES:
        cells = [r["phases"].get(phase) for r in rows]
        print(f"| {phase} | " + " | ".join(f"{c['cpu_s']:.1f} ({100 * c['share']:.0f} %)" if c else "-" for c in cells)
              + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tile_profile.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {OUT / 'tile_profile.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
