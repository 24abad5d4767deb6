"""Reliability of the Prefect flow on real Dask processes (``engine`` tests: few, CPU-cheap).

Tiles are the bundled real sample (Sentinel-2, 300 x 200 HR px, x4) cut into 64 px tiles, with
the bicubic tile function (optionally slowed down) so every run is seconds of CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import REPO, engine_env

pytestmark = pytest.mark.engine

TILE = dict(tile_size=64, halo=8)


def _config(work_dir: Path, tile_fn: str | None = None, **kw):
    import pipelines

    return pipelines.JobConfig(method="bicubic", tile_fn=tile_fn, work_dir=str(work_dir), quicklook=False,
                               **{**TILE, **kw})


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def local_reference(sample, tmp_path_factory):
    """The same job in-process, tile after tile (no engine): the bit-for-bit reference."""
    import pipelines

    d = tmp_path_factory.mktemp("local")
    outs = {}
    for fn in ("flow_tilefns:slow",):
        os.environ.setdefault("CMSR_TEST_TILE_SLEEP", "0")
        o = pipelines.superresolve(str(sample["rgb"]), str(sample["target"]), str(d / f"{fn[-5:]}.tif"),
                                   _config(d / f"w-{fn[-5:]}", fn))
        outs[fn] = _read(o.cog)
    return outs


def _run(sample, out: Path, scheduler: str, tile_fn: str, retries: int = 0, **kw):
    from flows.cluster import ClusterSpec
    from flows.survey import RunOptions, run_survey

    cfg = _config(out.parent / (out.stem + ".work"), tile_fn)
    return run_survey(str(sample["rgb"]), str(sample["target"]), str(out), cfg,
                      RunOptions(cluster=ClusterSpec(scheduler=scheduler), tile_retries=retries, **kw))


def test_existing_cluster_equals_local_bit_for_bit(sample, dask_processes, local_reference, tmp_path):
    out = tmp_path / "sr.tif"
    state = _run(sample, out, dask_processes.address, "flow_tilefns:slow")
    summary = state.result()
    assert summary["processed"] == 20 and summary["reused"] == 0
    np.testing.assert_array_equal(_read(out), local_reference["flow_tilefns:slow"])
    report = json.loads(Path(summary["report"]).read_text())
    assert report["totals"]["processed"] == 20


def test_failing_tile_names_it_and_keeps_finished_tiles(sample, dask_processes, tmp_path):
    import pipelines
    from flows.survey import TileFailed

    out = tmp_path / "crash.tif"
    state = _run(sample, out, dask_processes.address, "flow_tilefns:crash_on_7")
    assert state.is_failed()
    with pytest.raises(TileFailed) as err:
        state.result()
    assert "tile 7 of job" in str(err.value) and "simulated bad window" in str(err.value)
    job = pipelines.load_job(str(tmp_path / "crash.work" / "job.json"))
    assert pipelines.pending(job) == [7]  # every other tile is finished on disk, ready for resume
    assert not out.exists()


def test_two_concurrent_jobs_do_not_collide(sample, dask_processes, local_reference, tmp_path):
    """Two CLI processes at once on the same cluster, different outputs (and work dirs)."""
    env = engine_env()  # (the tile function runs in the workers: 0.5 s per tile there)
    procs = []
    for name in ("a", "b"):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", str(sample["rgb"]), str(sample["target"]), "-o",
             str(tmp_path / f"{name}.tif"), "--method", "bicubic", "--tile-size", "64", "--halo", "8",
             "--tile-fn", "flow_tilefns:slow", "--scheduler", dask_processes.address, "--json"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert json.loads(stdout)["processed"] == 20
    for name in ("a", "b"):
        np.testing.assert_array_equal(_read(tmp_path / f"{name}.tif"), local_reference["flow_tilefns:slow"])


def test_killed_cli_restarts_with_only_missing_tiles(sample, dask_processes, local_reference, tmp_path):
    env = engine_env()
    out = tmp_path / "k.tif"
    cmd = [sys.executable, "-m", "flows.cli", "run", str(sample["rgb"]), str(sample["target"]), "-o", str(out),
           "--method", "bicubic", "--tile-size", "64", "--halo", "8", "--tile-fn", "flow_tilefns:slow",
           "--scheduler", dask_processes.address, "--json"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    tiles = tmp_path / "k.tif.work" / "tiles"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(tiles.glob("*.npy"))) < 3:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    time.sleep(3)  # tasks already running on the workers finish and write their tile
    before = {f.name: f.stat().st_mtime_ns for f in tiles.glob("*.npy")}
    assert 3 <= len(before) < 20
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["reused"] == len(before) and summary["processed"] == 20
    after = {f.name: f.stat().st_mtime_ns for f in tiles.glob("*.npy")}
    assert len(after) == 20
    assert all(after[name] == mtime for name, mtime in before.items())  # finished tiles were not redone
    np.testing.assert_array_equal(_read(out), local_reference["flow_tilefns:slow"])


def test_serve_scan_processes_new_surveys_once(sample, dask_processes, tmp_path):
    """One scan of a watched folder (what ``cmsr serve`` runs on its schedule) is idempotent."""
    import shutil

    from flows.watch import process_pending

    s1 = tmp_path / "surveys" / "s1"
    s1.mkdir(parents=True)
    shutil.copy(sample["rgb"], s1 / "rgb_10m.tif")
    shutil.copy(sample["target"], s1 / "nir_40m.tif")
    (tmp_path / "surveys" / "empty").mkdir()
    defaults = {"method": "bicubic", "tile_size": 100, "halo": 8}
    engine = {"scheduler": dask_processes.address}
    rows = process_pending(str(tmp_path / "surveys"), defaults, engine)
    assert [r["status"] for r in rows] == ["processed"], rows
    assert (s1 / "cmsr" / "nir_40m_sr.tif").exists() and (s1 / "cmsr" / "nir_40m_sr.report.json").exists()
    rows = process_pending(str(tmp_path / "surveys"), defaults, engine)
    assert [r["status"] for r in rows] == ["up-to-date"]


def test_submit_to_scheduler_returns_run_id_and_runs(sample, dask_processes, tmp_path):
    out = tmp_path / "sub.tif"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "submit", str(sample["rgb"]), str(sample["target"]), "-o",
                        str(out), "--method", "bicubic", "--tile-size", "100", "--halo", "8", "--scheduler",
                        dask_processes.address, "--json"], cwd=REPO, env=engine_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["flow_run_id"]
    deadline = time.time() + 300
    while time.time() < deadline and not Path(str(out)[:-4] + ".report.json").exists():
        time.sleep(0.5)
    assert out.exists()
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for _ in range(60):
            fr = client.read_flow_run(run_id)
            if fr.state and fr.state.is_final():
                break
            time.sleep(0.5)
    assert fr.state.is_completed(), fr.state


def test_killing_a_worker_mid_run_still_completes(sample, dask_processes, local_reference, tmp_path):
    """Runs last among the cluster tests: it kills worker w1 (a replacement joins afterwards)."""
    import threading

    out = tmp_path / "w.tif"
    tiles = tmp_path / "w.work" / "tiles"
    victim = dask_processes.workers[0]

    def killer() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and len(list(tiles.glob("*.npy"))) < 3:
            time.sleep(0.1)
        victim.kill()

    t = threading.Thread(target=killer)
    t.start()
    state = _run(sample, out, dask_processes.address, "flow_tilefns:slow", retries=1)
    t.join()
    assert victim.poll() is not None, "the worker was not killed during the run"
    summary = state.result()
    assert summary["processed"] == 20
    np.testing.assert_array_equal(_read(out), local_reference["flow_tilefns:slow"])
    dask_processes.add_worker("w3")
    dask_processes.wait_workers(2)


def test_gpu_resource_limits_one_tile_per_worker(sample, prefect_harness, tmp_path):
    """CPU workers with two threads each declare a fake ``GPU=1``: tile tasks then run one at a
    time per worker. The control run on the same cluster without the annotation overlaps,
    which shows the probe can see concurrency (and that the annotation is what prevents it)."""
    from flows.cluster import ClusterSpec, open_cluster
    from flows.engine import worker_environment
    from flows.survey import superresolve_survey
    from prefect_dask import DaskTaskRunner

    env = {**worker_environment(), "CMSR_TEST_TILE_SLEEP": "0.4", "PYTHONPATH": os.environ["PYTHONPATH"]}
    spec = ClusterSpec(workers=1, threads_per_worker=2, resources=(("GPU", 1),), worker_env=tuple(env.items()))

    def max_overlap(folder: Path) -> int:
        rows = [json.loads(f.read_text()) for f in folder.glob("*.json")]
        assert len(rows) == 6
        events = sorted([(r["end"], -1) for r in rows] + [(r["start"], 1) for r in rows])
        cur = best = 0
        for _, d in events:
            cur += d
            best = max(best, cur)
        return best

    with open_cluster(spec) as handle:
        assert handle.gpu
        flow = superresolve_survey.with_options(task_runner=DaskTaskRunner(address=handle.address))
        for gpu, name in ((None, "gpu"), (False, "control")):
            cfg = _config(tmp_path / f"{name}.work", "flow_tilefns:probe", tile_size=100)
            summary = flow(str(sample["rgb"]), str(sample["target"]), str(tmp_path / f"{name}.tif"),
                           config=cfg.to_dict(), gpu=gpu, tile_retries=0)
            assert summary["processed"] == 6
        assert max_overlap(tmp_path / "gpu.work" / "probe") == 1
        assert max_overlap(tmp_path / "control.work" / "probe") == 2


def test_demo_is_offline_and_clean(tmp_path):
    """``cmsr demo`` with everything default except a quick method: the temporary Prefect API and
    the embedded cluster start by themselves, nothing resolves or connects beyond loopback
    (checked in every process through a sitecustomize hook), and stderr has no warning/error."""
    netlog = tmp_path / "net.log"
    env = engine_env({"PREFECT_HOME": str(tmp_path / "home"), "CMSR_TEST_NETLOG": str(netlog)})
    env.pop("PREFECT_API_URL", None)
    for k in [k for k in env if k.startswith("PREFECT_") and k not in ("PREFECT_HOME",)]:
        env.pop(k)  # only the CLI's own defaults
    env.pop("DO_NOT_TRACK", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "netguard"), env["PYTHONPATH"]])
    r = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--method", "bp", "--out", str(tmp_path / "demo"),
                        "--workers", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    bad = [ln for ln in r.stderr.splitlines() if any(w in ln.lower() for w in ("warn", "error", "traceback"))]
    assert not bad, r.stderr
    out = tmp_path / "demo" / "nir_10m_bp.tif"
    assert f"output:     {out}" in r.stdout and out.exists()
    assert (tmp_path / "demo" / "nir_10m_bp.quicklook.png").exists()
    assert "RMSE" in r.stdout
    assert not netlog.exists() or netlog.read_text() == "", netlog.read_text()


def test_run_with_guide_bands_on_a_multiband_ortho(shared_data, dask_processes, tmp_path):
    """``cmsr run --guide-bands 3,2,1`` end to end on the real 6-band Landsat 7 ortho (guided by
    its red, green, blue) and the real 90 m DEM: the COG lands on the ortho's grid."""
    folder = shared_data / "geo" / "landsat7_olinda"
    out = tmp_path / "dem_sr.tif"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(folder / "L7_ETMs.tif"),
                        str(folder / "olinda_dem_utm25s.tif"), "-o", str(out), "--method", "bicubic",
                        "--guide-bands", "3,2,1", "--target-bands", "1", "--tile-size", "128", "--halo", "8",
                        "--scheduler", dask_processes.address, "--json"], cwd=REPO, env=engine_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["processed"] >= 1
    report = json.loads(Path(json.loads(r.stdout)["report"]).read_text())
    assert report["config"]["guide_bands"] == [3, 2, 1]
    with rasterio.open(out) as ds, rasterio.open(folder / "L7_ETMs.tif") as l7:
        assert ds.count == 1 and ds.shape == l7.shape and ds.transform == l7.transform and ds.crs == l7.crs


