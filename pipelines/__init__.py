"""One super-resolution job, engine-agnostic (see ARCHITECTURE.md): ``prepare`` -> ``run_tiles``
(any number of calls, anywhere) -> ``finish``; ``superresolve`` does all of it in-process."""

from .config import METHODS, STITCH_MODES, JobConfig, SurveyRegistration
from .job import (
    Job,
    JobBusy,
    JobOutputs,
    MisalignmentWarning,
    StaleLockWarning,
    TileResult,
    finish,
    load_job,
    own_job,
    pending,
    prepare,
    estimate_tiles,
    pending_estimates,
    pretrain_survey,
    register_survey,
    regularise_survey,
    run_tile,
    run_tiles,
    superresolve,
    warm_start_paths,
    write_job_quicklook,
)
from .tilefn import TileBatchFn, TileContext, TileFn, batch_of, bicubic_tile_fn

__all__ = [
    "METHODS", "STITCH_MODES", "JobConfig", "Job", "JobOutputs", "TileResult", "TileContext", "TileFn",
    "TileBatchFn", "batch_of", "bicubic_tile_fn", "prepare", "load_job", "run_tile", "run_tiles", "pending", "pretrain_survey", "warm_start_paths", "finish", "superresolve",
    "write_job_quicklook", "own_job", "JobBusy", "StaleLockWarning",
]
