"""Batched training of K tiles equals per-tile sequential training (same seeds), on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmsr.batched import choose_batch_size, stack_states, stacked_chain, tile_memory_bytes, train_tiles, unstack_state
from cmsr.config import CMSRConfig
from cmsr import model as M
from cmsr.train import super_resolve_normalized

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs" / "ulb17vt_thermal_x4"
# a budget where the lr policy really acts (drops and stops inside the run) yet CI-cheap
TINY = CMSRConfig.paper().replace(max_iters=24, min_iters=6, crop_size=16, run_test_every=3,
                                  lr_policy_check_every=6, lr_slope_points=4)


def _tiles(n: int, side: int = 16, scale: int = 4) -> tuple[list, list, list]:
    """Real thermal/RGB crops from the dev pairs (normalised like the API does)."""
    from PIL import Image

    names = sorted(p.name[:-7] for p in DATA.glob("*_lr.png"))[:n]
    lrs, guides, valids = [], [], []
    for i, name in enumerate(names):
        lr = np.asarray(Image.open(DATA / f"{name}_lr.png").convert("L"), np.float32) / 255.0
        g = np.asarray(Image.open(DATA / f"{name}_guide.png").convert("RGB"), np.float32) / 255.0
        y0, x0 = 10 + 3 * i, 20 + 5 * i
        lrs.append(torch.from_numpy(lr[y0:y0 + side, x0:x0 + side].copy()))
        guides.append(torch.from_numpy(g[scale * y0:scale * (y0 + side), scale * x0:scale * (x0 + side)]
                                       .transpose(2, 0, 1).copy()))
        valid = torch.ones(side, side, dtype=torch.bool)
        if i == 1:
            valid[:5, :7] = False  # nodata must be masked identically in both trainers
        valids.append(valid)
    return lrs, guides, valids


@pytest.fixture(scope="module")
def sequential() -> tuple[tuple, list]:
    torch.set_num_threads(1)
    data = _tiles(3)
    outs = [super_resolve_normalized(lr, g, v, 4, TINY, seed=10 + i) for i, (lr, g, v) in enumerate(zip(*data))]
    return data, outs


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["grouped", "bmm"])
def test_batched_equals_sequential(sequential: tuple, impl: str) -> None:
    (lrs, guides, valids), seq = sequential
    _check_equal(seq, train_tiles(lrs, guides, valids, 4, TINY, seeds=[10, 11, 12], conv_impl=impl), TINY)


@pytest.mark.slow
@pytest.mark.parametrize("base", ["bp", "guided"])
def test_batched_equals_sequential_base_and_warp_warmup(base: str) -> None:
    """The non-paper options of the trainer (a non-learned base under the residuals, the warp frozen
    at first) batch too."""
    torch.set_num_threads(1)
    cfg = TINY.replace(base=base, base_bp_rounds=3, warp_warmup_iters=10, max_iters=14)
    lrs, guides, valids = _tiles(2, side=12)
    seq = [super_resolve_normalized(lr, g, v, 4, cfg, seed=i) for i, (lr, g, v) in enumerate(zip(lrs, guides, valids))]
    _check_equal(seq, train_tiles(lrs, guides, valids, 4, cfg, seeds=[0, 1]), cfg, need_lr_drop=False)


def _check_equal(seq: list, got: list, cfg: CMSRConfig, need_lr_drop: bool = True) -> None:
    assert len(got) == len(seq)
    for a, b in zip(seq, got):
        # same father/son streams and the same lr-policy decisions ...
        assert [s["iterations"] for s in a.stats["stages"]] == [s["iterations"] for s in b.stats["stages"]]
        assert [s["final_lr"] for s in a.stats["stages"]] == [s["final_lr"] for s in b.stats["stages"]]
        # ... and the same numbers up to float rounding
        torch.testing.assert_close(b.image, a.image, atol=2e-5, rtol=0)
        assert b.displacement is not None and a.displacement is not None
        np.testing.assert_allclose(b.displacement, a.displacement, atol=1e-4)
        assert b.stats["batch_size"] == len(seq)
    # the lr policy acted somewhere: otherwise this test would not exercise per-tile stopping
    assert not need_lr_drop or any(s["final_lr"] < cfg.learning_rate for o in seq for s in o.stats["stages"])


def test_stacked_chain_is_per_tile_conv() -> None:
    ps = [M.init_params(3, sr_depth=3, sr_width=8, guide_depth=3, guide_width=4, seed=s) for s in range(3)]
    st = stack_states(ps)
    x = torch.randn(3, 1, 12, 10)
    g = torch.randn(3, 3, 12, 10)
    want = torch.cat([M.sr_residual(p, x[i:i + 1]) for i, p in enumerate(ps)])
    want_g = torch.cat([M.guide_residual(p, g[i:i + 1]) for i, p in enumerate(ps)])
    for impl in ("grouped", "bmm"):
        torch.testing.assert_close(stacked_chain(st, "sr", x, impl), want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(stacked_chain(st, "g", g, impl), want_g, atol=1e-6, rtol=1e-5)
    assert torch.equal(unstack_state(st, 1)["sr.0"], ps[1]["sr.0"])
    with pytest.raises(ValueError):
        stacked_chain(st, "sr", x, "winograd")  # type: ignore[arg-type]


def test_mixed_shapes_and_init_state() -> None:
    """Different tile shapes train in separate batches, results come back in input order; with a
    zero learning rate a warm start is returned untouched (every tile starts from ``init_state``)."""
    torch.set_num_threads(1)
    lrs, guides, valids = _tiles(2, side=12)
    lr3, g3, v3 = _tiles(1, side=8)
    cfg = TINY.replace(max_iters=2, learning_rate=0.0, gradual=False, self_ensemble=False)
    init = M.init_params(3, seed=99)
    out = train_tiles([lrs[0], lr3[0], lrs[1]], [guides[0], g3[0], guides[1]], [valids[0], v3[0], valids[1]], 4, cfg,
                      seeds=[1, 2, 3], init_state=init)
    assert [tuple(o.image.shape) for o in out] == [(48, 48), (32, 32), (48, 48)]
    assert [o.stats["batch_size"] for o in out] == [2, 1, 2]
    for o in out:
        assert o.weights is not None
        for k, v in init.items():
            assert torch.equal(o.weights[k], v)
    with pytest.raises(ValueError, match="as many"):
        train_tiles(lrs, guides, valids[:1], 4, cfg, seeds=[1, 2])


def test_choose_batch_size_follows_memory() -> None:
    cfg = CMSRConfig.paper()
    small, _ = tile_memory_bytes((128, 128), cfg)
    big, _ = tile_memory_bytes((1024, 1024), cfg)
    assert big > small > 0
    k = choose_batch_size((512, 512), cfg, "cpu", max_batch=64)
    assert 1 <= k <= 64
    assert choose_batch_size((512, 512), cfg, "cpu", max_batch=3) <= 3
    assert choose_batch_size((512, 512), cfg, "cpu", memory_fraction=1e-12) == 1


def test_run_batch_matches_cmsr_run() -> None:
    """The API-level batch equals ``cmsr.run`` tile by tile: units, NaN nodata, survey ranges."""
    import cmsr
    from cmsr.batched import run_batch

    torch.set_num_threads(1)
    lrs, guides, _ = _tiles(2, side=12)
    targets = [(lr.numpy() * 40.0 + 10.0).astype(np.float32) for lr in lrs]  # "degrees C"
    targets[1][2:4, 3:6] = np.nan
    rgbs = [(g.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8) for g in guides]
    cfg = TINY.replace(max_iters=4, gradual=False, self_ensemble=False)
    got = run_batch(targets, rgbs, 4, cfg, seeds=[3, 4], target_range=(5.0, 55.0))
    for t, g, seed, r in zip(targets, rgbs, [3, 4], got):
        want = cmsr.run(t, g, 4, cfg, seed=seed, target_range=(5.0, 55.0))
        np.testing.assert_array_equal(np.isnan(r.image), np.isnan(want.image))
        np.testing.assert_allclose(r.image, want.image, atol=1e-4, equal_nan=True)
        assert r.stats["target_range"] == want.stats["target_range"] and r.stats["method"] == "cmsr"
    assert np.isnan(got[1].image[8:16, 12:24]).all() and not np.isnan(got[0].image).any()