def test_registration_stage_runs_as_tasks_and_warns_once_in_the_driver(sample, dask_processes, tmp_path):
    """A cmsr job (tiny budget) on an RGB moved 3.7 target px east: the registration stage runs on
    the cluster's workers before the tiles, its field is the one made in-process, the map is
    written beside the output, and the misalignment warning is said once, in this process."""
    import warnings

    import pipelines
    from flows.cluster import ClusterSpec
    from flows.survey import RunOptions, run_survey
    from test_survey_registration import TINY_JOB, shifted_rgb

    rgb = shifted_rgb(sample, tmp_path, 3.7 * 40.0, 0.0)
    learning = (("sample_tiles", 3), ("iterations_per_stage", 4), ("finetune_iters", 2), ("finetune_min_iters", 1))
    cfg = pipelines.JobConfig(method="cmsr", preset="fast", tile_size=96, halo=16, cmsr_overrides=TINY_JOB,
                              quicklook=False, survey_learning=learning)  # 12 tiles: a survey model (auto)
    out = tmp_path / "sr.tif"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = run_survey(rgb, str(sample["target"]), str(out), cfg,
                           RunOptions(cluster=ClusterSpec(scheduler=dask_processes.address), tiles_per_task=3))
    summary = state.result()
    said = [str(w.message) for w in caught if issubclass(w.category, pipelines.MisalignmentWarning)]
    assert len(said) == 1 and "at the limit of the shift search" in said[0]
    assert summary["registration"] == str(tmp_path / "sr.registration.tif") and Path(summary["registration"]).exists()
    flow_field = json.loads((Path(str(out) + ".work") / "registration" / "field.json").read_text())
    here = pipelines.prepare(rgb, str(sample["target"]), str(tmp_path / "here.tif"), cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipelines.register_survey(here.job_path)
    local_field = json.loads((Path(here.work_dir) / "registration" / "field.json").read_text())
    assert flow_field["tiles"] == local_field["tiles"]
    report = json.loads(Path(summary["report"]).read_text())
    assert report["registration"]["warning"] == said[0] and said[0] in report["warnings"]
    # the survey-model task ran on a worker after the field, before the tiles, which fine-tuned from it
    assert summary["model"] == str(tmp_path / "sr.model.pt") and Path(summary["model"]).exists()
    assert report["survey_model"]["used"] and report["survey_model"]["mode"] == "auto"
    done = [t["stats"] for t in report["tiles"] if not t["skipped"]]
    assert done and all(t["survey_model"] and t["iterations"] <= 2 for t in done)
