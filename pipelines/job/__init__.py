"""One super-resolution job, as its stages: prepare -> run_tiles (any number, anywhere) -> finish.

Every stage takes paths and returns small JSON-able values, so ``flows`` can fan tiles out over
Dask/Prefect: a worker needs only ``job.json`` (shared storage) and tile indexes. Tile results
are written atomically under ``<work_dir>/tiles/`` with the plan's key, so a restarted job does
only the missing tiles.

Modules, in the order a job uses them (each imports only those before it): ``ownership``
(``own_job``: one job per output and work dir at a time, lock files), ``records`` (Job,
TileResult, JobOutputs and their files), ``tile_store`` (tile result files, resume, ``pending``),
``preparation`` (``prepare``), ``tile_inputs`` (a tile's windows, its answer masked back),
``registration`` (the survey's registration field: ``estimate_tiles``, ``regularise_survey``,
``register_survey``), ``survey_choice`` (whether a job uses a survey model, a reused file checked:
called by ``prepare``), ``survey_learning`` (``learn_survey``: the survey model), ``execute``
(``run_tiles``/``run_tile``), ``outputs`` (``finish``: stitch, COG, report, quick-look, the model
beside the output). Module names differ from the functions they hold, so
``pipelines.job.prepare`` is always the function.
"""

from __future__ import annotations

from .. import tilefn
from ..config import JobConfig
from .execute import run_tile, run_tiles, tiles_per_batch
from .outputs import finish, write_job_quicklook
from .ownership import JobBusy, StaleLockWarning, own_job
from .preparation import prepare
from .records import Job, JobOutputs, SurveyModelChoice, TileResult, load_job
from .registration import (MisalignmentWarning, estimate_tiles, pending_estimates, register_survey,
                           regularise_survey)
from .survey_learning import learn_survey
from .tile_store import pending


def superresolve(rgb: str, target: str, out: str, config: JobConfig | None = None,
                 tile_fn: tilefn.TileFn | None = None) -> JobOutputs:
    """The whole job in this process (``flows`` distributes the same stages), owning ``out`` and
    its work dir throughout (``own_job``: a second job on them is refused with ``JobBusy``)."""
    config = config or JobConfig()
    with own_job(out, config.work_dir_for(out), rgb=rgb, target=target):
        job = prepare(rgb, target, out, config)
        register_survey(job.job_path)
        learn_survey(job.job_path)
        results = run_tiles(job.job_path, [t.index for t in job.plan.tiles if not t.skip], tile_fn)
        return finish(job.job_path, results)


__all__ = [
    "Job", "JobConfig", "JobOutputs", "TileResult", "prepare", "load_job", "run_tile", "run_tiles",
    "tiles_per_batch", "pending", "learn_survey", "SurveyModelChoice", "finish", "write_job_quicklook",
    "superresolve", "own_job", "JobBusy", "StaleLockWarning", "MisalignmentWarning", "estimate_tiles",
    "pending_estimates", "regularise_survey", "register_survey",
]
