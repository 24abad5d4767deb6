"""Tile results that cannot be silently wrong, no debris, readable outputs (issue 11).

On the bundled real sample (Sentinel-2 10 m RGB + 40 m NIR, 20 tiles of 64 px, bicubic so no
network trains): a damaged, truncated or mangled tile result is recomputed with a warning that
names it, and never stitched; ``finish`` after a resume counts the reused tiles; a moved work dir
is used where it is; outputs get a plain file's mode; a killed finish's temp files are removed by
the next one, a live writer's are not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

import pipelines
from pipelines import JobConfig, bicubic_tile_fn
from tiling import files

REPO = Path(__file__).resolve().parents[1]
CFG = JobConfig(method="bicubic", tile_size=64, halo=16, quicklook=False)


def pixels(path: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def reference(sample, tmp_path_factory) -> dict:
    """The sample's output and report from one clean run (what every repaired run must give)."""
    res = run(sample, str(tmp_path_factory.mktemp("ref") / "ref.tif"))
    return {"pixels": pixels(res.cog), "report": json.load(open(res.report))}


def run(sample, out: str, config: JobConfig = CFG, calls: list[int] | None = None) -> pipelines.JobOutputs:
    def counting(target, guide, scale, ctx):
        if calls is not None:
            calls.append(ctx.tile_index)
        return bicubic_tile_fn(target, guide, scale, ctx)

    return pipelines.superresolve(str(sample["rgb"]), str(sample["target"]), out, config, tile_fn=counting)


def tile_stats(report: dict, index: int) -> dict:
    return {k: v for k, v in report["tiles"][index]["stats"].items() if k != "fn_seconds"}


def test_damaged_tile_result_is_recomputed_and_never_stitched(sample, reference, tmp_path):
    """Part of ``3.npy`` overwritten (same size, plausible temperatures): not finished, ``finish``
    refuses it naming the tile, a rerun recomputes it (saying so) and the map is the clean one."""
    out = str(tmp_path / "o.tif")
    run(sample, out)
    job = pipelines.load_job(str(tmp_path / "o.tif.work" / "job.json"))
    npy = job.tile_paths(3)[0]
    size = os.path.getsize(npy)
    garbage = np.random.default_rng(0).uniform(-50, 80, 3000).astype(np.float32).tobytes()
    with open(npy, "r+b") as f:
        f.seek(200)
        f.write(garbage)
    assert os.path.getsize(npy) == size
    assert pipelines.pending(job) == [3]
    with pytest.raises(RuntimeError, match=r"tile 3: result damaged \(checksum mismatch\).*run the job again"):
        pipelines.finish(job.job_path, [])
    calls: list[int] = []
    with pytest.warns(UserWarning, match=r"tile 3: result damaged \(checksum mismatch\), recomputing"):
        res = run(sample, out, calls=calls)
    assert calls == [3]
    np.testing.assert_array_equal(pixels(res.cog), reference["pixels"])
    rep = json.load(open(res.report))
    assert tile_stats(rep, 3) == tile_stats(reference["report"], 3)
    assert rep["totals"]["consistency_max"] == reference["report"]["totals"]["consistency_max"]
    assert rep["totals"]["reused"] == 19


