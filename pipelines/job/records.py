"""What a job writes down: ``Job`` (job.json), ``TileResult`` (one per tile), ``JobOutputs``.

Every stage hands these between processes as files or small JSON-able values, never arrays,
so ``flows`` can run each stage wherever it likes with only shared storage in common.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Any

import numpy as np

from tiling import rasters
from tiling.plan import TilePlan
from tiling.files import atomic_output

from ..config import JobConfig

JOB_FORMAT = 3  # 2: Job.guide (RasterInfo) replaced guide_path; 3: Job.survey_model (the old warm start gone)


def package_version() -> str:
    try:
        return metadata.version("cmsr")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class SurveyModelChoice:
    """Whether a job's tiles fine-tune from a survey model, decided once by ``prepare`` (the
    tiles, the flow, the plan and the report all read it from here, never decide again)."""

    used: bool = False
    mode: str = "off"
    """``auto`` (``JobConfig.survey_model`` None), ``forced`` (True), ``off`` (False), ``reused``
    (``JobConfig.model``) or ``not applicable`` (another method, a custom tile function)."""
    reason: str = ""
    """Why, in words (e.g. ``auto: 9 active tiles, >= 4``)."""
    reused_from: str | None = None
    """The reused model file as given (absolute); None: learned by this job (or none)."""
    sha256: str | None = None
    """The reused file's content (part of the plan key); None when learned."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SurveyModelChoice":
        return cls(**d)


