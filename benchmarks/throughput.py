"""Per-tile training throughput on this CPU (issue 5). A benchmark script, not a test.

Sub-commands (each prints a table and writes JSON/CSV under ``benchmarks/out/``):

* ``allocator`` -- the glibc allocator claim: the same training loop in fresh processes with and
  without :func:`cmsr.runtime.allocator_env`, alternating, medians of ``--repeats``; checks the
  outputs are bit-identical.
* ``pair`` -- one 320x240 dev pair at the paper preset from scratch (time, iterations, PSNR).
* (survey learning vs per-tile training: ``benchmarks/survey.py``)
* ``grid`` -- tiles per minute and PSNR for {scratch, warm} x K in {1, 4, 16, 64} with
  :func:`cmsr.train.train` (small Sentinel-2 tiles and a reduced budget: the full grid at
  the paper preset would take hours on 2 shared cores; the flags say which).

Every training goes through :func:`cmsr.train.train`, the one trainer (one tile is K = 1).

Thread counts are set explicitly (``--threads``) and reported with every number.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
PAIRS = DATA / "pairs" / "ulb17vt_thermal_x4"
SAMPLE = ROOT / "flows" / "sample"
OUT = ROOT / "benchmarks" / "out"

from cmsr.config import CMSRConfig  # noqa: E402
from cmsr.metrics import psnr  # noqa: E402


# --- data ---------------------------------------------------------------------------------------
def load_pair(name: str, folder: Path = PAIRS) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(lr (h, w) in [0, 1], guide (3, H, W) in [0, 1], gt uint8 (H, W)) of one dev pair."""
    from PIL import Image

    lr = np.asarray(Image.open(folder / f"{name}_lr.png").convert("L"), np.float32) / 255.0
    g = np.asarray(Image.open(folder / f"{name}_guide.png").convert("RGB"), np.float32) / 255.0
    gt = np.asarray(Image.open(folder / f"{name}_gt.png").convert("L"))
    return torch.from_numpy(lr), torch.from_numpy(g.transpose(2, 0, 1).copy()), gt


def pair_names(folder: Path = PAIRS) -> list[str]:
    return sorted(p.name[: -len("_lr.png")] for p in folder.glob("*_lr.png"))


