"""One prepared run that checks and times the CUDA path of the per-tile trainers (issue 5).

Writes everything under ``--out`` (default ``$OUT``, else benchmarks/out/gpu_check): ``gpu_check.json``
(rewritten after every section, so a timeout still leaves what finished) and ``gpu_check.log``.
Every section is in its own try/except (its error is recorded, the next one runs) and the whole
run is time-boxed (``--budget-s``, default 420 s); sections that would not fit are skipped and
say so. Sections:

1. ``env``: torch, device, memory, bf16 support.
2. ``correctness``: the batched trainer on CUDA (fp32, TF32 off) vs on CPU, and the sequential
   trainer on CUDA vs CPU, same seeds, a few iterations on real Sentinel-2 tiles.
3. ``step``: steady-state time of one batched training iteration for K in {1, 4, 16, 64},
   512-px tiles, variants {grouped, bmm} x {fp32, bf16} (+ channels-last), peak memory.
4. ``infer``: one 512-px tile's paper-preset inference (2 stages, 8-way ensemble, BP).
5. ``scratch``: full paper-preset runs from scratch (best variant) for K in {64, 16, 4, 1}:
   tiles/s, PSNR vs the real 10 m NIR, iterations, peak memory.
6. ``amp_quality``: the same K=16 batch in fp32: PSNR and time difference against bf16.
7. ``warm``: survey warm start (pretrain on 2 tiles, fine-tune K=64): tiles/s, PSNR vs scratch.
(+ ``host``: the per-iteration numpy cost of drawing K augmentations, the floor batching leaves)
8. ``compile``: torch.compile of the stacked conv chain, step time at K=64 (if time is left).

Tiles are 512 px windows of the bundled Sentinel-2 sample (flows/sample, mirror-extended to a
1024 px scene), LR = 4x4 mean of the real 10 m NIR, RGB guide; the paper preset with the
``area`` degradation (what that LR is). ``--smoke`` runs all of it tiny, on CPU if no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


class Session:
    """Time box, log and incremental JSON."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.budget = budget_s
        self.results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
        self.logf = open(out / "gpu_check.log", "a")
        self.only: list[str] | None = None

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def dump(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str))

    def section(self, name: str, fn, need_s: float) -> None:
        if self.only is not None and name != "env" and name not in self.only:
            return
        if self.left() < need_s:
            self.log(f"SKIP {name}: {self.left():.0f} s left < {need_s:.0f} s needed")
            self.results["sections"][name] = {"skipped": f"{self.left():.0f} s left"}
            self.dump()
            return
        self.log(f"== {name}")
        t = time.perf_counter()
        try:
            res = fn()
            res = res if isinstance(res, dict) else {"result": res}
        except Exception as exc:  # noqa: BLE001 - one section's failure must not stop the run
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            self.log(f"ERROR in {name}: {type(exc).__name__}: {exc}")
        res["section_s"] = round(time.perf_counter() - t, 1)
        self.results["sections"][name] = res
        self.dump()


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_mem(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mem(dev: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if dev.startswith("cuda") else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "out" / "gpu_check"))
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (runs on CPU)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these sections (env always runs): correctness step infer scratch amp_quality warm compile")
    args = ap.parse_args()

    from cmsr.batched import train_tiles
    from cmsr.config import CMSRConfig
    from cmsr.train import super_resolve_normalized
    from throughput import float_psnr, sentinel_tiles

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    S = Session(Path(args.out), args.budget_s)
    S.only = args.only
    smoke = args.smoke
    tile = 64 if smoke else 512
    ks = [1, 2, 4] if smoke else [1, 4, 16, 64]
    kmax = max(ks)
    bench_iters = 12 if smoke else 100
    paper = CMSRConfig.paper().replace(degradation="area")
    if smoke:
        paper = paper.replace(max_iters=24, min_iters=8, crop_size=16)
    S.results.update(device=dev, smoke=smoke, tile_px=tile, ks=ks)
    S.log(f"device {dev}, smoke={smoke}, tile {tile}, K {ks}, budget {args.budget_s:.0f} s")

    data: dict = {}

    def env() -> dict:
        info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": dev,
                "cpu_threads": torch.get_num_threads()}
        if dev.startswith("cuda"):
            p = torch.cuda.get_device_properties(0)
            info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                        sms=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                        cudnn=torch.backends.cudnn.version(), cudnn_tf32=torch.backends.cudnn.allow_tf32,
                        matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
        t = time.perf_counter()
        lrs, guides, valids, truths = sentinel_tiles(tile, 64 if not smoke else 16, count=kmax,
                                                     mosaic=1024 if not smoke else None)
        data.update(lrs=lrs, guides=guides, valids=valids, truths=truths)
        info["data_s"] = round(time.perf_counter() - t, 2)
        info["tiles"] = len(lrs)
        return info

    S.section("env", env, 5)

    def correctness() -> dict:
        lrs, guides, valids, _ = sentinel_tiles(64, 64, count=2)
        lrs = [x[:16, :16].contiguous() for x in lrs]
        guides = [g[:, :64, :64].contiguous() for g in guides]
        valids = [v[:16, :16].contiguous() for v in valids]
        tiny = CMSRConfig.paper().replace(max_iters=12, min_iters=4, crop_size=16, run_test_every=3,
                                          lr_policy_check_every=6, lr_slope_points=4, degradation="area")
        res: dict = {}
        old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            cpu = train_tiles(lrs, guides, valids, 4, tiny, seeds=[0, 1], device="cpu")
            gpu = train_tiles(lrs, guides, valids, 4, tiny, seeds=[0, 1], device=dev, amp="off")
            seq_cpu = super_resolve_normalized(lrs[0], guides[0], valids[0], 4, tiny, seed=0, device="cpu")
            seq_gpu = super_resolve_normalized(lrs[0], guides[0], valids[0], 4, tiny, seed=0, device=dev)
            gpu_bf16 = train_tiles(lrs, guides, valids, 4, tiny, seeds=[0, 1], device=dev, amp="bf16")
            gpu_bmm = train_tiles(lrs, guides, valids, 4, tiny, seeds=[0, 1], device=dev, amp="off", conv_impl="bmm")
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        d = lambda a, b: float((a.image - b.image).abs().max())  # noqa: E731
        res["batched_gpu_fp32_vs_cpu"] = [d(a, b) for a, b in zip(gpu, cpu)]
        res["batched_gpu_bmm_vs_cpu"] = [d(a, b) for a, b in zip(gpu_bmm, cpu)]
        res["sequential_gpu_vs_cpu"] = d(seq_gpu, seq_cpu)
        res["batched_cpu_vs_sequential_cpu"] = d(cpu[0], seq_cpu)
        res["batched_gpu_bf16_vs_cpu"] = [d(a, b) for a, b in zip(gpu_bf16, cpu)]
        res["same_iterations"] = [a.stats["iterations"] == b.stats["iterations"] for a, b in zip(gpu, cpu)]
        res["pass"] = bool(max(res["batched_gpu_fp32_vs_cpu"] + res["batched_gpu_bmm_vs_cpu"]) < 1e-3
                           and res["sequential_gpu_vs_cpu"] < 1e-3 and all(res["same_iterations"]))
        S.log(f"correctness: {res}")
        return res

    S.section("correctness", correctness, 30)

    step_results: list[dict] = []

    def run_step(k: int, impl: str, amp: str, channels_last: bool | None = None) -> dict:
        import cmsr.runtime as R

        cfg = paper.replace(max_iters=bench_iters, min_iters=10**6, gradual=False, self_ensemble=False,
                            back_projection_rounds=0, run_test_every=min(paper.run_test_every, bench_iters // 4))
        stamps: list[tuple[int, float]] = []

        def prog(tile_i: int, it: int, err: float, lr: float) -> None:
            if tile_i == 0:
                stamps.append((it, time.perf_counter()))

        orig = R.device_policy
        if channels_last is not None:
            def patched(device, amp="auto"):  # type: ignore[no-untyped-def]
                p = orig(device, amp)
                return R.DevicePolicy(p.device, p.amp_dtype, channels_last, p.pin_memory)
            import cmsr.batched as B
            B.device_policy = patched  # type: ignore[assignment]
        _reset_mem(dev)
        try:
            t = time.perf_counter()
            train_tiles(data["lrs"][:k], data["guides"][:k], data["valids"][:k], 4, cfg, seeds=list(range(k)),
                        device=dev, amp=amp, conv_impl=impl, progress=prog)  # type: ignore[arg-type]
            _sync(dev)
            wall = time.perf_counter() - t
        finally:
            import cmsr.batched as B
            B.device_policy = orig  # type: ignore[assignment]
        (i0, t0), (i1, t1) = stamps[1], stamps[-1]
        step = (t1 - t0) / max(i1 - i0, 1)
        r = {"K": k, "impl": impl, "amp": amp, "channels_last": channels_last, "step_ms": round(step * 1e3, 3),
             "tile_iters_per_s": round(k / step, 1), "train_tiles_per_s_at_1600_iters": round(k / step / 1600, 3),
             "wall_s": round(wall, 2), "peak_gib": _peak_mem(dev)}
        S.log(f"step {r}")
        return r

    def step() -> dict:
        variants = [("grouped", "off", None), ("grouped", "bf16", None), ("bmm", "off", None), ("bmm", "bf16", None),
                    ("grouped", "bf16", False)]
        for k in ks:
            for impl, amp, cl in variants:
                if S.left() < 60:
                    S.log("step: time box reached")
                    break
                try:
                    step_results.append(run_step(k, impl, amp, cl))
                except Exception as exc:  # noqa: BLE001
                    step_results.append({"K": k, "impl": impl, "amp": amp, "error": f"{type(exc).__name__}: {exc}"})
                    S.log(f"step K={k} {impl} {amp}: {exc}")
                S.results["sections"]["step_partial"] = step_results
                S.dump()
        return {"runs": step_results}

    S.section("step", step, 90)

    def best_variant() -> tuple[str, str]:
        ok = [r for r in step_results if "step_ms" in r and r["K"] == kmax and r.get("channels_last") is None]
        if not ok:
            return ("grouped", "bf16" if dev.startswith("cuda") else "off")
        b = min(ok, key=lambda r: r["step_ms"])
        return b["impl"], b["amp"]

    def infer() -> dict:
        from cmsr import model as M
        from cmsr.train import _Guide, infer_stage
        from cmsr.warp import GuideWarp

        lr = data["lrs"][0].to(dev)
        g = data["guides"][0].to(dev)
        params = {k: v.to(dev) for k, v in M.init_params(3, seed=0).items()}
        warp = GuideWarp().to(dev)
        gd = _Guide(g, tuple(lr.shape), warp, paper.guide_train_sampling)
        out = {}
        for factor in paper.stage_factors(4):
            times = []
            for _ in range(3):
                _sync(dev)
                t = time.perf_counter()
                infer_stage(params, lr, gd, factor, paper)
                _sync(dev)
                times.append(time.perf_counter() - t)
            out[f"x{factor}_s"] = round(statistics.median(times), 4)
        out["tile_s"] = round(sum(v for k, v in out.items() if k.endswith("_s")), 4)
        S.log(f"infer {out}")
        return out

    S.section("infer", infer, 30)

    def host() -> dict:
        """Host-side cost per iteration that no batching removes: K augmentation draws (numpy)."""
        from cmsr.augment import sample_augmentation

        rng = np.random.default_rng(0)
        h, w = data["lrs"][0].shape
        shapes, bases = [(h, w), (2 * h, 2 * w)], [1, 2]
        t = time.perf_counter()
        n = 200
        for _ in range(n):
            sample_augmentation(rng, shapes, bases, 4, paper)
        per = (time.perf_counter() - t) / n
        r = {"augment_us": round(per * 1e6, 1), "augment_ms_per_iter_at_kmax": round(per * kmax * 1e3, 2),
             "cap_tiles_per_s_at_1600_iters": round(1.0 / (per * 1600), 3)}
        S.log(f"host {r}")
        return r

    S.section("host", host, 10)

    scratch_psnr: dict[int, list[float]] = {}

    def full(k: int, impl: str, amp: str, cfg=None, init=None) -> dict:  # type: ignore[no-untyped-def]
        cfg = cfg or paper
        _reset_mem(dev)
        _sync(dev)
        t = time.perf_counter()
        outs = train_tiles(data["lrs"][:k], data["guides"][:k], data["valids"][:k], 4, cfg, seeds=list(range(k)),
                           device=dev, amp=amp, conv_impl=impl, init_state=init)  # type: ignore[arg-type]
        _sync(dev)
        wall = time.perf_counter() - t
        ps = [float_psnr(o.image.numpy(), data["truths"][i]) for i, o in enumerate(outs)]
        return {"K": k, "impl": impl, "amp": amp, "wall_s": round(wall, 2), "tiles_per_s": round(k / wall, 3),
                "psnr_mean": round(float(np.mean(ps)), 3), "psnr": [round(p, 3) for p in ps],
                "iters_mean": float(np.mean([o.stats["iterations"] for o in outs])), "peak_gib": _peak_mem(dev)}

    def predicted_s(k: int) -> float:
        impl, amp = best_variant()
        st = [r for r in step_results if r.get("K") == k and r.get("impl") == impl and r.get("amp") == amp
              and "step_ms" in r]
        inf = S.results["sections"].get("infer", {}).get("tile_s", 1.0)
        step_s = st[0]["step_ms"] / 1e3 if st else 0.05
        return 2 * paper.max_iters * step_s * 1.3 + k * (inf or 1.0) + 5

    def scratch() -> dict:
        impl, amp = best_variant()
        runs = []
        for k in sorted(ks, reverse=True):
            need = predicted_s(k)
            if S.left() < need + 30:
                S.log(f"scratch K={k}: skipped (predicted {need:.0f} s, {S.left():.0f} s left)")
                runs.append({"K": k, "skipped": f"predicted {need:.0f} s"})
                continue
            r = full(k, impl, amp)
            scratch_psnr[k] = r["psnr"]
            runs.append(r)
            S.log(f"scratch {r}")
            S.results["sections"]["scratch_partial"] = runs
            S.dump()
        return {"variant": [impl, amp], "runs": runs}

    S.section("scratch", scratch, 60)

    def amp_quality() -> dict:
        impl, amp = best_variant()
        k = 16 if 16 in ks else ks[-1]
        if k not in scratch_psnr:
            return {"skipped": f"no scratch run at K={k}"}
        other = "off" if amp != "off" else ("bf16" if dev.startswith("cuda") else "off")
        r = full(k, impl, other)
        base = [x for x in S.results["sections"]["scratch"]["runs"] if x.get("K") == k][0]
        r["dpsnr_vs_best_variant"] = round(r["psnr_mean"] - base["psnr_mean"], 4)
        r["time_ratio_vs_best_variant"] = round(r["wall_s"] / base["wall_s"], 3)
        S.log(f"amp_quality {r}")
        return r

    S.section("amp_quality", amp_quality, 60)

    def warm() -> dict:
        from cmsr.warm_start import WarmStartConfig, finetune_config, pretrain

        impl, amp = best_variant()
        ws = WarmStartConfig()
        t = time.perf_counter()
        state = pretrain(data["lrs"][:kmax], data["guides"][:kmax], data["valids"][:kmax], 4, paper, seed=0,
                         device=dev, warm=ws)
        _sync(dev)
        t_pre = time.perf_counter() - t
        k = max(kk for kk in ks if kk in scratch_psnr) if scratch_psnr else kmax
        r = full(k, impl, amp, cfg=finetune_config(paper, ws), init=state)
        r["pretrain_s"] = round(t_pre, 2)
        if k in scratch_psnr:
            r["dpsnr_vs_scratch"] = round(float(np.mean(r["psnr"]) - np.mean(scratch_psnr[k])), 4)
        S.log(f"warm {r}")
        return r

    S.section("warm", warm, 60)

    def compiled() -> dict:
        import cmsr.batched as B

        impl, amp = best_variant()
        orig = B.stacked_chain
        B.stacked_chain = torch.compile(orig, dynamic=False)  # type: ignore[assignment]
        try:
            r1 = run_step(kmax, impl, amp)
        finally:
            B.stacked_chain = orig  # type: ignore[assignment]
        ref = [x for x in step_results if x.get("K") == kmax and x.get("impl") == impl and x.get("amp") == amp
               and x.get("channels_last") is None]
        r1["speedup_vs_eager"] = round(ref[0]["step_ms"] / r1["step_ms"], 3) if ref else None
        return r1

    S.section("compile", compiled, 150)
    S.log(f"done in {time.perf_counter() - S.t0:.0f} s -> {S.out / 'gpu_check.json'}")
    S.dump()


if __name__ == "__main__":
    main()
