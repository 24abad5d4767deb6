"""One prepared run that checks and times the CUDA path of the one trainer on the shipped preset.

Writes everything under ``--out`` (default ``$OUT``, else benchmarks/out/gpu_check): ``gpu_check.json``
(rewritten after every section, so a timeout still leaves what finished) and ``gpu_check.log``.
Every section is in its own try/except (its error is recorded, the next one runs) and the whole
run is time-boxed (``--budget-s``, default 420 s); sections that would not fit are skipped and
say so. Everything runs the default preset (``cmsr.DEFAULT_PRESET``) through ``cmsr.run_many``,
as a survey does. Sections:

1. ``env``: torch, device, memory, bf16 support.
2. ``correctness``: ``run_many`` on CUDA (fp32 ``amp="off"``, TF32 off) vs on CPU, same seeds, a
   few iterations on real Sentinel-2 tiles; K=1 vs K=2 batch invariance on both devices; bf16 vs
   CPU reported separately (not part of ``pass``: bf16 is not meant to match).
3. ``step``: steady-state time of one training iteration for K in {1, 4, 16, 64}, 512-px tiles,
   {fp32, bf16} (+ bf16 without channels-last), peak memory. Registration off here (a one-off per
   tile before training, timed in ``infer``). Only grouped convolutions exist, so there is no
   ``bmm`` variant any more.
4. ``infer``: one 512-px tile's inference per base candidate (2 stages, 8-way ensemble, BP, the
   guide gate) and one registration.
5. ``scratch``: full default-preset runs from scratch (fp32) for K in {64, 16, 4, 1}: tiles/s,
   PSNR vs the real 10 m NIR, iterations, chosen bases, peak memory, ``choose_batch_size``.
6. ``amp_quality``: the same K=16 batch in bf16: PSNR and time difference against fp32.
7. ``warm``: survey warm start (pretrain on 2 tiles, fine-tune K=64): tiles/s, PSNR vs scratch.
(+ ``host``: the per-iteration numpy cost of drawing K augmentations, the floor batching leaves)
8. ``compile``: torch.compile of ``cmsr.model.conv_chain``, step time at K=64 (if time is left).

Tiles are 512 px windows of the bundled Sentinel-2 sample (flows/sample, mirror-extended to a
1024 px scene), LR = 4x4 mean of the real 10 m NIR, RGB guide, normalised once for the survey
(``run_many`` then clips the guide to [0, 1]); the preset with the ``area`` degradation (what
that LR is). ``--smoke`` runs all of it tiny, on CPU (one thread) if no GPU.
"""

from __future__ import annotations

import argparse
import collections
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