def sentinel_tiles(tile: int, stride: int, count: int | None = None, degradation: str = "area", scale: int = 4,
                   sample: Path = SAMPLE, mosaic: int | None = None) -> tuple[list, list, list, list]:
    """Sentinel-2 survey tiles: RGB guide, NIR truth and its x``scale`` LR, survey-level normalisation.

    The guide and NIR are normalised once for the whole survey (2/98 percentiles), as a survey
    run does; tiles are ``tile`` HR px, taken every ``stride`` px, then mirrored copies if more are
    asked for than fit. ``mosaic``: first mirror-extend the scene to ``mosaic`` x ``mosaic`` px
    (for tiles larger than the 300x200 sample). Returns (lrs, guides, valids, truths) with truths (H, W) float in [0, 1].
    """
    import tifffile

    from cmsr.resize import degrade_torch

    rgb = tifffile.imread(sample / "rgb_10m.tif").astype(np.float32)
    nir = tifffile.imread(sample / "nir_10m_truth.tif").astype(np.float32)
    if mosaic:
        pads = ((0, max(0, mosaic - nir.shape[0])), (0, max(0, mosaic - nir.shape[1])))
        nir = np.pad(nir, pads, mode="symmetric")
        rgb = np.pad(rgb, pads + ((0, 0),), mode="symmetric")
    lo, hi = np.percentile(rgb.reshape(-1, 3), [2, 98], axis=0)
    rgb = ((rgb - lo) / (hi - lo)).astype(np.float32)
    nlo, nhi = np.percentile(nir, [2, 98])
    nir = ((nir - nlo) / (nhi - nlo)).astype(np.float32)
    rgb_t = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    nir_t = torch.from_numpy(nir)
    hh, ww = nir.shape
    boxes = [(y, x) for y in range(0, hh - tile + 1, stride) for x in range(0, ww - tile + 1, stride)]
    variants = [(False, False), (True, False), (False, True), (True, True)]
    lrs, guides, valids, truths = [], [], [], []
    want = count or len(boxes)
    k = 0
    while len(lrs) < want:
        (y, x), (fy, fx) = boxes[k % len(boxes)], variants[(k // len(boxes)) % 4]
        g = rgb_t[:, y:y + tile, x:x + tile]
        t = nir_t[y:y + tile, x:x + tile]
        dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
        if dims:
            g, t = torch.flip(g, dims), torch.flip(t, dims)
        lrs.append(degrade_torch(t.double(), scale, degradation).float())  # type: ignore[arg-type]
        guides.append(g.contiguous())
        valids.append(torch.ones(tile // scale, tile // scale, dtype=torch.bool))
        truths.append(t.numpy())
        k += 1
    return lrs, guides, valids, truths


def float_psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """PSNR of normalised images (peak 1)."""
    mse = float(np.mean((np.asarray(pred, np.float64) - truth) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _write(name: str, rows: list[dict], extra: dict | None = None) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"rows": rows, **(extra or {})}, indent=2, default=str))
    if rows:
        keys = sorted({k for r in rows for k in r})
        with open(OUT / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    print(f"wrote {OUT / name}.json/.csv")


# --- allocator ----------------------------------------------------------------------------------
def _alloc_child(loop: str, iters: int) -> None:
    """One timed training loop; prints JSON {seconds, checksum}."""
    import hashlib

    torch.manual_seed(0)
    if loop == "standin":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import floor

        layers = []
        for i, (cin, cout, k) in enumerate(floor.F_SR_LAYERS):
            layers.append(torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))
            if i < len(floor.F_SR_LAYERS) - 1:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), 1e-4)
        lr, _, _ = load_pair(pair_names()[0])
        big = torch.nn.functional.interpolate(lr[None, None], scale_factor=2, mode="bicubic", align_corners=False)
        gen = torch.Generator().manual_seed(0)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            y = int(torch.randint(0, big.shape[-2] - 48, (1,), generator=gen))
            x = int(torch.randint(0, big.shape[-1] - 48, (1,), generator=gen))
            f = big[..., y:y + 48, x:x + 48]
            son = torch.nn.functional.avg_pool2d(f, 2)
            up = torch.nn.functional.interpolate(son, scale_factor=2, mode="bicubic", align_corners=False)
            loss = (up + net(up) - f).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        blob = b"".join(p.detach().numpy().tobytes() for p in net.parameters())
    else:
        from cmsr.train import train

        lr, g, _ = load_pair(pair_names()[0])
        cfg = CMSRConfig.paper().replace(max_iters=iters, min_iters=10 * iters, gradual=False, self_ensemble=False)
        t0, c0 = time.perf_counter(), time.process_time()
        out = train([lr], [g], [torch.ones_like(lr, dtype=torch.bool)], 4, cfg, seeds=[0])[0]
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        blob = out.image.numpy().tobytes()
    print(json.dumps({"seconds": secs, "cpu_s": cpu, "checksum": hashlib.sha256(blob).hexdigest()[:16]}))


def cmd_allocator(args: argparse.Namespace) -> None:
    from cmsr.runtime import allocator_env

    rows = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base_env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for loop in args.loops:
        times: dict[str, list[float]] = {"default": [], "allocator_env": []}
        cpus: dict[str, list[float]] = {"default": [], "allocator_env": []}
        sums: set[str] = set()
        for rep in range(args.repeats):
            for mode in ("default", "allocator_env"):
                env = dict(base_env)
                if mode == "allocator_env":
                    env.update(allocator_env())
                res = subprocess.run([sys.executable, __file__, "_alloc_child", loop, str(args.iters)], env=env,
                                     capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                times[mode].append(r["seconds"])
                cpus[mode].append(r["cpu_s"])
                sums.add(r["checksum"])
                print(f"{loop} rep {rep} {mode}: {r['seconds']:.2f} s, {r['cpu_s']:.2f} CPU s ({r['checksum']})",
                      flush=True)
        med = {m: statistics.median(v) for m, v in times.items()}
        cmed = {m: statistics.median(v) for m, v in cpus.items()}
        rows.append({"loop": loop, "iters": args.iters, "threads": args.threads, "default_s": med["default"],
                     "allocator_env_s": med["allocator_env"], "speedup": med["default"] / med["allocator_env"],
                     "default_cpu_s": cmed["default"], "allocator_env_cpu_s": cmed["allocator_env"],
                     "speedup_cpu": cmed["default"] / cmed["allocator_env"], "load1": os.getloadavg()[0],
                     "identical_outputs": len(sums) == 1, "runs_default": times["default"],
                     "runs_allocator_env": times["allocator_env"]})
        print(f"{loop}: default {med['default']:.2f} s, allocator_env {med['allocator_env']:.2f} s -> "
              f"x{rows[-1]['speedup']:.2f} (CPU time x{rows[-1]['speedup_cpu']:.2f}), identical outputs: {len(sums) == 1}")
    _write("allocator", rows)


# --- one pair -----------------------------------------------------------------------------------
def cmd_pair(args: argparse.Namespace) -> None:
    from cmsr.runtime import configure_allocator
    from cmsr.train import train

    if args.allocator:
        configure_allocator()
    torch.set_num_threads(args.threads)
    cfg = CMSRConfig.preset(args.preset)
    rows = []
    for rep in range(args.repeats):
        name = args.name
        lr, g, gt = load_pair(name)
        t0, c0 = time.perf_counter(), time.process_time()
        out = train([lr], [g], [torch.ones_like(lr, dtype=torch.bool)], 4, cfg, seeds=[0])[0]
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
        p = psnr(np.clip(out.image.numpy() * 255.0, 0, 255), gt)
        rows.append({"pair": name, "preset": args.preset, "threads": args.threads, "allocator": args.allocator,
                     "seconds": secs, "cpu_s": cpu, "load1": os.getloadavg()[0], "iterations": out.stats["iterations"],
                     "stage_iterations": [s["iterations"] for s in out.stats["stages"]], "psnr": p})
        print(rows[-1], flush=True)
    med = statistics.median(r["seconds"] for r in rows)
    print(f"median {med:.1f} s over {len(rows)} runs ({args.threads} threads)")
    _write(f"pair_{args.preset}_t{args.threads}", rows, {"median_seconds": med})


# --- the K grid ---------------------------------------------------------------------------------
def cmd_grid(args: argparse.Namespace) -> None:
    from cmsr.runtime import configure_allocator
    from cmsr.train import train
    from cmsr.survey_model import SurveyLearning, learn, tile_config

    configure_allocator()
    torch.set_num_threads(args.threads)
    cfg = CMSRConfig.preset(args.preset).replace(degradation="area")
    if args.max_iters:
        cfg = cfg.replace(max_iters=args.max_iters, min_iters=min(cfg.min_iters, args.max_iters // 2))
    kmax = max(args.ks)
    lrs, guides, valids, truths = sentinel_tiles(args.tile, args.stride, count=kmax)
    warm = SurveyLearning(finetune_iters=args.finetune_iters, finetune_min_iters=args.finetune_iters // 3)
    t0 = time.perf_counter()
    model = learn(lrs, guides, valids, 4, cfg, seed=0, learning=warm)
    state = model.weights
    t_pre = time.perf_counter() - t0
    rows = []
    for mode in ("scratch", "warm"):
        for k in args.ks:
            c = cfg if mode == "scratch" else tile_config(cfg, model, warm)
            init = None if mode == "scratch" else state
            secs, cpus = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                outs = train(lrs[:k], guides[:k], valids[:k], 4, c, seeds=list(range(k)), init_state=init)
                secs.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            s = statistics.median(secs)
            cs = statistics.median(cpus)
            ps = [float_psnr(o.image.numpy(), truths[i]) for i, o in enumerate(outs)]
            rows.append({"mode": mode, "K": k, "threads": args.threads, "tile_px": args.tile, "seconds": s,
                         "cpu_s": cs, "tiles_per_cpu_min": 60.0 * k / cs, "load1": os.getloadavg()[0],
                         "tiles_per_min": 60.0 * k / s, "psnr_mean": float(np.mean(ps)),
                         "iters_mean": float(np.mean([o.stats["iterations"] for o in outs])), "runs": secs})
            print(rows[-1], flush=True)
    _write(f"grid_{args.preset}_t{args.threads}", rows,
           {"pretrain_s": t_pre, "max_iters": cfg.max_iters, "finetune_iters": args.finetune_iters})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_alloc_child":
        _alloc_child(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sp = ap.add_subparsers(dest="cmd", required=True)
    a = sp.add_parser("allocator")
    a.add_argument("--loops", nargs="+", default=["standin", "cmsr"])
    a.add_argument("--iters", type=int, default=150)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--threads", type=int, default=1)
    p = sp.add_parser("pair")
    p.add_argument("--name", default="006")
    p.add_argument("--preset", default="paper")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--allocator", action=argparse.BooleanOptionalAction, default=True)
    g = sp.add_parser("grid")
    g.add_argument("--preset", default="paper")
    g.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64])
    g.add_argument("--tile", type=int, default=64)
    g.add_argument("--stride", type=int, default=32)
    g.add_argument("--max-iters", type=int, default=80, help="per-stage cap (0 = the preset's)")
    g.add_argument("--finetune-iters", type=int, default=30)
    g.add_argument("--repeats", type=int, default=1)
    g.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"allocator": cmd_allocator, "pair": cmd_pair, "grid": cmd_grid}[args.cmd](args)


if __name__ == "__main__":
    main()
