"""Stage 1b: the survey's guide registration -> one consistent field every tile trains with.

For ``cmsr`` jobs whose preset registers the guide (``tilefn.survey_registers``): every processed
tile's own registration is estimated first (``estimate_tiles``: seconds a tile, any number of
calls, anywhere; ``<work_dir>/registration/<i>.json``), then made consistent across the tiles
(``regularise_survey``: ``pipelines.registration_field``; ``<work_dir>/registration/field.json``),
and ``run_tiles`` hands each tile its affine from the field instead of letting it register
itself. Files carry the plan key (resume, and never another plan's), are written atomically,
and only paths and small dicts pass between stages.

``finish`` then writes the field as ``<out stem>.registration.tif`` (``write_registration_map``)
and its summary into the report; a misalignment at the edge of what the shift search covers is
a ``MisalignmentWarning`` naming where.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from tiling import output, rasters
from tiling.errors import InputWarning
from tiling.grid import Window

from .. import registration_field as rf
from .. import tilefn
from .records import Job, load_job, sibling_path, write_json
from .tile_inputs import read_tile_inputs
from .tile_store import REGISTRATION_DIR


class MisalignmentWarning(InputWarning):
    """The RGB and the target are off by about as much as the registration can find, or more:
    said (one line, where), not refused, because the output is still made."""


def registers(job: Job) -> bool:
    """Whether this job's tiles take their registration from the survey's field."""
    return tilefn.survey_registers(job.config)


def registration_dir(job: Job) -> str:
    return os.path.join(job.work_dir, REGISTRATION_DIR)


def _estimate_path(job: Job, index: int) -> str:
    return os.path.join(registration_dir(job), f"{index}.json")


def field_path(job: Job) -> str:
    return os.path.join(registration_dir(job), "field.json")


def map_path(job: Job) -> str:
    """``<out stem>.registration.tif``, beside the output."""
    return sibling_path(job.out, ".registration.tif")


def _read_json(path: str, key: str) -> dict | None:
    """The JSON at ``path`` when it is this plan's (``key``); None when missing, unreadable or another's."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("key") == key else None


def pending_estimates(job: Job) -> list[int]:
    """Processed tiles without an estimate of this plan (nothing when the field is already made)."""
    if not registers(job) or load_field(job) is not None:
        return []
    return [t.index for t in job.plan.tiles if not t.skip and _read_json(_estimate_path(job, t.index), job.key) is None]


def estimate_tiles(job_path: str, indices: Sequence[int]) -> list[dict]:
    """The unit of work of the registration stage: tiles ``indices``' own registrations, on the
    first target band (one geometry for every band of a target file) -> one JSON file each;
    an existing estimate of this plan is reused. Returns small dicts (index, shift, trust)."""
    job = load_job(job_path)
    if not registers(job):
        return []
    import cmsr

    os.makedirs(registration_dir(job), exist_ok=True)
    out: dict[int, dict] = {}
    todo = []
    for i in map(int, indices):
        found = _read_json(_estimate_path(job, i), job.key) if job.config.resume else None
        if found is not None:
            out[i] = found
        elif i not in todo:
            todo.append(i)
    if todo:
        inputs = [read_tile_inputs(job, i) for i in todo]
        ests = cmsr.estimate_registrations(
            [inp.lr[0] for inp in inputs], [inp.guide for inp in inputs], job.plan.scale,
            tilefn.cmsr_config(job.config), device=job.config.device, target_range=job.target_range[0],
            guide_range=np.asarray(job.guide_range, dtype=np.float64))
        for i, inp, est in zip(todo, inputs, ests):
            s = job.plan.scale
            lr_valid = np.isfinite(inp.lr[0])
            rgb_valid = inp.guide_valid.reshape(lr_valid.shape[0], s, lr_valid.shape[1], s).all(axis=(1, 3))
            record = {
                "key": job.key, "index": i, "lr_shape": list(lr_valid.shape),
                "affine": est.affine.astype(np.float64).tolist(), "moves_guide": bool(est.moves_guide),
                "guide_texture": float(est.guide_texture),
                "search_contrast": None if est.search_contrast is None else float(est.search_contrast),
                "valid_fraction": float((lr_valid & rgb_valid).mean()),
                "valid_pixels": int((lr_valid & rgb_valid).sum()),
            }
            write_json(_estimate_path(job, i), record)
            out[i] = record
    return [out[i] for i in map(int, indices)]