@dataclass(frozen=True)
class Job:
    """A prepared job: inputs, grids, plan, survey statistics. Frozen; round-trips through JSON."""

    key: str  # hash of inputs (sha256) + result-relevant settings + plan geometry
    config: JobConfig
    rgb: rasters.RasterInfo
    target: rasters.RasterInfo
    out: str
    work_dir: str
    guide: rasters.RasterInfo  # the RGB itself, or its warp onto the north-up HR grid (work dir)
    guide_bands: tuple[int, ...]  # bands of ``guide`` the tiles use
    target_bands: tuple[int, ...]
    target_lr: str  # target on the LR grid (float32, NaN nodata), in the work dir
    resampling: str  # how the target got onto the LR grid: copy | average | bilinear
    plan: TilePlan
    gsd_ratio: float
    overlap: float
    target_range: tuple[tuple[float, float], ...]
    guide_range: tuple[tuple[float, float], ...]
    checksums: dict[str, str]
    warnings: tuple[str, ...] = ()
    survey_model: SurveyModelChoice = SurveyModelChoice()
    version: str = field(default_factory=package_version)
    format: int = JOB_FORMAT

    @property
    def job_path(self) -> str:
        return os.path.join(self.work_dir, "job.json")

    @property
    def guide_path(self) -> str:
        return self.guide.path

    @property
    def scale(self) -> int:
        return self.plan.scale

    @property
    def report_path(self) -> str:
        return sibling_path(self.out, ".report.json")

    @property
    def quicklook_path(self) -> str:
        return sibling_path(self.out, ".quicklook.png")

    @property
    def model_output_path(self) -> str:
        """``<out stem>.model.pt``: the survey model beside the output, for the next flight to reuse."""
        return sibling_path(self.out, ".model.pt")

    @property
    def survey_model_path(self) -> str:
        """The survey model the tiles fine-tune from, in the work dir, named by the plan key (learned
        or a reused file's copy): a model of another plan in the same work dir is never taken."""
        return os.path.join(self.work_dir, f"survey_model_{self.key[:16]}.pt")

    def tile_paths(self, index: int) -> tuple[str, str]:
        d = os.path.join(self.work_dir, "tiles")
        return os.path.join(d, f"{index}.npy"), os.path.join(d, f"{index}.json")

    def moved_to(self, work_dir: str) -> "Job":
        """This job with its work dir at ``work_dir``: the work dir and the files in it (the LR
        target, a warped guide) are found where the work dir is now; inputs and outputs stay."""
        old = self.work_dir

        def rebased(p: str) -> str:
            return work_dir + p[len(old):] if p == old or p.startswith(old + os.sep) else p

        return replace(self, work_dir=work_dir, target_lr=rebased(self.target_lr),
                       guide=replace(self.guide, path=rebased(self.guide.path)))

    def to_dict(self) -> dict:
        return {
            "format": self.format, "version": self.version, "key": self.key, "config": self.config.to_dict(),
            "rgb": self.rgb.to_dict(), "target": self.target.to_dict(), "out": self.out,
            "work_dir": self.work_dir, "guide": self.guide.to_dict(), "guide_bands": list(self.guide_bands),
            "target_bands": list(self.target_bands), "target_lr": self.target_lr, "resampling": self.resampling,
            "plan": self.plan.to_dict(), "gsd_ratio": self.gsd_ratio, "overlap": self.overlap,
            "target_range": [list(r) for r in self.target_range],
            "guide_range": [list(r) for r in self.guide_range], "checksums": dict(self.checksums),
            "warnings": list(self.warnings), "survey_model": self.survey_model.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        if d.get("format") != JOB_FORMAT:
            raise ValueError(f"job.json format {d.get('format')!r}: this version reads format {JOB_FORMAT}")
        return cls(
            key=d["key"], config=JobConfig.from_dict(d["config"]), rgb=rasters.RasterInfo.from_dict(d["rgb"]),
            target=rasters.RasterInfo.from_dict(d["target"]), out=d["out"], work_dir=d["work_dir"],
            guide=rasters.RasterInfo.from_dict(d["guide"]), guide_bands=tuple(d["guide_bands"]),
            target_bands=tuple(d["target_bands"]), target_lr=d["target_lr"], resampling=d["resampling"],
            plan=TilePlan.from_dict(d["plan"]), gsd_ratio=float(d["gsd_ratio"]), overlap=float(d["overlap"]),
            target_range=tuple(tuple(r) for r in d["target_range"]),  # type: ignore[misc]
            guide_range=tuple(tuple(r) for r in d["guide_range"]),  # type: ignore[misc]
            checksums=dict(d["checksums"]), warnings=tuple(d["warnings"]),
            survey_model=SurveyModelChoice.from_dict(d["survey_model"]), version=d["version"], format=d["format"],
        )


@dataclass(frozen=True)
class TileResult:
    """What one tile's unit of work returns (small, JSON-able; never arrays)."""

    index: int
    # the tile's (B, h, w) float32 .npy over its read window; None when skipped. Absolute here,
    # relative to the work dir in the tile's JSON (a moved work dir still finds its tiles)
    path: str | None
    skipped: bool
    reused: bool  # found finished on disk (resume)
    seconds: float
    valid_fraction: float
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TileResult":
        return cls(**d)


@dataclass(frozen=True)
class JobOutputs:
    cog: str
    report: str
    quicklook: str | None
    registration: str | None = None  # the survey registration map (a cmsr job that registers), else None
    model: str | None = None  # the survey model beside the output (a job that used one), else None

    def to_dict(self) -> dict:
        return asdict(self)


def sibling_path(out: str, suffix: str) -> str:
    """``<out stem><suffix>``: the report and quick-look sit beside the COG, named after it."""
    root, ext = os.path.splitext(out)
    return (root if ext.lower() in (".tif", ".tiff") else out) + suffix


def jsonable(v: Any):
    """``json.dumps`` default: numpy scalars as numbers, anything else as its text."""
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def write_json(path: str, obj: Any, indent: int | None = None) -> None:
    """``obj`` as JSON at ``path``, atomically (readers on shared storage never see half a file)."""
    text = json.dumps(obj, indent=indent, default=jsonable)
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def save_npy(path: str, arr: np.ndarray) -> None:
    """``arr`` as ``.npy`` at ``path``, atomically."""
    with atomic_output(path) as tmp:
        np.save(tmp, arr)


def write_job(job: Job) -> None:
    write_json(job.job_path, job.to_dict(), indent=1)


@functools.lru_cache(maxsize=8)
def _load_job_cached(path: str, mtime_ns: int, size: int) -> Job:
    with open(path) as f:
        job = Job.from_dict(json.load(f))
    here = os.path.dirname(path)
    if job.work_dir != here and not (os.path.isdir(job.work_dir) and os.path.samefile(job.work_dir, here)):
        job = job.moved_to(here)
    return job


def load_job(job_path: str) -> Job:
    """The Job in ``job_path``, cached per process while the file is unchanged (a worker
    loads it once for all its tiles; a re-prepared job is read again).

    The work dir is where ``job.json`` is: a work dir that was moved (or is mounted elsewhere
    on a worker) is used where it is now, though ``job.json`` names the old place."""
    st = os.stat(job_path)
    return _load_job_cached(os.path.abspath(job_path), st.st_mtime_ns, st.st_size)
