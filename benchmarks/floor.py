"""The compute floor of one CMSR tile: FLOPs and bytes of training and inference, over peaks.

Why: issue 5 asks to "count the floor first" so every throughput number can be reported as
achieved / floor. The model below counts only the convolutions (everything else -- the warp
sampling, the resize matmuls, Adam -- is printed too and is < 2% of it) at the paper preset:

* one training iteration: a 48x48 father crop; F_sr (8 conv 3x3, 1->64->...->64->1, no bias)
  and F_g (3x3 3->16->16->16, 1x1 16->1) forward, backward ~2x forward (grad input + grad
  weight), so ~3x forward; plus the every-20-iterations reconstruction check (F_sr over the
  LR-sized image, forward only);
* the paper's gradual x4: a x2 stage then a x4 stage, at most 800 iterations each;
* inference per stage: 8-way self-ensemble of F_sr and F_g over that stage's full output grid,
  then 6 rounds of back-projection (two separable bicubic resizes per round).

Peaks: this CPU is measured (a large fp32 matmul, ``--threads`` threads, median of 3); the
GPU numbers are the vendor's dense peaks (H100 SXM ~800 TFLOP/s bf16 as the issue states,
~60 TFLOP/s plain fp32, 3.35 TB/s HBM3; H200 4.8 TB/s). A 48x48 conv stack reaches a small
fraction of those on any device, which is why the floors are lower bounds, not predictions.

Usage: ``python benchmarks/floor.py [--threads 2] [--tile 512] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

F_SR_LAYERS = [(1, 64, 3)] + [(64, 64, 3)] * 6 + [(64, 1, 3)]
F_G_LAYERS = [(3, 16, 3), (16, 16, 3), (16, 16, 3), (16, 1, 1)]
CROP = 48
ITERS_PER_STAGE = 800
STAGES = (2, 4)  # paper preset, gradual x4
ENSEMBLE = 8
BP_ROUNDS = 6
CHECK_EVERY = 20
BYTES_FP32 = 4

GPU_PEAKS = {
    "h100_bf16_dense_flops": 800e12,
    "h100_tf32_dense_flops": 400e12,
    "h100_fp32_flops": 60e12,
    "h100_hbm_bytes_s": 3.35e12,
    "h200_hbm_bytes_s": 4.8e12,
}


def conv_flops_per_px(layers: list[tuple[int, int, int]]) -> int:
    """Multiply-adds x 2 per output pixel of a same-padded conv stack."""
    return sum(2 * cin * cout * k * k for cin, cout, k in layers)


def params(layers: list[tuple[int, int, int]]) -> int:
    return sum(cin * cout * k * k for cin, cout, k in layers)


def activation_bytes(layers: list[tuple[int, int, int]], px: int) -> int:
    """Bytes one forward pass writes then reads back (each layer's output, fp32)."""
    return sum(cout for _, cout, _ in layers) * px * BYTES_FP32


def resize_flops(h: int, w: int, s: int) -> int:
    """A separable bicubic resize between (h, w) and (h*s, w*s) as two dense matmuls."""
    return 2 * (h * s) * h * w + 2 * (h * s) * w * (w * s)


@dataclass(frozen=True)
class TileFloor:
    """FLOPs and bytes of one tile at the paper preset (upper bound: every stage runs 800 its)."""

    hr_shape: tuple[int, int]
    train_iter_flops: float
    train_iter_bytes: float
    check_flops_per_iter: float
    train_flops: float
    infer_flops: float
    bp_flops: float
    total_flops: float
    total_bytes: float
    params: int


def train_iter_flops(crop: int = CROP) -> tuple[float, float]:
    """FLOPs and bytes of one training iteration on one father crop (fwd + bwd)."""
    px = crop * crop
    fwd = (conv_flops_per_px(F_SR_LAYERS) + conv_flops_per_px(F_G_LAYERS)) * px
    # backward: grad-weight for every layer, grad-input for all but the first of each branch
    first = 2 * (1 * 64 * 9 + 3 * 16 * 9) * px
    bwd = 2 * fwd - first
    acts = activation_bytes(F_SR_LAYERS, px) + activation_bytes(F_G_LAYERS, px)
    # fwd writes acts, bwd reads them and writes/reads grads of the same size; weights + Adam
    # (param, grad, m, v read and written) are tiny next to that
    n_par = params(F_SR_LAYERS) + params(F_G_LAYERS)
    byts = 3 * acts + 8 * n_par * BYTES_FP32
    return float(fwd + bwd), float(byts)


def tile_floor(hr_shape: tuple[int, int], stages: tuple[int, ...] = STAGES,
               iters_per_stage: int = ITERS_PER_STAGE) -> TileFloor:
    H, W = hr_shape
    s_final = stages[-1]
    lr_h, lr_w = H // s_final, W // s_final
    it_flops, it_bytes = train_iter_flops()
    per_px = conv_flops_per_px(F_SR_LAYERS) + conv_flops_per_px(F_G_LAYERS)
    # the check runs F_sr on the source image's grid (the LR, downscaled and re-upsampled)
    check = conv_flops_per_px(F_SR_LAYERS) * lr_h * lr_w / CHECK_EVERY
    train = len(stages) * iters_per_stage * (it_flops + check)
    infer, bp, infer_bytes = 0.0, 0.0, 0.0
    for s in stages:
        oh, ow = lr_h * s, lr_w * s
        infer += ENSEMBLE * per_px * oh * ow
        infer_bytes += ENSEMBLE * activation_bytes(F_SR_LAYERS + F_G_LAYERS, oh * ow)
        bp += BP_ROUNDS * 2 * resize_flops(lr_h, lr_w, s)
    total_bytes = len(stages) * iters_per_stage * it_bytes + infer_bytes
    return TileFloor(
        hr_shape=(H, W), train_iter_flops=it_flops, train_iter_bytes=it_bytes,
        check_flops_per_iter=check, train_flops=train, infer_flops=infer, bp_flops=bp,
        total_flops=train + infer + bp, total_bytes=total_bytes,
        params=params(F_SR_LAYERS) + params(F_G_LAYERS),
    )


def _clock(threads: int):
    """CPU time for one thread (robust to other processes on a shared box), wall time otherwise."""
    return time.process_time if threads == 1 else time.perf_counter


def measure_cpu_peak(threads: int, n: int = 2048, repeats: int = 3) -> float:
    """Median fp32 FLOP/s of an n x n matmul with ``threads`` threads (per CPU second if 1 thread)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    clock = _clock(threads)
    for _ in range(repeats):
        reps = 5
        t0 = clock()
        for _ in range(reps):
            torch.mm(a, b)
        dt = clock() - t0
        rates.append(reps * 2 * n**3 / dt)
    return statistics.median(rates)


def measure_conv_stack(threads: int, repeats: int = 3, iters: int = 20) -> float:
    """Median FLOP/s of the F_sr 48x48 fwd+bwd step alone (the realistic CPU ceiling)."""
    import torch

    torch.set_num_threads(threads)
    layers = []
    for i, (cin, cout, k) in enumerate(F_SR_LAYERS):
        layers.append(torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))
        if i < len(F_SR_LAYERS) - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    x = torch.randn(1, 1, CROP, CROP)
    flops = 3 * conv_flops_per_px(F_SR_LAYERS) * CROP * CROP
    for _ in range(3):
        net(x).abs().mean().backward()
    rates = []
    clock = _clock(threads)
    for _ in range(repeats):
        t0 = clock()
        for _ in range(iters):
            net.zero_grad(set_to_none=True)
            net(x).abs().mean().backward()
        rates.append(iters * flops / (clock() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile", type=int, default=512, help="HR tile side for the GPU floor")
    ap.add_argument("--json", default=None, help="default benchmarks/out/floor_t<threads>.json")
    ap.add_argument("--allocator", action="store_true", help="apply cmsr.runtime.configure_allocator() first")
    ap.add_argument("--no-measure", action="store_true", help="skip the CPU measurements")
    args = ap.parse_args()
    if args.json is None:
        args.json = f"benchmarks/out/floor_t{args.threads}.json"
    if args.allocator:
        import sys

        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from cmsr.runtime import configure_allocator

        configure_allocator()

    pair = tile_floor((240, 320))
    tile = tile_floor((args.tile, args.tile))
    out: dict = {"pair_320x240": asdict(pair), f"tile_{args.tile}": asdict(tile),
                 "gpu_peaks": GPU_PEAKS, "threads": args.threads, "allocator": args.allocator,
                 "clock": "process_time" if args.threads == 1 else "wall"}
    if not args.no_measure:
        out["cpu_matmul_flops"] = measure_cpu_peak(args.threads)
        out["cpu_conv48_fwdbwd_flops"] = measure_conv_stack(args.threads)
        cpu = out["cpu_matmul_flops"]
        out["cpu_floor_s"] = {
            "pair_320x240_total": pair.total_flops / cpu,
            "pair_320x240_train": pair.train_flops / cpu,
            "pair_320x240_infer": pair.infer_flops / cpu,
            "train_iter": pair.train_iter_flops / cpu,
            "pair_320x240_at_conv48_rate": pair.total_flops / out["cpu_conv48_fwdbwd_flops"],
        }
    g = GPU_PEAKS
    out["gpu_floor_s"] = {
        "tile_bf16_compute": tile.total_flops / g["h100_bf16_dense_flops"],
        "tile_fp32_compute": tile.total_flops / g["h100_fp32_flops"],
        "tile_hbm_bytes_h100": tile.total_bytes / g["h100_hbm_bytes_s"],
    }
    out["gpu_floor_tiles_per_s_bf16"] = 1.0 / max(out["gpu_floor_s"]["tile_bf16_compute"],
                                                  out["gpu_floor_s"]["tile_hbm_bytes_h100"])

    print(f"one training iteration (48x48 crop): {pair.train_iter_flops / 1e9:.3f} GFLOP, "
          f"~{pair.train_iter_bytes / 1e6:.1f} MB moved, {pair.params} parameters")
    for name, f in (("320x240 pair", pair), (f"{args.tile}x{args.tile} tile", tile)):
        print(f"{name}: train {f.train_flops / 1e12:.2f} TFLOP (incl. check "
              f"{f.check_flops_per_iter * 2 * ITERS_PER_STAGE / 1e9:.0f} GFLOP), inference "
              f"{f.infer_flops / 1e12:.3f} TFLOP, back-projection {f.bp_flops / 1e9:.2f} GFLOP, "
              f"total {f.total_flops / 1e12:.2f} TFLOP, ~{f.total_bytes / 1e9:.1f} GB moved")
    if "cpu_matmul_flops" in out:
        print(f"CPU ({args.threads} threads): matmul {out['cpu_matmul_flops'] / 1e9:.1f} GFLOP/s, "
              f"48x48 F_sr fwd+bwd {out['cpu_conv48_fwdbwd_flops'] / 1e9:.1f} GFLOP/s")
        c = out["cpu_floor_s"]
        print(f"CPU floor, 320x240 pair at paper preset: {c['pair_320x240_total']:.1f} s at matmul "
              f"peak (train {c['pair_320x240_train']:.1f} s, inference {c['pair_320x240_infer']:.1f} s);"
              f" {c['pair_320x240_at_conv48_rate']:.1f} s at the small-conv rate")
    gf = out["gpu_floor_s"]
    print(f"H100 floor, {args.tile}px tile: {gf['tile_bf16_compute'] * 1e3:.1f} ms bf16, "
          f"{gf['tile_fp32_compute'] * 1e3:.0f} ms fp32, {gf['tile_hbm_bytes_h100'] * 1e3:.1f} ms "
          f"HBM -> <= {out['gpu_floor_tiles_per_s_bf16']:.0f} tiles/s")
    if args.json:
        import pathlib

        p = pathlib.Path(args.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(out, indent=2))
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