# --- affine <-> shift in target pixels + linear part -----------------------------------------


def affine_to_shift(affine: np.ndarray, lr_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A tile's (2, 3) normalised affine -> (its shift (dx, dy) at the tile centre in target
    pixels, its 2 x 2 linear part in pixel coordinates). Normalised x spans the width as 2 units."""
    h, w = lr_shape
    a = np.asarray(affine, dtype=np.float64)
    half = np.array([w / 2.0, h / 2.0])
    linear = a[:, :2] * half[:, None] / half[None, :]
    return a[:, 2] * half, linear


def shift_to_affine(shift: np.ndarray, linear: np.ndarray, lr_shape: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`affine_to_shift`, as the float32 affine a tile is handed."""
    h, w = lr_shape
    half = np.array([w / 2.0, h / 2.0])
    a = np.empty((2, 3))
    a[:, :2] = np.asarray(linear) * half[None, :] / half[:, None]
    a[:, 2] = np.asarray(shift) / half
    return a.astype(np.float32)


def _trusted(est: dict, settings) -> bool:  # noqa: ANN001 - SurveyRegistration
    """An estimate measured something: enough valid data, guide texture and a clear minimum."""
    contrast = est["search_contrast"]
    return (est["valid_fraction"] >= settings.min_valid_fraction and est["valid_pixels"] >= settings.min_valid_pixels
            and est["guide_texture"] >= settings.min_guide_texture
            and (contrast is None or contrast >= settings.min_search_contrast))


def regularise_survey(job_path: str) -> dict:
    """Every processed tile's estimate -> the field (``registration_field.regularise``) -> what each
    tile is handed (the field's affine, the guide as given under ``min_px``; a tile the field
    cannot reach keeps its own estimate when it has one, as a tile alone would) ->
    ``field.json``. Returns the summary (``summary_of``); warns nothing (the caller says it)."""
    job = load_job(job_path)
    if not registers(job):
        return {}
    from cmsr.registration import moves_guide
    import torch

    found = load_field(job)
    if found is not None:
        return found["summary"]
    plan, settings = job.plan, job.config.registration
    reg = tilefn.cmsr_config(job.config).registration
    shape = (plan.n_rows, plan.n_cols)
    grid = rf.RegistrationGrid(np.full(shape + (2,), np.nan), np.full(shape + (2, 2), np.nan),
                               np.zeros(shape, bool), np.zeros(shape, bool))
    ests: dict[int, dict] = {}
    for t in plan.tiles:
        grid.active[t.row, t.col] = not t.skip
        est = None if t.skip else _read_json(_estimate_path(job, t.index), job.key)
        if est is None:
            continue
        ests[t.index] = est
        shift, linear = affine_to_shift(np.array(est["affine"]), tuple(est["lr_shape"]))
        grid.shift[t.row, t.col], grid.linear[t.row, t.col] = shift, linear
        grid.usable[t.row, t.col] = _trusted(est, settings)
    field = rf.regularise(grid, settings)
    tiles = []
    for t in plan.tiles:
        est = ests.get(t.index)
        status = str(field.status[t.row, t.col])
        own = None if est is None else affine_to_shift(np.array(est["affine"]), tuple(est["lr_shape"]))
        value = field.shift[t.row, t.col], field.linear[t.row, t.col]
        affine: np.ndarray | None
        if t.skip:
            affine, source = None, "skipped"
        elif np.isfinite(value[0]).all() and np.isfinite(value[1]).all():
            lr_shape = (t.lr_read.height, t.lr_read.width)
            if own is not None and np.array_equal(own[0], value[0]) and np.array_equal(own[1], value[1]):
                affine = np.array(est["affine"], dtype=np.float32)  # unchanged: its own fit, bit for bit
            else:
                affine = shift_to_affine(value[0], value[1], lr_shape)
            source = "field"
            if not moves_guide(torch.from_numpy(affine), lr_shape, plan.scale, reg):
                affine = None
        elif est is not None and status != rf.OUTLIER:
            affine, source = (np.array(est["affine"], dtype=np.float32) if est["moves_guide"] else None), "own"
        else:
            affine, source = None, "as_given"
        tiles.append({
            "index": t.index, "row": t.row, "col": t.col, "status": status, "source": source,
            "reason": field.reasons.get((t.row, t.col)),
            "own_shift_px": None if own is None else [float(v) for v in own[0]],
            "shift_px": [float(v) for v in value[0]] if np.isfinite(value[0]).all() else None,
            "affine": None if affine is None else affine.astype(np.float64).tolist(),
        })
    summary = summary_of(job, tiles, int(reg.search_px) if reg is not None else 0)
    write_json(field_path(job), {"key": job.key, "settings": job.config.registration.__dict__, "tiles": tiles,
                                 "summary": summary}, indent=1)
    return summary