def test_truncated_result_and_mangled_records_are_recomputed(sample, reference, tmp_path):
    """A truncated ``.npy``, a tile JSON that is ``[1]``, one whose result lacks fields, one that is
    not JSON, and a result written by an older version (absolute path, no checksum): each tile runs
    again with a warning naming it; nothing blocks the job."""
    out = str(tmp_path / "o.tif")
    run(sample, out)
    job = pipelines.load_job(str(tmp_path / "o.tif.work" / "job.json"))
    npy5 = job.tile_paths(5)[0]
    with open(npy5, "r+b") as f:
        f.truncate(os.path.getsize(npy5) // 2)
    Path(job.tile_paths(7)[1]).write_text("[1]")
    Path(job.tile_paths(8)[1]).write_text(json.dumps({"key": job.key, "result": {"index": 8}}))
    Path(job.tile_paths(9)[1]).write_text("{not json")
    old = json.loads(Path(job.tile_paths(11)[1]).read_text())
    old.pop("npy", None)
    old["result"]["path"] = job.tile_paths(11)[0]
    Path(job.tile_paths(11)[1]).write_text(json.dumps(old))
    assert pipelines.pending(job) == [5, 7, 8, 9, 11]
    calls: list[int] = []
    with pytest.warns(UserWarning) as caught:
        res = run(sample, out, calls=calls)
    said = " | ".join(str(w.message) for w in caught)
    for i in (5, 7, 8, 9, 11):
        assert f"tile {i}: " in said and "recomputing" in said
    assert "tile 5: result damaged (file is" in said
    assert sorted(calls) == [5, 7, 8, 9, 11]
    np.testing.assert_array_equal(pixels(res.cog), reference["pixels"])


def test_report_counts_tiles_reused_from_an_earlier_run(sample, tmp_path):
    """The flow's resume: prepare, run only ``pending``, finish with those results. Tiles done
    by the interrupted run are reused and the report says how many."""
    job = pipelines.prepare(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "o.tif"), CFG)
    pipelines.run_tiles(job.job_path, pipelines.pending(job)[:7], tile_fn=bicubic_tile_fn)  # "interrupted"
    again = pipelines.prepare(str(sample["rgb"]), str(sample["target"]), str(tmp_path / "o.tif"), CFG)
    todo = pipelines.pending(again)
    assert len(todo) == 13
    results = pipelines.run_tiles(again.job_path, todo, tile_fn=bicubic_tile_fn)
    rep = json.load(open(pipelines.finish(again.job_path, results).report))
    assert rep["totals"]["reused"] == 7 and rep["totals"]["processed"] == 20
    assert [t["index"] for t in rep["tiles"] if t["reused"]] == list(range(7))


