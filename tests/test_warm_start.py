"""Survey warm start: representative choice, fine-tune config, and that tiles really start from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmsr.config import CMSRConfig
from cmsr.train import train
from cmsr.warm_start import WarmStartConfig, finetune_config, pick_representatives, pretrain
from dev_tiles import dev_tiles


def test_finetune_config() -> None:
    cfg = CMSRConfig.paper()
    ft = finetune_config(cfg, WarmStartConfig(finetune_iters=77, finetune_min_iters=20))
    assert (ft.max_iters, ft.min_iters, ft.stage_factors(4)) == (77, 20, (4,))
    assert ft.crop_size == cfg.crop_size and ft.learning_rate == cfg.learning_rate
    keep = finetune_config(cfg, WarmStartConfig(finetune_gradual=True, finetune_learning_rate=3e-5))
    assert keep.stage_factors(4) == (2, 4) and keep.learning_rate == 3e-5
    with pytest.raises(ValueError):
        WarmStartConfig(representatives=0)


def test_pick_representatives() -> None:
    g = torch.Generator().manual_seed(0)
    lrs = [torch.rand(10, 10, generator=g) * a for a in (0.1, 0.5, 1.0, 2.0, 4.0)]
    valids = [torch.ones(10, 10, dtype=torch.bool) for _ in lrs]
    assert pick_representatives(lrs, valids, 1) == [2]  # the median texture first
    picks = pick_representatives(lrs, valids, 3)
    assert len(picks) == len(set(picks)) == 3 and picks[0] == 2
    valids[2][:5] = False  # half nodata: never a representative while others qualify
    assert 2 not in pick_representatives(lrs, valids, 3)
    assert len(pick_representatives(lrs, valids, 10)) == 4


@pytest.mark.slow
def test_tiles_start_from_the_warm_start_and_warp_from_identity(shared_data) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    lrs, guides, valids = dev_tiles(shared_data, 3, side=12)
    cfg = CMSRConfig.paper().replace(max_iters=8, min_iters=4, crop_size=16, run_test_every=2)
    warm = WarmStartConfig(representatives=2, finetune_iters=3, finetune_learning_rate=0.0)
    state = pretrain(lrs, guides, valids, 4, cfg, seed=0, warm=warm)
    assert set(state) == {f"sr.{i}" for i in range(8)} | {f"g.{i}" for i in range(4)}
    outs = train(lrs, guides, valids, 4, finetune_config(cfg, warm), seeds=[5, 6, 7], init_state=state)
    assert len(outs) == 3
    for o in outs:
        # zero fine-tune lr: every tile's networks are exactly the warm start, its warp the identity
        assert o.weights is not None
        for k, v in state.items():
            assert torch.equal(o.weights[k], v)
        assert o.displacement is not None and float(np.abs(o.displacement).max()) < 1e-5
        assert o.stats["iterations"] <= 3 and len(o.stats["stages"]) == 1


def test_state_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cmsr import model as M
    from cmsr.warm_start import load_state, save_state

    state = M.init_params(3, seed=1)
    save_state(str(tmp_path / "w.pt"), state)
    back = load_state(str(tmp_path / "w.pt"))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_state(str(tmp_path / "bad.pt"))
