"""Stage 1: validate the inputs, align them, plan the tiles -> ``<work_dir>/job.json``.

Everything that needs the whole mosaic happens here, once: the target is put onto the LR grid
and the survey-level ranges are measured, so every tile (wherever it runs) normalises alike and
reads only its own windows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace

from tiling import align, borders, output, rasters
from tiling.plan import make_plan
from tiling.errors import InputWarning, InvalidInput

from .. import tilefn
from ..config import JobConfig
from . import survey_choice
from .records import JOB_FORMAT, Job, SurveyModelChoice, load_job, package_version, save_npy, write_job
from .tile_store import clear_registration, clear_tiles

#: how each band option is spelled on the command line (``cmsr run``): 1-based numbers, commas
BAND_OPTIONS = {"RGB": ("--guide-bands", "--guide-bands 3,2,1"), "target": ("--target-bands", "--target-bands 1")}


def select_bands(info: rasters.RasterInfo, wanted: tuple[int, ...] | None, role: str,
                 allowed: tuple[int, int]) -> tuple[int, ...]:
    """The 1-based bands of ``info`` to use: ``wanted``, else its colour bands (all but alpha).
    Errors name the ``cmsr run`` option that chooses them, in the form it takes."""
    flag, example = BAND_OPTIONS[role]
    bands = wanted if wanted is not None else info.color_bands
    bad = [b for b in bands if not 1 <= b <= info.count]
    if bad:
        raise InvalidInput(
            f"{role} file {info.path}: has {info.count} band(s); {flag} {list(bands)} is out of range "
            f"(1-based band numbers 1..{info.count}, comma-separated, e.g. {example})"
        )
    if not allowed[0] <= len(bands) <= allowed[1]:
        raise InvalidInput(
            f"{role} file {info.path}: has {len(bands)} usable band(s), expected {allowed[0]}..{allowed[1]} "
            f"(choose bands with {flag}): 1-based band numbers, comma-separated, e.g. {example}"
        )
    return tuple(bands)


def scale_limit(config: JobConfig) -> int:
    """The largest scale this job's tiles support, the one range every message states: the
    core's (``cmsr.inputs.MAX_SCALE``) for the built-in methods, tiling's own for a custom tile
    function (the core never sees its tiles)."""
    if config.tile_fn is not None:
        return align.MAX_SCALE
    from cmsr.inputs import MAX_SCALE

    return MAX_SCALE


#: the files ``prepare`` writes into the work dir before ``job.json`` (removed again when it refuses)
PREPARED_FILES = ("target_lr.tif", "rgb_hr.tif", "preview_rgb.npy")


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def _undone_on_failure(work_dir: str, new_dirs: list[str]) -> Iterator[None]:
    """When preparation fails (a refused input: all nodata, no tile to run, a damaged block...),
    remove what it wrote, so a refusal leaves nothing behind: the files of ``PREPARED_FILES``
    this call (re)wrote (one it overwrote would no longer match an earlier ``job.json``; one it
    did not touch stays) and the folders of ``new_dirs`` it created, if empty. Never anything
    that was there before and untouched, so a resumable work dir keeps its tiles."""
    paths = [os.path.join(work_dir, name) for name in PREPARED_FILES]
    before = {p: _identity(p) for p in paths}
    try:
        yield
    except BaseException:
        for p in paths:
            if _identity(p) != before[p]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        for d in reversed(new_dirs):  # innermost first
            with contextlib.suppress(OSError):  # not empty: not only ours
                os.rmdir(d)
        raise


def prepare(rgb: str, target: str, out: str, config: JobConfig | None = None) -> Job:
    """Validate the inputs, align (scale, LR grid, target onto it once), plan the tiles, compute
    survey-level statistics, and write ``<work_dir>/job.json``. Inputs are never modified.

    With ``resume`` and an unchanged plan key the existing job is returned as is (only settings
    that do not change tile results are taken from ``config``); without, tile results are deleted.
    """
    config = config or JobConfig()
    out = os.path.abspath(out)
    rgb_info = rasters.declare_nodata(rasters.inspect(rgb, "RGB", config.assume_crs), config.rgb_nodata,
                                      "--rgb-nodata", "RGB")
    tgt_info = rasters.declare_nodata(rasters.inspect(target, "target", config.assume_crs), config.target_nodata,
                                      "--target-nodata", "target")
    align.check_output(out, [rgb, target])
    work_dir = config.work_dir_for(out)
    guide_bands = select_bands(rgb_info, config.guide_bands, "RGB", (1, 4))
    target_bands = select_bands(tgt_info, config.target_bands, "target", (1, 16))
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always", InputWarning)
        hr = align.output_grid(rgb_info)
        overlap = align.check_overlap(hr, rgb_info.path, tgt_info)
        s, ratio = align.choose_scale(rgb_info, tgt_info, config.scale, scale_limit(config))
        borders.warn_undeclared_border(rgb_info, guide_bands, "RGB", "--rgb-nodata")
        borders.warn_undeclared_border(tgt_info, target_bands, "target", "--target-nodata")
    for w in wlist:
        if not issubclass(w.category, InputWarning):  # not ours to list: pass it on as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        caught.append(str(w.message))
        warnings.warn(str(w.message), InputWarning, stacklevel=2)
    # a reused survey model that does not fit is refused now, before any file is written
    reused_sha = None
    if config.model is not None:
        reused_sha = survey_choice.check_reused(config, target_bands=len(target_bands), scale=s,
                                                guide_bands=len(guide_bands))
    if tilefn.uses_core(config) and config.method == "cmsr" and config.survey_model is not False:
        survey_choice.check_learning(config)
    geometry = make_plan(hr, s, config.tile_size, config.halo)

    tiles_dir = os.path.join(work_dir, "tiles")
    new_dirs = [d for d in (work_dir, tiles_dir) if not os.path.isdir(d)]
    with _undone_on_failure(work_dir, new_dirs):
        try:
            os.makedirs(tiles_dir, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"work directory {work_dir}: cannot be created ({exc.strerror})") from None
        if not os.access(work_dir, os.W_OK):
            raise InvalidInput(f"work directory {work_dir}: is not writable")

        checksums = {rgb_info.path: rasters.sha256_file(rgb_info.path),
                     tgt_info.path: rasters.sha256_file(tgt_info.path)}
        result_fields = config.result_fields()
        if not tilefn.survey_registers(config):  # its tiles do not use the field: the key they always had
            result_fields.pop("registration")
        key_src = {
            "format": JOB_FORMAT, "version": package_version(),
            "inputs": [checksums[rgb_info.path], checksums[tgt_info.path]],
            "config": result_fields, "guide_bands": guide_bands, "target_bands": target_bands,
            "hr": hr.to_dict(), "scale": s, "tile": geometry.tile_size, "halo": geometry.halo,
        }

        def key_for(choice: SurveyModelChoice) -> str:
            src = dict(key_src)
            fields = survey_choice.key_fields(config, choice)
            if fields is not None:  # a job without a survey model keeps the key it had without the option
                src["survey_model"] = fields
            return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()[:20]

        def active(plan) -> int:  # noqa: ANN001 - tiling.TilePlan
            return sum(not t.skip for t in plan.tiles)

        job_path = os.path.join(work_dir, "job.json")
        if not config.resume:
            clear_tiles(work_dir)  # start over: pending() then lists every tile
            clear_registration(work_dir)
        elif os.path.exists(job_path):
            try:
                old = load_job(job_path)
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                old = None
            # the old plan's active tiles decide as this call would: its key covers all they depend on
            choice = None if old is None else survey_choice.choose(config, active(old.plan), reused_sha)
            if (old is not None and choice is not None and old.key == key_for(choice) and old.out == out
                    and os.path.exists(old.target_lr)):
                # same plan: keep the LR target, the statistics and the tiles; settings that do not
                # change tile results (stitch, compress, quick-look, ...) come from this call
                if old.config == config and old.survey_model == choice:
                    job = old
                else:
                    job = replace(old, config=config, survey_model=choice)
                    write_job(job)
                _copy_reused(job)
                return job

        guide_info, job_guide_bands = rgb_info, guide_bands
        if not rgb_info.grid.is_north_up:  # the only case the RGB is resampled: onto the HR grid
            guide_info = align.rgb_to_hr(rgb_info, guide_bands, os.path.join(work_dir, "rgb_hr.tif"))
            job_guide_bands = tuple(range(1, len(guide_bands) + 1))
            assert guide_info.grid.same_as(hr)
        target_lr = os.path.join(work_dir, "target_lr.tif")
        resampled = align.target_to_lr(tgt_info, target_bands, geometry.lr_grid, target_lr)
        from cmsr.inputs import robust_range  # here: importing the core loads torch

        stats = align.survey_stats(geometry, target_lr, guide_info, job_guide_bands,
                                   functools.partial(robust_range, percentiles=config.percentiles),
                                   preview_size=output.quicklook_size(hr))
        if stats.target_valid_pixels == 0:
            raise InvalidInput(f"target file {tgt_info.path}: all nodata over the RGB's footprint")
        if stats.preview is not None:
            save_npy(os.path.join(work_dir, "preview_rgb.npy"), stats.preview)
        full_plan = geometry.with_validity(list(stats.valid_fractions), config.min_valid_fraction)
        if all(t.valid_fraction <= 0.0 for t in full_plan.tiles):
            raise InvalidInput(
                f"RGB file {rgb_info.path}: no pixel is valid in both the RGB (alpha/nodata) and the target "
                f"{tgt_info.path}"
            )
        if all(t.skip for t in full_plan.tiles):  # else: an all-nodata output, "0 tile(s)", exit 0
            lr = geometry.lr_grid
            share = stats.target_valid_pixels / (lr.height * lr.width)
            best = max(t.valid_fraction for t in full_plan.tiles)
            raise InvalidInput(
                f"target file {tgt_info.path}: valid in {100 * share:.3g}% of the RGB's footprint "
                f"({stats.target_valid_pixels} LR pixel(s)); no tile reaches min_valid_fraction "
                f"{config.min_valid_fraction:g} (--min-valid; the best tile is {100 * best:.3g}% valid in both the "
                "target and the RGB), so nothing would be super-resolved"
            )
        choice = survey_choice.choose(config, active(full_plan), reused_sha)
        job = Job(
            key=key_for(choice), config=config, rgb=rgb_info, target=tgt_info, out=out, work_dir=work_dir,
            guide=guide_info, guide_bands=job_guide_bands, target_bands=target_bands, target_lr=target_lr,
            resampling=resampled.resampling, plan=full_plan, gsd_ratio=ratio, overlap=overlap,
            target_range=stats.target_range, guide_range=stats.guide_range, checksums=checksums,
            warnings=tuple(caught), survey_model=choice,
        )
        _copy_reused(job)
        write_job(job)
        return job


def _copy_reused(job: Job) -> None:
    """A reused survey model copied into the work dir under the job's model name (the tiles read
    the copy: the original may be moved, or replaced by next week's)."""
    choice = job.survey_model
    if choice.reused_from is not None and choice.sha256 is not None:
        survey_choice.copy_reused(choice.reused_from, choice.sha256, job.survey_model_path)
