"""One super-resolution job, engine-agnostic (see ARCHITECTURE.md): ``prepare`` -> ``run_tiles``
(any number of calls, anywhere) -> ``finish``; ``superresolve`` does all of it in-process."""

from .config import METHODS, STITCH_MODES, SURVEY_MODEL_MIN_TILES, JobConfig, SurveyRegistration
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
    learn_survey,
    register_survey,
    regularise_survey,
    run_tile,
    run_tiles,
    superresolve,
    write_job_quicklook,
)
from .tilefn import TileBatchFn, TileContext, TileFn, batch_of, bicubic_tile_fn

__all__ = [
    "METHODS", "STITCH_MODES", "JobConfig", "Job", "JobOutputs", "TileResult", "TileContext", "TileFn",
    "TileBatchFn", "batch_of", "bicubic_tile_fn", "prepare", "load_job", "run_tile", "run_tiles", "pending", "learn_survey", "SURVEY_MODEL_MIN_TILES", "finish", "superresolve",
    "write_job_quicklook", "own_job", "JobBusy", "StaleLockWarning",
]
