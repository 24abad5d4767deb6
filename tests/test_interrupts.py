"""Ctrl-C on ``cmsr run`` (issue 11, item 5): exit 130 within seconds, one line naming the finished
tiles and the work dir, and nothing left running, whether the SIGINT goes to the whole process
group (a terminal's Ctrl-C) or to the main process only; plus how the CLI classifies an
interrupted or unfinished job.

The subprocess tests run the real engine (temporary Prefect API, embedded Dask cluster) on the
bundled real sample cut into many small ``bp`` tiles, so the job is still running when the
signal comes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO, engine_env
from flows.cli import app

runner = CliRunner()


def _wait_for_first_tile(proc: subprocess.Popen, tiles: Path, timeout_s: float = 300.0) -> None:
    """Until a tile result exists (cluster and API are up, tiles are running)."""
    deadline = time.monotonic() + timeout_s
    while not any(tiles.glob("*.json")):
        if proc.poll() is not None:
            pytest.fail(f"cmsr run ended (rc {proc.returncode}) before its first tile: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail("no tile finished in time")
        time.sleep(0.2)


def _session_gone(pgid: int, grace_s: float = 5.0) -> bool:
    """True once no process of the session ``pgid`` is left (within ``grace_s``)."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@pytest.mark.parametrize("target", ["process group", "main process"])
def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing_running(target, sample, tmp_path):
    import pipelines

    out = tmp_path / "o.tif"
    work_dir = Path(str(out) + ".work")
    cmd = [sys.executable, "-m", "flows.cli", "run", str(sample["rgb"]), str(sample["target"]), "-o", str(out),
           "--method", "bp", "--tile-size", "16", "--halo", "2", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=engine_env({"PREFECT_HOME": str(tmp_path / "prefect")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_first_tile(proc, work_dir / "tiles")
        t0 = time.monotonic()
        if target == "process group":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
        seconds = time.monotonic() - t0
        assert proc.returncode == 130, stderr
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, stderr
        m = re.fullmatch(r"error: interrupted; (\d+) finished tiles? kept in (.+); run the same command again "
                         r"to resume", lines[0])
        assert m, lines[0]
        assert Path(m[2]) == work_dir
        job = pipelines.load_job(str(work_dir / "job.json"))
        active = sum(1 for t in job.plan.tiles if not t.skip)
        assert int(m[1]) == active - len(pipelines.pending(job)) >= 1
        assert int(m[1]) < active  # it did stop
        assert seconds < 15
        assert _session_gone(proc.pid), subprocess.run(["ps", "-o", "pid,cmd", "-s", str(proc.pid)],
                                                       capture_output=True, text=True).stdout
        assert not out.exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def test_a_wrapped_keyboard_interrupt_becomes_job_interrupted(tmp_path):
    """However the library wraps the first KeyboardInterrupt (pydantic's serialisation error,
    Prefect's Crashed state returned normally), the record of the SIGINT decides."""
    from flows.errors import JobInterrupted
    from flows.interrupts import job_interruptible, requested

    def interrupted_inside_a_library() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt as exc:
            raise ValueError("Error calling function `_ser_model`: KeyboardInterrupt") from exc

    with pytest.raises(JobInterrupted) as ei:
        with job_interruptible(str(tmp_path)):
            interrupted_inside_a_library()
    assert ei.value.finished == 0 and ei.value.work_dir == str(tmp_path)
    with pytest.raises(JobInterrupted):
        with job_interruptible(str(tmp_path)):
            try:
                interrupted_inside_a_library()
            except ValueError:
                pass  # swallowed: a "Crashed" state comes back instead of an exception
            assert requested()
    assert not requested()  # the record ends with the run
    with job_interruptible(str(tmp_path)):  # no Ctrl-C: nothing changes
        pass
    with pytest.raises(ValueError):
        with job_interruptible(str(tmp_path)):
            raise ValueError("an ordinary bug stays one")


def _run_with_outcome(monkeypatch, sample, tmp_path, outcome: BaseException):
    """``cmsr run`` with the flow replaced by one that raises ``outcome``."""
    import flows.survey

    def run_survey(rgb, target, out, config, options, on_cluster=None, notice=None):
        raise outcome

    monkeypatch.setattr(flows.survey, "run_survey", run_survey)
    return runner.invoke(app, ["run", str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / "o.tif"),
                               "--method", "bicubic"])


def _one_line(r, code: int) -> str:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


def test_job_interrupted_is_exit_130_naming_tiles_and_dir(monkeypatch, sample, tmp_path):
    from flows.errors import JobInterrupted

    line = _one_line(_run_with_outcome(monkeypatch, sample, tmp_path, JobInterrupted(3, "/data/o.tif.work")), 130)
    assert line == "error: interrupted; 3 finished tiles kept in /data/o.tif.work; run the same command again to resume"
    line = _one_line(_run_with_outcome(monkeypatch, sample, tmp_path, JobInterrupted(1, "/w")), 130)
    assert "1 finished tile kept in /w" in line


def test_unfinished_tiles_is_a_failed_job_not_an_internal_error(monkeypatch, sample, tmp_path):
    from pipelines.job.tile_store import UnfinishedTiles

    exc = UnfinishedTiles("job /w/job.json: 2 tile(s) without a usable result: 3, 7; run the job again")
    line = _one_line(_run_with_outcome(monkeypatch, sample, tmp_path, exc), 1)
    assert line == f"error: {exc}"
    assert "internal error" not in line
