"""Job warnings under the ``cmsr`` command (issue 11 follow-up): one line ``warning: <message>``
each, printed once, from the driver (prepare's ``InputWarning``) and from the Dask workers
(``TileRecomputed``); Python's own format everywhere else.

Inputs: the bundled real sample with the target's outside set to 0 and no nodata declared (the
undeclared-border warning of tests/test_input_honesty.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from conftest import REPO, engine_env
from flows.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def zero_border_target(sample, tmp_path_factory) -> str:
    """The sample's 40 m NIR with a 0 frame outside its footprint and no nodata declared."""
    with rasterio.open(sample["target"]) as ds:
        nir, prof = ds.read(1).astype(np.float32), ds.profile
    inside = np.zeros(nir.shape, bool)
    inside[6:-6, 8:-8] = True
    path = tmp_path_factory.mktemp("warnings") / "thermal_zero_border.tif"
    prof.update(dtype="float32", nodata=None, count=1)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(np.where(inside, nir, 0).astype(np.float32)[None])
    return str(path)


def _warning_lines(stderr: str) -> list[str]:
    assert "warnings.warn" not in stderr and "InputWarning:" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("warning: ")]


def test_plan_prints_a_prepare_warning_as_one_line_once(sample, zero_border_target):
    """As a user sees it (a process of its own: under pytest, warnings are pytest's to record)."""
    r = subprocess.run([sys.executable, "-m", "flows.cli", "plan", str(sample["rgb"]), zero_border_target,
                        "--method", "bicubic"], cwd=REPO, env=engine_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == _warning_lines(r.stderr) and len(lines) == 1, r.stderr
    assert "thermal_zero_border.tif" in lines[0] and "--target-nodata 0" in lines[0]


def test_the_hook_is_per_command_and_python_default_is_back_after(sample, zero_border_target):
    shown_before = warnings.showwarning
    for _ in range(2):  # a second command in the same process shows it again
        r = runner.invoke(app, ["plan", str(sample["rgb"]), zero_border_target, "--method", "bicubic"])
        assert r.exit_code == 0, r.output
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines == _warning_lines(r.stderr) and len(lines) == 1, r.stderr
        assert "thermal_zero_border.tif" in lines[0] and "--target-nodata 0" in lines[0]
    assert warnings.showwarning is shown_before
    assert "CMSR_ONE_LINE_WARNINGS" not in os.environ


def test_run_prints_driver_and_worker_warnings_as_one_line_each(sample, zero_border_target, tmp_path):
    """A real ``cmsr run`` that resumes a job with one damaged tile result: prepare warns about the
    border (driver), the worker that recomputes the tile warns ``TileRecomputed``."""
    import pipelines

    out = tmp_path / "o.tif"
    cfg = pipelines.JobConfig(method="bicubic", tile_size=128, halo=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = pipelines.prepare(str(sample["rgb"]), zero_border_target, str(out), cfg)
        pipelines.run_tiles(job.job_path, [t.index for t in job.plan.tiles if not t.skip])
    damaged = next(t.index for t in job.plan.tiles if not t.skip)
    npy = Path(job.tile_paths(damaged)[0])
    npy.write_bytes(npy.read_bytes()[:-64])  # truncated, as by a full disk

    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(sample["rgb"]), zero_border_target, "-o",
                        str(out), "--method", "bicubic", "--tile-size", "128", "--halo", "8", "--workers", "1",
                        "--quiet"], cwd=REPO, env=engine_env({"PREFECT_HOME": str(tmp_path / "prefect")}),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == _warning_lines(r.stderr), r.stderr
    border = [ln for ln in lines if "thermal_zero_border.tif" in ln and "--target-nodata 0" in ln]
    recomputed = [ln for ln in lines if ln.startswith(f"warning: tile {damaged}: ") and "recomputing" in ln]
    assert len(border) == 1 and len(recomputed) == 1 and len(lines) == 2, r.stderr
    assert out.exists()


def test_sr_says_once_that_the_method_ignores_the_guide(shared_data, tmp_path):
    """``cmsr sr --method bp`` with a guide 8x too small (a wrong file, most likely): one warning
    line naming the guide, whatever the progress output (issue 11 item 15)."""
    from PIL import Image

    pair = shared_data / "pairs" / "ulb17vt_thermal_x4"
    small = tmp_path / "small_guide.png"
    rgb = Image.open(pair / "064_guide.png").convert("RGB")
    rgb.resize((rgb.width // 8, rgb.height // 8)).save(small)
    for quiet in ([], ["--quiet"]):
        r = subprocess.run([sys.executable, "-m", "flows.cli", "sr", "--target", str(pair / "064_lr.png"),
                            "--guide", str(small), "--scale", "4", "--out", str(tmp_path / "o.png"), "--method", "bp",
                            *quiet], cwd=REPO, env=engine_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        lines = _warning_lines(r.stderr)
        assert len(lines) == 1 and "does not use a guide" in lines[0] and "small_guide.png" in lines[0], r.stderr