def register_survey(job_path: str, indices: Sequence[int] | None = None) -> dict:
    """The whole stage in this process: estimate the tiles (``indices``, default every processed
    one still without an estimate), regularise, and warn (``MisalignmentWarning``) when the
    misalignment reaches the search range. Returns the summary ({} when the job does not register)."""
    job = load_job(job_path)
    if not registers(job):
        return {}
    todo = pending_estimates(job) if indices is None else list(indices)
    if todo:
        estimate_tiles(job_path, todo)
    summary = regularise_survey(job_path)
    if summary.get("warning"):
        warnings.warn(summary["warning"], MisalignmentWarning, stacklevel=2)
    return summary


def load_field(job: Job) -> dict | None:
    """This plan's ``field.json``, or None."""
    return _read_json(field_path(job), job.key)


def tile_registrations(job: Job, indices: Sequence[int]) -> list[list[list[float]] | None]:
    """Each tile's affine from the field (None: the guide as given); RuntimeError without a field."""
    field = load_field(job)
    if field is None:
        raise RuntimeError(f"the survey registration field of job {job.job_path} is missing: "
                           "run pipelines.register_survey first")
    by_index = {t["index"]: t["affine"] for t in field["tiles"]}
    return [by_index[int(i)] for i in indices]


# --- what the user sees ----------------------------------------------------------------------


def _where(job: Job, flagged: list[dict]) -> str:
    """Which part of the map ``flagged`` tiles are in: a compass part and their extent."""
    plan = job.plan
    rows = [t["row"] for t in flagged]
    cols = [t["col"] for t in flagged]
    if len(flagged) >= 0.6 * sum(not t.skip for t in plan.tiles):
        part = "across the survey"
    else:
        def third(v: float, n: int, names: tuple[str, str, str]) -> str:
            return names[min(2, int(3 * (v + 0.5) / n))] if n > 1 else ""

        ns = third(float(np.mean(rows)), plan.n_rows, ("north", "", "south"))
        ew = third(float(np.mean(cols)), plan.n_cols, ("west", "", "east"))
        part = f"in the {'-'.join(p for p in (ns, ew) if p) or 'centre'} of the survey"
    cores = [plan.tiles[t["index"]].core for t in flagged]
    r0, c0 = min(c.row for c in cores), min(c.col for c in cores)
    box = Window(r0, c0, max(c.row_end for c in cores) - r0, max(c.col_end for c in cores) - c0)
    t = plan.hr_grid.window_transform(box)
    x0, y0 = t.c, t.f
    x1, y1 = t * (box.width, box.height)
    crs = plan.hr_grid.crs if plan.hr_grid.crs.startswith("EPSG:") else "the output CRS"
    return (f"{part} (x {min(x0, x1):.0f}..{max(x0, x1):.0f}, y {min(y0, y1):.0f}..{max(y0, y1):.0f} in {crs}; "
            f"tile rows {min(rows)}..{max(rows)}, columns {min(cols)}..{max(cols)})")


