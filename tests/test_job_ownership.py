"""One job per output at a time, and refusals that leave nothing behind (issue 11, items 1 and 7).

Two runs on the same ``-o`` used to share ``OUT.work/`` and ``job.json`` (one "succeeded" with an
all-NaN output or the other job's result); bad input found after the engine had started left
``OUT.work/`` behind and cost the engine's start-up. Inputs are the bundled real sample
(Sentinel-2 RGB 10 m, NIR 40 m), changed only where a test needs a bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

import pipelines
from conftest import REPO, engine_env
from pipelines import JobBusy, JobConfig, StaleLockWarning, own_job
from pipelines.job.ownership import LockOwner, out_lock_path, work_dir_lock_path
from tiling.errors import InvalidInput

CFG = JobConfig(method="bicubic", tile_size=64, halo=8, quicklook=False)


def dead_pid() -> int:
    """The pid of a process that ran on this host and is gone (as a crashed run's)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def locks_of(out: Path, work_dir: Path) -> list[str]:
    return [p for p in (out_lock_path(str(out)), work_dir_lock_path(str(work_dir))) if os.path.exists(p)]


def write_lock(path: str, **changes) -> None:
    owner = replace(LockOwner.of_this_process("rgb.tif", "thermal_crashed.tif", "o.tif"), **changes)
    Path(path).write_text(json.dumps(asdict(owner)))


@pytest.fixture(scope="module")
def all_nodata_target(sample, tmp_path_factory) -> str:
    """The real NIR with every pixel NaN (an export of an empty area)."""
    with rasterio.open(sample["target"]) as ds:
        data, prof = ds.read(), ds.profile
    p = tmp_path_factory.mktemp("bad") / "thermal_empty.tif"
    with rasterio.open(p, "w", **dict(prof, dtype="float32", nodata=float("nan"))) as dst:
        dst.write(np.full(data.shape, np.nan, np.float32))
    return str(p)


@pytest.fixture(scope="module")
def transparent_rgb(sample, tmp_path_factory) -> str:
    """The real RGB with an alpha band that is 0 everywhere (an empty ODM export)."""
    with rasterio.open(sample["rgb"]) as ds:
        data, prof = ds.read(), ds.profile
    p = tmp_path_factory.mktemp("bad") / "rgb_transparent.tif"
    with rasterio.open(p, "w", **dict(prof, count=4, photometric="RGB", ALPHA="YES")) as dst:
        dst.write(np.concatenate([data, np.zeros_like(data[:1])]))
    return str(p)


# ---------------------------------------------------------------- the lock itself


def test_a_second_owner_is_refused_naming_the_running_job(sample, tmp_path):
    out, work = tmp_path / "sr.tif", tmp_path / "sr.tif.work"
    with own_job(str(out), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
        assert len(locks_of(out, work)) == 2
        for other_work in (work, tmp_path / "elsewhere.work"):  # same job again, or another job on the same -o
            with pytest.raises(JobBusy) as ei:
                with own_job(str(out), str(other_work), rgb=str(sample["rgb"]), target=str(tmp_path / "other.tif")):
                    pytest.fail("a second owner got in")
            msg = str(ei.value)
            assert isinstance(ei.value, InvalidInput) and "\n" not in msg
            assert msg.startswith(f"output file {out}: another cmsr job is writing this output"), msg
            assert f"pid {os.getpid()}" in msg and "target nir_40m.tif" in msg and "another -o" in msg
        assert not (tmp_path / "elsewhere.work").exists()
        with pytest.raises(JobBusy, match=r"work directory .*sr\.tif\.work: another cmsr job is using"):
            with own_job(str(tmp_path / "b.tif"), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
                pass
        assert not os.path.exists(out_lock_path(str(tmp_path / "b.tif")))
        # the in-process pipeline owns its output too
        with pytest.raises(JobBusy):
            pipelines.superresolve(str(sample["rgb"]), str(sample["target"]), str(out), CFG)
        assert len(locks_of(out, work)) == 2  # the refused ones removed nothing of the owner's
    assert locks_of(out, work) == [] and not work.exists() and not out.exists()


def test_a_stale_lock_is_taken_over_with_one_warning(sample, tmp_path):
    """A run killed with SIGKILL leaves both locks; the next run takes them over, saying so once."""
    out, work = tmp_path / "sr.tif", tmp_path / "sr.tif.work"
    work.mkdir()
    pid = dead_pid()
    for lock in (out_lock_path(str(out)), work_dir_lock_path(str(work))):
        write_lock(lock, pid=pid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with own_job(str(out), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
            for lock in locks_of(out, work):
                assert json.loads(Path(lock).read_text())["pid"] == os.getpid()
    stale = [w for w in caught if issubclass(w.category, StaleLockWarning)]
    assert len(stale) == 1, [str(w.message) for w in caught]
    assert f"pid {pid}" in str(stale[0].message) and "thermal_crashed.tif" in str(stale[0].message)
    assert locks_of(out, work) == [] and work.is_dir()  # a work dir that was there stays


@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/random/boot_id"), reason="needs Linux /proc")
def test_a_live_pid_that_is_another_process_is_stale(sample, tmp_path):
    """A crashed run's pid reused by an unrelated process (here: this one's, with another start
    time), or a lock from before the host last booted, is stale, not a running job."""
    out, work = tmp_path / "sr.tif", tmp_path / "w"
    pid = os.getppid()  # alive, but not the process that wrote the lock
    for changes in ({"proc_start": "1"}, {"boot": "another-boot", "proc_start": None}):
        write_lock(out_lock_path(str(out)), pid=pid, **changes)
        with pytest.warns(StaleLockWarning, match=f"pid {pid}"):
            with own_job(str(out), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
                pass
    assert locks_of(out, work) == []


def test_an_owner_on_another_host_counts_as_running(sample, tmp_path):
    out, work = tmp_path / "sr.tif", tmp_path / "w"
    write_lock(out_lock_path(str(out)), pid=dead_pid(), host="render-node-7")
    with pytest.raises(JobBusy, match=r"on host render-node-7.*another host.*delete .*sr\.tif\.lock"):
        with own_job(str(out), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
            pass
    assert not work.exists()


@pytest.mark.parametrize("ending", [None, RuntimeError("tile failed"), KeyboardInterrupt()])
def test_locks_are_removed_however_the_job_ends(sample, tmp_path, ending):
    out, work = tmp_path / "sr.tif", tmp_path / "sr.tif.work"
    try:
        with own_job(str(out), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
            (work / "job.json").write_text("{}")  # the job's state: kept for the resume
            if ending is not None:
                raise ending
    except (RuntimeError, KeyboardInterrupt) as exc:
        assert exc is ending
    assert locks_of(out, work) == [] and (work / "job.json").exists()
    with own_job(str(out), str(work), rgb=str(sample["rgb"]), target=str(sample["target"])):
        pass  # free again, without a stale-lock notice
    assert locks_of(out, work) == []


# ---------------------------------------------------------------- refusals leave nothing behind


def test_refused_inputs_leave_nothing_behind(sample, all_nodata_target, transparent_rgb, tmp_path):
    for rgb, target, why in ((str(sample["rgb"]), all_nodata_target, "all nodata"),
                             (transparent_rgb, str(sample["target"]), "no pixel is valid in both")):
        with pytest.raises(InvalidInput, match=why):
            pipelines.superresolve(rgb, target, str(tmp_path / "sr.tif"), CFG)
        assert os.listdir(tmp_path) == []


def test_a_refusal_in_an_existing_work_dir_keeps_the_earlier_job(sample, all_nodata_target, tmp_path):
    """A resumable work dir is never removed by a refused run on the same output, and the earlier
    job still resumes: its tiles reused, a missing one computed from the real target (not from the
    refused run's LR copy of its empty one)."""
    out = str(tmp_path / "sr.tif")
    calls: list[int] = []

    def counting(target, guide, scale, ctx):
        calls.append(ctx.tile_index)
        return pipelines.bicubic_tile_fn(target, guide, scale, ctx)

    first = pipelines.superresolve(str(sample["rgb"]), str(sample["target"]), out, CFG, tile_fn=counting)
    with rasterio.open(first.cog) as ds:
        expected = ds.read()
    work = Path(out + ".work")
    before = sorted(p.name for p in (work / "tiles").iterdir())
    with pytest.raises(InvalidInput, match="all nodata"):
        pipelines.superresolve(str(sample["rgb"]), all_nodata_target, out, CFG)
    assert sorted(p.name for p in (work / "tiles").iterdir()) == before and (work / "job.json").exists()
    assert locks_of(Path(out), work) == []
    for f in (work / "tiles").glob("0.*"):  # one tile to compute again: it reads the LR target
        f.unlink()
    calls.clear()
    again = pipelines.superresolve(str(sample["rgb"]), str(sample["target"]), out, CFG, tile_fn=counting)
    assert calls == [0]
    with rasterio.open(again.cog) as ds:  # from the real target, not the refused one's LR copy
        np.testing.assert_array_equal(ds.read(), expected)


# ---------------------------------------------------------------- the command, as two processes


def cli_env(tmp_path: Path) -> dict[str, str]:
    """A ``cmsr`` process with its own temporary Prefect API and home."""
    env = engine_env({"PREFECT_HOME": str(tmp_path / "prefect-home")})
    env.pop("PREFECT_API_URL", None)
    return env


def cmsr_run(rgb: str, target: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", rgb, target, "-o", str(out), "--method", "bp",
            "--workers", "1", *extra]


@pytest.mark.engine
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(sample, tmp_path):
    out = tmp_path / "sr.tif"
    other_target = tmp_path / "thermal_other.tif"
    shutil.copy(sample["target"], other_target)
    env = cli_env(tmp_path)
    first = subprocess.Popen(cmsr_run(str(sample["rgb"]), str(sample["target"]), out, "--json"), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = Path(out_lock_path(str(out)))
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert lock.exists(), "the first run never took its lock"
        t0 = time.time()
        second = subprocess.run(cmsr_run(str(sample["rgb"]), str(other_target), out), cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        took = time.time() - t0
        assert first.poll() is None, "the first run ended before the second was checked"
        assert second.returncode == 2, second.stderr
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: output file {out}: another cmsr job"), second.stderr
        assert f"pid {first.pid}" in lines[0] and "target nir_40m.tif" in lines[0], lines[0]
        assert took < 20, f"the refusal took {took:.1f} s"
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["processed"] == 1
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).mean() > 0.99
    assert not lock.exists() and not os.path.exists(work_dir_lock_path(str(out) + ".work"))


@pytest.mark.engine
def test_run_refuses_an_all_nodata_target_before_the_engine_starts(sample, all_nodata_target, tmp_path):
    out = tmp_path / "sr.tif"
    t0 = time.time()
    r = subprocess.run(cmsr_run(str(sample["rgb"]), all_nodata_target, out), cwd=REPO, env=cli_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "thermal_empty.tif: all nodata" in lines[0], r.stderr
    assert took < 15, f"the refusal took {took:.1f} s (the engine started?)"
    left = [n for n in os.listdir(tmp_path) if n != "prefect-home"]  # (Prefect's home: made by its import)
    assert left == [], left  # no output, no OUT.work, no lock
