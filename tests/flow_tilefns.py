"""Test-only tile functions, referenced by import path in ``JobConfig.tile_fn`` (workers import
this module: the tests put ``tests/`` on their PYTHONPATH).

* ``slow``: bicubic after ``CMSR_TEST_TILE_SLEEP`` seconds (default 0.5), so a test can act mid-run;
* ``probe``: ``slow`` that also records (pid, start, end) per tile under ``<work_dir>/probe/``;
* ``crash_on_<N>``: bicubic, except tile N raises (a bad window).
"""

from __future__ import annotations

import json
import os
import time

from pipelines.tilefn import bicubic_tile_fn


def slow(target, guide, scale, ctx):
    time.sleep(float(os.environ.get("CMSR_TEST_TILE_SLEEP", "0.5")))
    return bicubic_tile_fn(target, guide, scale, ctx)


def probe(target, guide, scale, ctx):
    t0 = time.time()
    out = slow(target, guide, scale, ctx)
    d = os.path.join(ctx.config.work_dir, "probe")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{ctx.tile_index}-{os.getpid()}-{time.time_ns()}.json"), "w") as f:
        json.dump({"pid": os.getpid(), "start": t0, "end": time.time(), "tile": ctx.tile_index}, f)
    return out


def _crasher(bad: int):
    def crash(target, guide, scale, ctx):
        if ctx.tile_index == bad:
            raise IndexError(f"window of tile {bad} is outside the LR raster (simulated bad window)")
        return bicubic_tile_fn(target, guide, scale, ctx)

    return crash


def __getattr__(name: str):
    if name.startswith("crash_on_"):
        return _crasher(int(name[len("crash_on_"):]))
    raise AttributeError(name)
