"""Quality benchmark on the dev pairs: every method, one table per dataset, CSV + JSON.

Not a test: it trains networks. Usage (from the repo root)::

    python benchmarks/quality.py                              # everything, all pairs (slow on CPU)
    python benchmarks/quality.py --methods bicubic bp guided  # the cheap baselines
    python benchmarks/quality.py --methods cmsr-fast --scenes 3 --datasets ulb17vt_thermal_x4
    python benchmarks/quality.py --methods cmsr-fast --iters 100   # capped budget (say so!)

Method specs: ``bicubic``, ``bp``, ``guided``, ``zssr[-PRESET]``, ``cmsr[-PRESET][-nowarp]``
(PRESET in paper/fast/best; without one, the default preset).

Scoring: PSNR on the uint8-rounded output (full image and 4-px shave), SSIM, RMSE, against
``_gt.png``. The Middlebury depth LRs were min-max stretched to 0..255 after the bicubic
downscale (see tests/test_resize.py), so their outputs are mapped back to GT units with the
per-image affine map ``lr ~ a * imresize(gt, 1/4) + b`` (fitted on unclipped LR pixels) before
scoring; the same map is applied to every method, so the comparison between methods is fair.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cmsr  # noqa: E402
from cmsr.metrics import score  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pairs"
OUT = ROOT / "benchmarks" / "out"
PRESETS = ("paper", "fast", "best")
DEFAULT_METHODS = ("bicubic", "bp", "guided", "zssr-fast", "cmsr-fast", "cmsr-paper", "cmsr-best",
                   "cmsr-nowarp")


@dataclass(frozen=True)
class MethodSpec:
    """One column of the table: a method, a preset and ablations."""

    name: str
    method: str
    preset: str | None
    no_warp: bool

    @staticmethod
    def parse(spec: str) -> "MethodSpec":
        parts = spec.split("-")
        method = parts[0]
        if method not in cmsr.METHODS:
            raise SystemExit(f"unknown method {spec!r}")
        preset = next((p for p in parts[1:] if p in PRESETS), None)
        no_warp = "nowarp" in parts[1:]
        unknown = [p for p in parts[1:] if p not in PRESETS and p != "nowarp"]
        if unknown or (method not in ("cmsr", "zssr") and (preset or no_warp)):
            raise SystemExit(f"bad method spec {spec!r}")
        return MethodSpec(spec, method, preset, no_warp)

    def config(self, iters: int | None):  # -> CMSRConfig
        cfg = cmsr.CMSRConfig.preset(self.preset or cmsr.DEFAULT_PRESET)
        if self.no_warp:
            cfg = cfg.without_warp()
        if iters is not None:
            cfg = cfg.replace(max_iters=iters, min_iters=min(cfg.min_iters, max(1, iters // 2)))
        return cfg


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def stretch_map(gt: np.ndarray, lr: np.ndarray) -> tuple[float, float]:
    """(a, b) with ``lr ~ a * imresize(gt, 1/4) + b`` on unclipped pixels."""
    down = cmsr.imresize(gt.astype(np.float64), 0.25)
    inner = (lr > 0) & (lr < 255)
    a, b = np.linalg.lstsq(np.stack([down[inner], np.ones(int(inner.sum()))], 1),
                           lr[inner].astype(np.float64), rcond=None)[0]
    return float(a), float(b)


def scenes(dataset: str, subset: list[str] | None, limit: int | None) -> list[str]:
    names = sorted(p.name[: -len("_gt.png")] for p in (DATA / dataset).glob("*_gt.png"))
    if subset:
        names = [n for n in names if n in subset]
    if limit is not None:
        # evenly spread over the sorted list, so a small subset is not just the first scenes
        idx = np.unique(np.linspace(0, len(names) - 1, limit).round().astype(int)) if limit < len(names) else range(len(names))
        names = [names[i] for i in idx]
    return names


def run_one(dataset: str, name: str, spec: MethodSpec, args: argparse.Namespace) -> dict:
    base = DATA / dataset / name
    lr, guide, gt = _load(Path(f"{base}_lr.png")), _load(Path(f"{base}_guide.png")), _load(Path(f"{base}_gt.png"))
    scale = gt.shape[0] // lr.shape[0]
    cfg = spec.config(args.iters) if spec.method in ("cmsr", "zssr") else None
    walls, cpus, result = [], [], None
    for rep in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = cmsr.run(lr, guide, scale, cfg, method=spec.method, seed=args.seed + rep, device=args.device)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        if args.repeats > 1 and rep == 0:
            first = result
    assert result is not None
    out = result.image.astype(np.float64)
    a, b = (1.0, 0.0)
    if dataset.startswith("middlebury"):
        a, b = stretch_map(gt, lr)
        out = (out - b) / a
    row = {"dataset": dataset, "scene": name, "method": spec.name, **score(out, gt.astype(np.float64)),
           "seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
           "iterations": result.stats.get("iterations"), "mean_warp_px": result.stats.get("mean_warp_px"),
           "hr_shape": list(gt.shape), "stretch": [a, b] if (a, b) != (1.0, 0.0) else None}
    if args.repeats > 1:
        row["repeat_max_abs_diff"] = float(np.nanmax(np.abs(first.image - result.image)))
    return row


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for m in dict.fromkeys(r["method"] for r in rows if r["dataset"] == ds):
            sel = [r for r in rows if r["dataset"] == ds and r["method"] == m]
            out.append({"dataset": ds, "method": m, "pairs": len(sel),
                        **{k: float(np.mean([r[k] for r in sel])) for k in
                           ("psnr", "psnr_shave4", "ssim", "rmse", "seconds", "cpu_seconds")}})
    return out


def print_tables(summary: list[dict]) -> str:
    lines = []
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        lines += [f"\n### {ds}\n", "| method | pairs | PSNR | PSNR-shave4 | SSIM | RMSE | s/pair | CPU s/pair |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in (s for s in summary if s["dataset"] == ds):
            lines.append(f"| {s['method']} | {s['pairs']} | {s['psnr']:.2f} | {s['psnr_shave4']:.2f} | "
                         f"{s['ssim']:.4f} | {s['rmse']:.3f} | {s['seconds']:.2f} | {s['cpu_seconds']:.2f} |")
    text = "\n".join(lines)
    print(text)
    return text


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["dataset", "scene", "method", "psnr", "psnr_shave4", "ssim", "rmse", "seconds", "cpu_seconds",
              "iterations", "mean_warp_px"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _git_state() -> str:
    """HEAD commit, plus '+dirty' when cmsr/ has uncommitted changes (numbers depend on them)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "cmsr"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=None, help="folders under shared/data/pairs (default: all)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="method specs (see module doc)")
    ap.add_argument("--scenes", type=int, default=None, help="at most this many scenes per dataset (evenly spread)")
    ap.add_argument("--only", nargs="+", default=None, help="exact scene names to run")
    ap.add_argument("--repeats", type=int, default=1, help="runs per pair (median time; checks determinism)")
    ap.add_argument("--iters", type=int, default=None, help="cap max_iters of learned methods (reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--tag", default="quality", help="output file stem under benchmarks/out/")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    specs = [MethodSpec.parse(m) for m in args.methods]
    datasets = args.datasets or sorted(p.name for p in DATA.iterdir() if p.is_dir())
    OUT.mkdir(parents=True, exist_ok=True)
    git_state = _git_state()  # at the start: the code this process imported
    rows: list[dict] = []
    for ds in datasets:
        for name in scenes(ds, args.only, args.scenes):
            for spec in specs:
                row = run_one(ds, name, spec, args)
                rows.append(row)
                _write_csv(OUT / f"{args.tag}.csv", rows)  # after every pair: a cut-short run still counts
                print(f"{ds}/{name} {spec.name}: PSNR {row['psnr']:.2f} shave4 {row['psnr_shave4']:.2f} "
                      f"SSIM {row['ssim']:.4f} {row['seconds']:.1f}s", flush=True)
    summary = summarise(rows)
    text = print_tables(summary)
    meta = {"argv": sys.argv[1:] if argv is None else argv, "iters_cap": args.iters, "device": args.device,
            "threads": args.threads, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "default_preset": cmsr.DEFAULT_PRESET, "git": git_state}
    (OUT / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows,
                                                       "table_markdown": text}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