def test_moved_work_dir_is_used_where_it_is(sample, reference, tmp_path):
    """Tile JSONs name their ``.npy`` relative to the work dir, and a job loaded from its new
    place uses the work dir there: after a move nothing is recomputed and nothing is read from
    (or written to) the old place."""
    first = tmp_path / "first"
    out = str(tmp_path / "o.tif")
    run(sample, out, CFG.replace(work_dir=str(first)))
    rec = json.loads((first / "tiles" / "3.json").read_text())
    assert rec["result"]["path"] == "tiles/3.npy"
    moved = tmp_path / "elsewhere" / "w"
    moved.parent.mkdir()
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    job_path = str(moved / "job.json")
    job = pipelines.load_job(job_path)
    assert job.work_dir == str(moved) and job.target_lr == str(moved / "target_lr.tif")
    assert pipelines.pending(job_path) == []
    assert all(r.reused and r.path.startswith(str(moved)) for r in pipelines.run_tiles(job_path, range(20)))
    os.unlink(out)
    res = pipelines.finish(job_path)
    np.testing.assert_array_equal(pixels(res.cog), reference["pixels"])
    # the same command pointed at the new place reuses every tile
    calls: list[int] = []
    res = run(sample, out, CFG.replace(work_dir=str(moved)), calls)
    assert calls == [] and not first.exists()
    np.testing.assert_array_equal(pixels(res.cog), reference["pixels"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_outputs_get_a_plain_files_mode(sample, tmp_path, umask, mode):
    """COG, report, quick-look and work files: what ``open(path, "w")`` gives under the umask."""
    old = os.umask(umask)
    try:
        res = run(sample, str(tmp_path / "o.tif"), CFG.replace(quicklook=True))
    finally:
        os.umask(old)
    work = tmp_path / "o.tif.work"
    paths = [res.cog, res.report, res.quicklook, work / "job.json", work / "target_lr.tif", work / "tiles" / "0.npy",
             work / "tiles" / "0.json"]
    assert {str(p): oct(os.stat(p).st_mode & 0o777) for p in paths} == {str(p): oct(mode) for p in paths}


KILLED_FINISH = """
import os, sys, time
import rasterio.shutil
import pipelines

def hang(src, dst, **kw):  # the COG writer, killed mid-write
    with open(dst, "wb") as f:
        f.write(b"II*\\0")
    print("writing", flush=True)
    time.sleep(600)

rasterio.shutil.copy = hang
pipelines.finish(sys.argv[1])
"""


def test_a_killed_finish_leaves_nothing_the_next_one_keeps(sample, reference, tmp_path):
    """SIGKILL during the COG write leaves the COG's temp file and the scratch mosaic; the next
    finish removes them (and an older version's ``stitched.tif``), writes the outputs, and
    keeps files that are not ours or whose writer still runs."""
    out = tmp_path / "o.tif"
    run(sample, str(out))
    work = tmp_path / "o.tif.work"
    job_path = str(work / "job.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

    def listing() -> set[str]:
        return {str(f) for d in (tmp_path, work) for f in d.iterdir() if f.is_file()}

    before = listing()
    p = subprocess.Popen([sys.executable, "-c", KILLED_FINISH, job_path], stdout=subprocess.PIPE, env=env)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"writing"
    finally:
        p.kill()
        p.wait()
    debris = listing() - before
    assert [os.path.basename(d) for d in debris if os.path.dirname(d) == str(tmp_path)][0].startswith(".o.tif.")
    assert len(debris) == 2  # the COG's temp file and the scratch mosaic
    legacy = work / "stitched.tif"
    legacy.write_bytes(b"old")
    os.utime(legacy, (time.time() - 7200,) * 2)
    keep = [tmp_path / ".o.tif.notes", tmp_path / "o.tif.abc.tmp.tif", tmp_path / ".other.tif.h-1.abc.tmp.tif"]
    for k in keep:
        k.write_bytes(b"x")
    with pytest.raises(InterruptedError):
        with files.atomic_output(tmp_path / "o.quicklook.png") as live:  # a writer of this process, still writing
            res = pipelines.finish(job_path)
            assert os.path.exists(live)
            raise InterruptedError  # (that writer gives up: nothing replaces the quick-look)
    assert not [d for d in debris if os.path.exists(d)] and not legacy.exists()
    assert all(k.exists() for k in keep)
    np.testing.assert_array_equal(pixels(res.cog), reference["pixels"])
    assert not [f for f in os.listdir(work) if f.startswith(".")]


def test_remove_stale_temps_only_removes_temps_whose_writer_is_gone(tmp_path):
    """The rule, exactly: our name pattern and base names only; on this host, a writer process
    that no longer runs; another host's or a nameless (older version's) temp only after an hour."""
    host = files._HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".a.tif.{host}-{dead.pid}.x1.tmp.tif": False,  # gone: removed
            f".a.tif.{host}-{dead.pid}.x1.tmp.tif.ovr.tmp": False,  # GDAL's file beside it
            f".a.tif.{host}-{live.pid}.x2.tmp.tif": True,  # its writer runs
            f".a.tif.{host}-{os.getpid()}.x3.tmp.tif": True,  # ours (another thread may write it)
            ".a.tif.otherhost-1.x4.tmp.tif": True,  # another host, fresh
            ".a.tif.otherhost-2.x5.tmp.tif@old": False,  # another host, 2 h untouched
            ".a.tif.abc123.tmp.tif": True,  # older version's name, fresh
            ".a.tif.abc124.tmp.tif@old": False,  # older version's name, 2 h untouched
            f".b.tif.{host}-{dead.pid}.x6.tmp.tif": True,  # not a name we asked for
            "a.tif": True,
            ".a.tif": True,
        }
        for name in names:
            path = tmp_path / name.removesuffix("@old")
            path.write_bytes(b"")
            if name.endswith("@old"):
                os.utime(path, (time.time() - 7200,) * 2)
        removed = files.remove_stale_temps(tmp_path, {"a.tif"})
        assert sorted(os.path.basename(r) for r in removed) == sorted(
            n.removesuffix("@old") for n, kept in names.items() if not kept)
        assert sorted(os.listdir(tmp_path)) == sorted(n.removesuffix("@old") for n, kept in names.items() if kept)
    finally:
        live.kill()
        live.wait()
