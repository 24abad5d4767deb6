"""Whether a job uses a survey model, decided once while it is prepared; a reused model file checked.

Why at prepare time: the decision changes every tile's result, so it is part of the plan key
(resume never mixes tiles trained with and without a model, or from two models), and a reused
file that does not fit the job (another band count, scale, guide or preset) is refused in
seconds, before any tile work, with one line naming it.
"""

from __future__ import annotations

import os
import shutil

from tiling import rasters
from tiling.files import atomic_output

from .. import tilefn
from ..config import SURVEY_MODEL_MIN_TILES, JobConfig
from .records import SurveyModelChoice


def choose(config: JobConfig, active_tiles: int, model_sha256: str | None = None) -> SurveyModelChoice:
    """The job's survey model decision from its settings and its plan's active (non-skipped) tiles;
    ``model_sha256``: the content of ``config.model`` (checked by :func:`check_reused`)."""
    if config.model is not None:
        return SurveyModelChoice(True, "reused", f"reuses {config.model}", os.path.abspath(config.model),
                                 model_sha256)
    if not (tilefn.uses_core(config) and config.method == "cmsr"):
        return SurveyModelChoice(False, "not applicable", f"method {config.tile_fn or config.method!r} learns no "
                                 "survey model")
    if config.survey_model is True:
        return SurveyModelChoice(True, "forced", "requested")
    if config.survey_model is False:
        return SurveyModelChoice(False, "off", "requested off: every tile trains from scratch")
    if active_tiles >= SURVEY_MODEL_MIN_TILES:
        return SurveyModelChoice(True, "auto", f"auto: {active_tiles} active tiles, >= {SURVEY_MODEL_MIN_TILES}")
    return SurveyModelChoice(False, "auto", f"auto: {active_tiles} active tile(s), fewer than "
                             f"{SURVEY_MODEL_MIN_TILES}: every tile trains from scratch")


def key_fields(config: JobConfig, choice: SurveyModelChoice) -> dict | None:
    """What of the decision goes into the plan key: None for a job without a survey model (its
    key is the same whatever it was asked), else the reused file's content and the learning
    overrides (they set the fine-tune budget, and what is learned)."""
    if not choice.used:
        return None
    return {"reused_sha256": choice.sha256, "learning": [list(kv) for kv in config.survey_learning]}


def check_learning(config: JobConfig) -> None:
    """``config.survey_learning`` names ``SurveyLearning`` fields with valid values (ValueError)."""
    tilefn.survey_learning(config)


def check_reused(config: JobConfig, *, target_bands: int, scale: int, guide_bands: int) -> str:
    """Refuse ``config.model`` (``cmsr.InvalidInput``, one line naming the file) unless it is a
    survey model made for this job's target band count, scale, guide band count and preset;
    returns its sha256."""
    from cmsr.survey_model import check_fits, load_models

    path = str(config.model)
    models, _ = load_models(path)
    check_fits(models, path, target_bands=target_bands, scale=scale, guide_bands=guide_bands,
               config=tilefn.cmsr_config(config))
    return rasters.sha256_file(path)


def copy_reused(source: str, sha256: str, destination: str) -> None:
    """``source`` copied to ``destination`` (atomically) unless it is there already with that
    content: the job then runs from its own copy, whatever happens to the original."""
    if os.path.exists(destination) and rasters.sha256_file(destination) == sha256:
        return
    with atomic_output(destination) as tmp:
        shutil.copyfile(source, tmp)
        if rasters.sha256_file(tmp) != sha256:
            from cmsr import InvalidInput

            raise InvalidInput(f"{source}: survey model file changed while it was being copied; run again")