def summary_of(job: Job, tiles: list[dict], search_px: int) -> dict:
    """The report's ``registration`` section: counts, median / max shift in target pixels and
    metres, and the warning text when a shift reaches the search range."""
    settings = job.config.registration
    lr = job.plan.lr_grid
    active = [t for t in tiles if t["status"] != rf.SKIPPED]
    valued = [t for t in active if t["shift_px"] is not None]
    px = np.array([math.hypot(*t["shift_px"]) for t in valued]) if valued else np.zeros(0)
    per_m = lr.metres_per_unit
    rx, ry = lr.res
    metres = (np.array([math.hypot(t["shift_px"][0] * rx, t["shift_px"][1] * ry) for t in valued]) * per_m
              if valued and per_m else None)
    counts = {s: sum(t["status"] == s for t in tiles) for s in (rf.MEASURED, rf.OUTLIER, rf.UNKNOWN, rf.SKIPPED)}
    limit = search_px - settings.warn_margin_px

    def reaches(shift: list[float] | None) -> bool:
        return shift is not None and max(abs(shift[0]), abs(shift[1])) >= limit

    flagged = [t for t in active if reaches(t["shift_px"])
               or (t["status"] == rf.MEASURED and reaches(t["own_shift_px"]))] if search_px > 0 else []
    warning = None
    if flagged:
        worst = max(max(abs(v) for v in (t["shift_px"] or t["own_shift_px"])) for t in flagged)
        worst_m = f" ({worst * max(rx, ry) * per_m:.3g} m)" if per_m else ""
        warning = (f"registration: the RGB is off the target by up to {worst:.1f} target px{worst_m} in "
                   f"{len(flagged)} of {len(active)} tile(s), at the limit of the shift search (+-{search_px} target "
                   f"px): the misalignment there may be more than the registration corrects; "
                   f"{_where(job, flagged)}; see {map_path(job)}")
    return {
        "map": map_path(job), "smoothing": settings.smooth, "search_target_px": search_px,
        "tiles": {**counts, "filled": sum(t["source"] == "field" and t["status"] != rf.MEASURED for t in active),
                  "guide_as_given": sum(t["affine"] is None for t in active)},
        "shift_target_px": {"median": float(np.median(px)) if px.size else None,
                            "max": float(px.max()) if px.size else None},
        "shift_m": {"median": float(np.median(metres)) if metres is not None else None,
                    "max": float(metres.max()) if metres is not None else None},
        "outliers": [{"tile": t["index"], "row": t["row"], "col": t["col"], "reason": t["reason"]}
                     for t in tiles if t["status"] == rf.OUTLIER],
        "warning": warning,
    }


MAP_DESCRIPTIONS = ["dx: RGB offset from the target along +x (east), metres (CRS units)",
                    "dy: RGB offset from the target along +y (north), metres (CRS units)"]


def write_registration_map(job: Job) -> str | None:
    """The field as a two-band float32 GeoTIFF on the job's LR grid: per LR pixel, how far the RGB
    shows the scene from where the target shows it (band 1 east, band 2 north, in CRS units:
    metres for a projected CRS), interpolated between tile centres; NaN where the target is nodata
    or the pixel's tile had no estimate of its own that was used (unknown / skipped tiles).
    None (nothing written) when the job has no field."""
    field = load_field(job)
    if field is None:
        return None
    plan = job.plan
    shape = (plan.n_rows, plan.n_cols)
    values = np.full(shape + (2,), np.nan)
    known = np.zeros(shape, bool)
    for t in field["tiles"]:
        if t["shift_px"] is not None:
            values[t["row"], t["col"]] = t["shift_px"]
        known[t["row"], t["col"]] = t["status"] in (rf.MEASURED, rf.OUTLIER) and t["shift_px"] is not None
    lr = plan.lr_grid
    a, b, _, d, e, _ = lr.transform  # target px -> CRS vector: columns are +x pixels, rows +y pixels
    tile_px = plan.tile_size / plan.scale
    target = rasters.open_lazy(job.target_lr, (256, 256))

    def rows_of(rows: range) -> np.ndarray:
        dx, dy = rf.field_on_grid(values, known, tile_px, rows, lr.width)
        nodata, _ = rasters.read_window(target, Window(rows.start, 0, len(rows), lr.width), (1,), pad="nan")
        east, north = a * dx + b * dy, d * dx + e * dy
        out = np.stack([east, north])
        out[:, ~np.isfinite(nodata[0])] = np.nan
        return out

    path = map_path(job)
    units = "metre" if lr.metres_per_unit == 1.0 else ""
    output.write_bands(path, lr, MAP_DESCRIPTIONS, [units, units], rows_of,
                       {"CMSR_PLAN_KEY": job.key, "CMSR_REGISTRATION": "RGB offset from the target (guide registration)"})
    return path
