"""One super-resolution job, engine-agnostic (see ARCHITECTURE.md): ``prepare`` -> ``run_tile``
(any number, anywhere) -> ``finish``; ``superresolve`` does all of it in-process."""

from .config import METHODS, STITCH_MODES, JobConfig
from .job import (
    Job,
    JobOutputs,
    TileResult,
    finish,
    load_job,
    pending,
    prepare,
    run_tile,
    run_tiles,
    superresolve,
    write_job_quicklook,
)
from .tilefn import TileContext, TileFn, bicubic_tile_fn

__all__ = [
    "METHODS", "STITCH_MODES", "JobConfig", "Job", "JobOutputs", "TileResult", "TileContext", "TileFn",
    "bicubic_tile_fn", "prepare", "load_job", "run_tile", "run_tiles", "pending", "finish", "superresolve",
    "write_job_quicklook",
]