def as_arrays(lrs: list, guides: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalised tensors -> what ``run_many`` takes: (h, w) targets and (H, W, C) guides."""
    return [x.numpy() for x in lrs], [np.ascontiguousarray(g.permute(1, 2, 0).numpy()) for g in guides]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "out" / "gpu_check"))
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (runs on CPU)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these sections (env always runs): correctness step infer host scratch amp_quality warm compile")
    args = ap.parse_args()

    import cmsr
    from cmsr.config import CMSRConfig
    from throughput import float_psnr, sentinel_tiles

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke
    if smoke and dev == "cpu":
        torch.set_num_threads(1)
    S = Session(Path(args.out), args.budget_s)
    S.only = args.only
    tile = 64 if smoke else 512
    ks = [1, 2, 4] if smoke else [1, 4, 16, 64]
    kmax = max(ks)
    bench_iters = 12 if smoke else 100
    preset = cmsr.DEFAULT_PRESET
    cfg0 = CMSRConfig.preset(preset).replace(degradation="area")
    if smoke:
        cfg0 = cfg0.replace(max_iters=24, min_iters=8, crop_size=16)
    ranges = {"target_range": (0.0, 1.0), "guide_range": np.array([[0.0, 1.0]] * 3)}
    S.results.update(device=dev, smoke=smoke, tile_px=tile, ks=ks, preset=preset,
                     note="grouped convolutions only (the bmm variants are gone with cmsr.batched)")
    S.log(f"device {dev}, smoke={smoke}, preset {preset}, tile {tile}, K {ks}, budget {args.budget_s:.0f} s")

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
        targets, guides_np = as_arrays(lrs, guides)
        data.update(lrs=lrs, guides=guides, valids=valids, truths=truths, targets=targets, guides_np=guides_np)
        info["data_s"] = round(time.perf_counter() - t, 2)
        info["tiles"] = len(lrs)
        return info

    S.section("env", env, 5)

    def correctness() -> dict:
        lrs, guides, _, _ = sentinel_tiles(64, 64, count=2)
        targets, guides_np = as_arrays([x[:16, :16].contiguous() for x in lrs],
                                       [g[:, :64, :64].contiguous() for g in guides])
        tiny = CMSRConfig.preset(preset).replace(max_iters=12, min_iters=4, crop_size=16, run_test_every=3,
                                                 lr_policy_check_every=6, lr_slope_points=4, degradation="area")

        def go(n: int, device: str, amp: str = "off") -> list:
            return cmsr.run_many(targets[:n], guides_np[:n], 4, tiny, seeds=list(range(n)), device=device, amp=amp,
                                 **ranges)

        res: dict = {}
        old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            cpu, cpu1 = go(2, "cpu"), go(1, "cpu")
            gpu, gpu1 = go(2, dev), go(1, dev)
            gpu_bf16 = go(2, dev, "bf16")
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        d = lambda a, b: float(np.abs(a.image - b.image).max())  # noqa: E731
        res["gpu_fp32_vs_cpu_K2"] = [d(a, b) for a, b in zip(gpu, cpu)]
        res["gpu_fp32_vs_cpu_K1"] = d(gpu1[0], cpu1[0])
        res["cpu_K1_vs_K2"] = d(cpu1[0], cpu[0])
        res["gpu_K1_vs_K2"] = d(gpu1[0], gpu[0])
        res["same_iterations"] = [a.stats["iterations"] == b.stats["iterations"] for a, b in zip(gpu, cpu)]
        res["same_base"] = [a.stats["base"] == b.stats["base"] for a, b in zip(gpu, cpu)]
        res["bases"] = [a.stats["base"] for a in cpu]
        res["use_warp"] = [a.stats["use_warp"] for a in cpu]
        res["pass"] = bool(max(res["gpu_fp32_vs_cpu_K2"] + [res["gpu_fp32_vs_cpu_K1"], res["cpu_K1_vs_K2"],
                                                            res["gpu_K1_vs_K2"]]) < 1e-3
                           and all(res["same_iterations"]) and all(res["same_base"]))
        res["bf16_gpu_vs_cpu_K2"] = [d(a, b) for a, b in zip(gpu_bf16, cpu)]  # reported, not judged
        S.log(f"correctness: {res}")
        return res

    S.section("correctness", correctness, 30)

    step_results: list[dict] = []

    def run_step(k: int, amp: str, channels_last: bool | None = None) -> dict:
        import cmsr.runtime as R
        import cmsr.train as T

        cfg = cfg0.replace(max_iters=bench_iters, min_iters=10**6, gradual=False, self_ensemble=False,
                           back_projection_rounds=0, registration=None,
                           run_test_every=min(cfg0.run_test_every, bench_iters // 4))
        stamps: list[tuple[int, float]] = []

        def prog(tile_i: int, it: int, err: float, lr: float) -> None:
            if tile_i == 0:
                stamps.append((it, time.perf_counter()))

        orig = T.device_policy
        if channels_last is not None:
            def patched(device, amp="auto"):  # type: ignore[no-untyped-def]
                p = orig(device, amp)
                return R.DevicePolicy(p.device, p.amp_dtype, channels_last, p.pin_memory)
            T.device_policy = patched  # type: ignore[assignment]
        _reset_mem(dev)
        try:
            t = time.perf_counter()
            cmsr.run_many(data["targets"][:k], data["guides_np"][:k], 4, cfg, seeds=list(range(k)), device=dev,
                          amp=amp, progress=prog, **ranges)  # type: ignore[arg-type]
            _sync(dev)
            wall = time.perf_counter() - t
        finally:
            T.device_policy = orig  # type: ignore[assignment]
        (i0, t0), (i1, t1) = stamps[1], stamps[-1]
        step = (t1 - t0) / max(i1 - i0, 1)
        r = {"K": k, "amp": amp, "channels_last": channels_last, "step_ms": round(step * 1e3, 3),
             "tile_iters_per_s": round(k / step, 1), "train_tiles_per_s_at_1600_iters": round(k / step / 1600, 3),
             "wall_s": round(wall, 2), "peak_gib": _peak_mem(dev)}
        S.log(f"step {r}")
        return r

    def step() -> dict:
        variants = [("off", None), ("bf16", None), ("bf16", False)]
        for k in ks:
            for amp, cl in variants:
                if S.left() < 60:
                    S.log("step: time box reached")
                    break
                try:
                    step_results.append(run_step(k, amp, cl))
                except Exception as exc:  # noqa: BLE001
                    step_results.append({"K": k, "amp": amp, "channels_last": cl,
                                         "error": f"{type(exc).__name__}: {exc}"})
                    S.log(f"step K={k} {amp} cl={cl}: {exc}")
                S.results["sections"]["step_partial"] = step_results
                S.dump()
        return {"runs": step_results}

    S.section("step", step, 90)

    def infer() -> dict:
        from cmsr import model as M
        from cmsr.config import AutoBase
        from cmsr.guide import TileGuide
        from cmsr.infer import infer_stage
        from cmsr.registration import register

        cfg = cfg0
        lr = data["lrs"][0].to(dev)
        g = data["guides"][0].to(dev).clamp(0.0, 1.0)
        gb = cfg.guide
        assert gb is not None, "the default preset has a guide branch"
        weights = {k: v.to(dev) for k, v in M.init_params(3, sr_depth=cfg.sr_depth, sr_width=cfg.sr_width,
                                                           guide_depth=gb.depth, guide_width=gb.width,
                                                           init_variance=cfg.init_variance, seed=0).items()}
        tg = TileGuide(g, tuple(lr.shape), None, gb.train_sampling)
        bases = cfg.base.candidates if isinstance(cfg.base, AutoBase) else (cfg.base,)
        out: dict = {"gate": cfg.guide_gate is not None}
        for base in bases:
            per = {}
            for factor in cfg.stage_factors(4):
                times = []
                for _ in range(3):
                    _sync(dev)
                    t = time.perf_counter()
                    infer_stage(weights, lr, tg, factor, cfg, base)
                    _sync(dev)
                    times.append(time.perf_counter() - t)
                per[f"x{factor}_s"] = round(statistics.median(times), 4)
            per["tile_s"] = round(sum(per.values()), 4)
            out[base.name] = per
        out["tile_s"] = max(out[b.name]["tile_s"] for b in bases)  # the slowest base: what a plan must allow
        if cfg.registration is not None:
            valid = data["valids"][0].to(dev)
            _sync(dev)
            t = time.perf_counter()
            affine = register(g, lr, valid, 4, cfg.registration)
            _sync(dev)
            out["register_s"] = round(time.perf_counter() - t, 4)
            out["registered"] = affine is not None
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
            sample_augmentation(rng, shapes, bases, 4, cfg0)
        per = (time.perf_counter() - t) / n
        r = {"augment_us": round(per * 1e6, 1), "augment_ms_per_iter_at_kmax": round(per * kmax * 1e3, 2),
             "cap_tiles_per_s_at_1600_iters": round(1.0 / (per * 1600), 3)}
        S.log(f"host {r}")
        return r

    S.section("host", host, 10)

    scratch_psnr: dict[int, list[float]] = {}
    scratch_runs: dict[int, dict] = {}

    def full(k: int, amp: str = "off", cfg=None, init=None) -> dict:  # type: ignore[no-untyped-def]
        cfg = cfg or cfg0
        _reset_mem(dev)
        _sync(dev)
        t = time.perf_counter()
        outs = cmsr.run_many(data["targets"][:k], data["guides_np"][:k], 4, cfg, seeds=list(range(k)), device=dev,
                             amp=amp, init_state=init, **ranges)  # type: ignore[arg-type]
        _sync(dev)
        wall = time.perf_counter() - t
        ps = [float(float_psnr(o.image, data["truths"][i])) for i, o in enumerate(outs)]
        return {"K": k, "amp": amp, "wall_s": round(wall, 2), "tiles_per_s": round(k / wall, 3),
                "psnr_mean": round(float(np.mean(ps)), 3), "psnr": [round(p, 3) for p in ps],
                "iters_mean": float(np.mean([o.stats["iterations"] for o in outs])),
                "bases": dict(collections.Counter(o.stats["base"] for o in outs)),
                "warped": sum(bool(o.stats["use_warp"]) for o in outs), "peak_gib": _peak_mem(dev)}

    def predicted_s(k: int) -> float:
        st = [r for r in step_results if r.get("K") == k and r.get("amp") == "off" and r.get("channels_last") is None
              and "step_ms" in r]
        inf = S.results["sections"].get("infer", {})
        per_tile = (inf.get("tile_s") or 1.0) + (inf.get("register_s") or 0.0)
        step_s = st[0]["step_ms"] / 1e3 if st else 0.05
        return len(cfg0.stage_factors(4)) * cfg0.max_iters * step_s * 1.3 + k * per_tile + 5

    def scratch() -> dict:
        runs = []
        for k in sorted(ks, reverse=True):
            need = predicted_s(k)
            if S.left() < need + 30:
                S.log(f"scratch K={k}: skipped (predicted {need:.0f} s, {S.left():.0f} s left)")
                runs.append({"K": k, "skipped": f"predicted {need:.0f} s"})
                continue
            r = full(k)
            scratch_psnr[k] = r["psnr"]
            scratch_runs[k] = r
            runs.append(r)
            S.log(f"scratch {r}")
            S.results["sections"]["scratch_partial"] = runs
            S.dump()
        kb = cmsr.choose_batch_size((tile, tile), cfg0, dev, scale=4)
        return {"amp": "off", "runs": runs, "choose_batch_size": kb}

    S.section("scratch", scratch, 60)

    def amp_quality() -> dict:
        k = 16 if 16 in ks else ks[-1]
        if k not in scratch_runs:
            return {"skipped": f"no scratch run at K={k}"}
        r = full(k, "bf16")
        base = scratch_runs[k]
        r["dpsnr_vs_fp32"] = round(r["psnr_mean"] - base["psnr_mean"], 4)
        r["time_ratio_vs_fp32"] = round(r["wall_s"] / base["wall_s"], 3)
        if not dev.startswith("cuda"):
            r["note"] = "amp is ignored off CUDA: this is fp32 again"
        S.log(f"amp_quality {r}")
        return r

    S.section("amp_quality", amp_quality, 60)

    def warm() -> dict:
        from cmsr.survey_model import SurveyLearning, learn, tile_config

        ws = SurveyLearning(finetune_iters=16, finetune_min_iters=8) if smoke else SurveyLearning()
        t = time.perf_counter()
        model = learn(data["lrs"][:kmax], [g.clamp(0.0, 1.0) for g in data["guides"][:kmax]],
                      data["valids"][:kmax], 4, cfg0, seed=0, device=dev, learning=ws)
        state = model.weights
        _sync(dev)
        t_pre = time.perf_counter() - t
        k = max(kk for kk in ks if kk in scratch_psnr) if scratch_psnr else kmax
        r = full(k, cfg=tile_config(cfg0, model, ws), init=state)
        r["pretrain_s"] = round(t_pre, 2)
        if k in scratch_psnr:
            r["dpsnr_vs_scratch"] = round(float(np.mean(r["psnr"]) - np.mean(scratch_psnr[k])), 4)
        S.log(f"warm {r}")
        return r

    S.section("warm", warm, 60)

    def compiled() -> dict:
        import cmsr.model as M

        orig = M.conv_chain
        M.conv_chain = torch.compile(orig, dynamic=False)  # type: ignore[assignment]
        try:
            r1 = run_step(kmax, "off")
        finally:
            M.conv_chain = orig  # type: ignore[assignment]
        ref = [x for x in step_results if x.get("K") == kmax and x.get("amp") == "off"
               and x.get("channels_last") is None and "step_ms" in x]
        r1["speedup_vs_eager"] = round(ref[0]["step_ms"] / r1["step_ms"], 3) if ref else None
        return r1

    S.section("compile", compiled, 150)
    S.log(f"done in {time.perf_counter() - S.t0:.0f} s -> {S.out / 'gpu_check.json'}")
    S.dump()


if __name__ == "__main__":
    main()
