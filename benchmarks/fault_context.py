"""What every fault case is handed: the inputs, the CLI, a fresh folder, and one shared clean run.

Why one shared clean run (the *baseline*): half of issue 11's items start from a finished job
(damage a tile result and rerun, kill the COG write and rerun, resume, move the work dir). One
clean ``cmsr run`` is made once, backed up, and restored to its own paths before each such case
(the job is keyed to its output path, so a copy elsewhere would start afresh); its pixels are the
reference every repaired run must reproduce exactly (``--method bp`` is deterministic).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fault_harness import Cli, CliRun, pixels
from fault_inputs import FaultInputs, Survey

#: The cheap settings every survey run uses: a deterministic method, 20 tiles of 64 px, one worker.
FAST = ("--method", "bp", "--tile-size", "64", "--halo", "8", "--workers", "1")


def run_args(rgb: str, target: str, out: str | Path, *extra: str) -> list[str]:
    return ["run", rgb, target, "-o", str(out), *FAST, *extra]


@dataclass(frozen=True)
class Baseline:
    """The clean run of the base survey: where it is, what it printed, what it made."""

    folder: Path
    out: Path
    run: CliRun
    pixels: np.ndarray | None
    report: dict
    modes: dict[str, int]  # relative path -> st_mode & 0o777, right after the run
    rgb: str
    thermal: str

    @property
    def work(self) -> Path:
        return Path(str(self.out) + ".work")

    @property
    def report_path(self) -> Path:
        return self.out.with_suffix(".report.json")

    def args(self, *extra: str) -> list[str]:
        return run_args(self.rgb, self.thermal, self.out, *extra)

    def finished_tiles(self) -> list[int]:
        """Tile indices with a result (``.npy`` and ``.json``) in the work dir."""
        tiles = self.work / "tiles"
        return sorted(int(p.stem) for p in tiles.glob("*.json") if (tiles / f"{p.stem}.npy").exists())


class Context:
    def __init__(self, scratch: Path, timeout: float) -> None:
        self.scratch = scratch
        self.inputs = FaultInputs(scratch / "inputs")
        self.survey: Survey = self.inputs.survey()
        (scratch / "prefect").mkdir(parents=True, exist_ok=True)
        self.cli = Cli(cwd=scratch, prefect_home=scratch / "prefect", timeout=timeout)
        self.timeout = timeout
        self._baseline: Baseline | None = None

    def folder(self, case_id: str) -> Path:
        """A fresh, empty folder for one case's outputs."""
        d = self.scratch / "cases" / case_id
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def run(self, args: Sequence[str], **kw) -> CliRun:
        return self.cli.run(args, **kw)

    # ------------------------------------------------------------------ the shared clean run

    def baseline(self) -> Baseline:
        """The clean run (made on first use, under umask 022)."""
        if self._baseline is None:
            folder = self.scratch / "baseline"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            out = folder / "sr.tif"
            rgb, thermal = self.survey.rgb, self.survey.thermal
            run = self.cli.run(run_args(rgb, thermal, out), umask=0o022)
            modes = {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}
            report_path = out.with_suffix(".report.json")
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            ref = pixels(out) if out.exists() else None
            shutil.rmtree(self.scratch / "baseline.backup", ignore_errors=True)
            shutil.copytree(folder, self.scratch / "baseline.backup", symlinks=True)
            self._baseline = Baseline(folder, out, run, ref, report, modes, rgb, thermal)
        return self._baseline

    def restored_baseline(self) -> Baseline:
        """The clean run's folder put back exactly as the run left it (same paths, modes, times)."""
        b = self.baseline()
        shutil.rmtree(b.folder, ignore_errors=True)
        shutil.copytree(self.scratch / "baseline.backup", b.folder, symlinks=True)
        return b

    @staticmethod
    def remove_outputs(b: Baseline) -> None:
        """Delete the COG, report and quick-look (as before a resume: a stopped run made none)."""
        for p in (b.out, b.report_path, b.out.with_suffix(".quicklook.png")):
            if p.exists():
                os.unlink(p)
