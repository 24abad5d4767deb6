"""``JobConfig``: every setting of one super-resolution job, with documented defaults."""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

METHODS = ("cmsr", "zssr", "bicubic", "bp", "guided")
STITCH_MODES = ("core", "feather")

#: ``JobConfig.survey_model`` None (auto) learns a survey model from this many active tiles on:
#: below it, learning once costs about as much as training the few tiles from scratch.
SURVEY_MODEL_MIN_TILES = 4


@dataclass(frozen=True)
class SurveyRegistration:
    """How a survey's per-tile guide registrations become one consistent field (``cmsr`` jobs whose
    preset registers the guide; ``pipelines.registration_field``). Shifts are in target (LR) pixels.

    Why a field: two orthomosaics made separately (ODM, Pix4D) are off by a smooth, slowly varying
    shift; a tile alone can be fooled (little texture, a repetitive pattern, a spurious zoom), its
    neighbours rarely all at once."""

    smooth: bool = True
    """Regularise across tiles (reject outliers, fill, smooth); False: every tile keeps its own
    estimate, as a tile alone registers (the map and report are written either way)."""
    min_valid_fraction: float = 0.1
    """A tile's estimate counts only when this share of its LR read window (halo included) is valid
    in the target and the RGB ..."""
    min_valid_pixels: int = 400
    """... and at least this many of its LR pixels are (20 x 20): a shift fitted on a sliver of
    data (an edge tile mostly outside the mosaic, whose guide is filled flat there) is a guess."""
    min_guide_texture: float = 0.004
    """... and when the guide has this much texture on the LR grid (``RegistrationEstimate.guide_texture``:
    mean |difference| of neighbouring pixels, normalised units): a flat guide (water, a roof, a
    field) has no edges for the criterion to align."""
    min_search_contrast: float = 0.02
    """... and when the best whole-pixel shift beats the median of those searched by this share
    (``RegistrationEstimate.search_contrast``): a flat criterion has no measurable minimum."""
    max_zoom: float = 0.03
    """Hard limit on the linear part: a scale change of more than this (3 %) along any direction
    (shear included) is no orthomosaic misalignment but a failed fit (e.g. a 9 % zoom onto a
    repeating pattern); the tile's estimate is rejected."""
    max_rotation_deg: float = 2.0
    """Hard limit on the rotation of the linear part, in degrees (likewise rejected)."""
    neighbourhood: int = 1
    """Tiles on each side that make a tile's neighbourhood (1: the 8 around it)."""
    min_neighbours: int = 3
    """A tile is judged against its neighbours only when at least this many have an accepted estimate."""
    outlier_mads: float = 3.0
    """An estimate deviating from its neighbours' median shift by more than this many robust
    standard deviations (1.4826 x the neighbours' median absolute deviation) is an outlier ..."""
    outlier_floor_px: float = 0.5
    """... and by more than this many target pixels (neighbours that agree exactly must not make
    every small difference an outlier)."""
    smoothing_sigma_tiles: float = 1.0
    """Gaussian smoothing of the field over the neighbourhood, sigma in tiles (0: none)."""
    warn_margin_px: float = 0.5
    """Warn when a shift comes within this many target pixels of the shift search's range
    (``cmsr.config.Registration.search_px``): the misalignment may be more than it can find."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(f"registration min_valid_fraction {self.min_valid_fraction}: expected 0..1")
        if self.min_valid_pixels < 0:
            raise ValueError(f"registration min_valid_pixels {self.min_valid_pixels}: expected >= 0")
        if self.neighbourhood < 1 or self.min_neighbours < 1:
            raise ValueError("registration neighbourhood and min_neighbours must be >= 1")
        if min(self.min_guide_texture, self.min_search_contrast, self.max_zoom, self.max_rotation_deg,
               self.outlier_mads, self.outlier_floor_px, self.smoothing_sigma_tiles, self.warn_margin_px) < 0:
            raise ValueError("registration thresholds must be >= 0")

    @classmethod
    def from_value(cls, v: "SurveyRegistration | dict") -> "SurveyRegistration":
        return v if isinstance(v, cls) else cls(**v)


@dataclass(frozen=True)
class JobConfig:
    """Settings of one job. Frozen and JSON round-tripping (it travels in ``job.json``)."""

    method: str = "cmsr"
    """Per-tile super-resolution: one of ``cmsr.METHODS`` (cmsr, zssr, bicubic, bp, guided)."""
    preset: str | None = None
    """``CMSRConfig.preset`` name for cmsr/zssr; None -> ``cmsr.config.DEFAULT_PRESET``."""
    scale: int | None = None
    """Integer zoom factor HR/LR; None -> the rounded ratio of ground sample distances (the core takes 2..8)."""
    tile_size: int = 512
    """Core edge in HR pixels (snapped down to a multiple of the scale)."""
    halo: int = 32
    """Context on each side in HR pixels, >= the tile model's receptive field (snapped up to a multiple of the scale)."""
    min_valid_fraction: float = 0.05
    """Tiles whose core has a smaller share of valid pixels are not processed (written as nodata)."""
    stitch: str = "core"
    """``core``: keep each tile's core (one owner per pixel); ``feather``: raised-cosine blend over the halos."""
    seed: int = 0
    """Base seed; tile ``i`` uses ``seed + i`` (deterministic whatever runs it, wherever)."""
    device: str = "cpu"
    """torch device for the tile function (``cpu``, ``cuda``, ``cuda:1``)."""
    work_dir: str | None = None
    """Job state (job.json, LR target, tile results); None -> ``<out>.work/`` beside the output."""
    resume: bool = True
    """Reuse finished tile results of the same plan (same inputs, same settings)."""
    assume_crs: str | None = None
    """CRS (e.g. ``EPSG:32632``) for inputs whose files carry none."""
    target_nodata: float | None = None
    """The target's nodata value, declared here: overrides the file's nodata tag (or supplies the
    missing one, e.g. a thermal export whose outside is 0 with no tag); None -> the file's tag."""
    rgb_nodata: float | None = None
    """The RGB's nodata value: a pixel whose every guide band equals it is invalid, like alpha 0
    (e.g. 0 or 255 for an RGB without alpha whose outside is black or white); overrides the file's
    tag; None -> the file's tag (and its alpha band, which applies either way)."""
    degradation: str = "area"
    """Degradation model HR -> LR used by the core (``area``: each LR pixel is the mean of its s x s HR pixels)."""
    compress: str = "deflate"
    """COG compression: ``deflate`` or ``zstd`` (predictor 3 either way)."""
    percentiles: tuple[float, float] = (0.5, 99.5)
    """Survey-level robust range (target and guide) used to normalise every tile alike (the
    core's own per-image default, ``cmsr.api.ROBUST_PERCENTILES``, so a one-tile job matches it)."""
    guide_bands: tuple[int, ...] | None = None
    """1-based RGB bands to use as the guide; None -> all bands except alpha (1 to 4 bands)."""
    target_bands: tuple[int, ...] | None = None
    """1-based target bands to super-resolve; None -> all (each processed on its own)."""
    tile_fn: str | None = None
    """``"module:function"`` of a custom tile function (overrides ``method``; importable in workers)."""
    cmsr_overrides: tuple[tuple[str, Any], ...] = ()
    """``CMSRConfig`` fields to override after the preset, e.g. ``(("max_iters", 50),)``.

    Keys are top-level ``CMSRConfig`` field names, applied with ``dataclasses.replace``; only
    those that stay top-level are stable (``degradation``, ``max_iters``, ``min_iters``,
    ``crop_size``, ``run_test_every``, ``self_ensemble``, ``gradual``, ``learning_rate``): the
    rest of CMSRConfig is being regrouped, and switches like ``use_warp``/``use_guide`` are the
    preset's to decide. An unknown key raises TypeError once tiles run."""
    survey_model: bool | None = None
    """Survey-level learning (method ``cmsr``, ``cmsr.survey_model``): learn the networks once from
    tiles sampled across the survey, then start every tile from them with a short fine-tune (its
    own pair, its own registration). None (auto): on when the core's ``cmsr`` runs the tiles and
    the plan has at least ``SURVEY_MODEL_MIN_TILES`` active tiles; True: on (refused for other
    methods and custom tile functions); False: every tile trains from scratch. Decided once by
    ``prepare`` (``Job.survey_model``) and part of the plan key."""
    model: str | None = None
    """A survey model file to reuse instead of learning one (e.g. last week's flight of the same
    sensor pair: ``<out stem>.model.pt`` of that job); implies the survey model. Checked by
    ``prepare`` against the job's band counts, scale and preset, and copied into the work dir;
    its content (sha256), not its path, is part of the plan key."""
    survey_learning: tuple[tuple[str, Any], ...] = ()
    """``cmsr.survey_model.SurveyLearning`` fields to override (sample tiles, iterations, the
    fine-tune budget), like ``cmsr_overrides``; in the plan key only when a survey model is used."""
    batch_tiles: int = 0
    """Tiles per call of the tile function when ``run_tiles`` is given several (the core may train
    them as one batched computation); 0 -> for ``cmsr``/``zssr`` as many as fit the device
    (``cmsr.choose_batch_size``), for other methods and custom functions 1."""
    quicklook: bool = True
    """Write ``<out stem>.quicklook.png`` (RGB | bicubic | super-resolved, same colour scale)."""
    write_guide_weight: bool = False
    """Also write, per target band, a ``guide_weight`` band after the output bands (0 = the target
    alone, 1 = the guide shaped this pixel; ``cmsr.guide_weight``), summarised in the report and
    shown in the quick-look. Tiles then store it beside their output, so it is part of the plan key."""
    registration: SurveyRegistration = SurveyRegistration()
    """The survey's guide registration field (method ``cmsr`` with a registering preset): every
    tile registered first, made consistent across tiles, each tile trained with its field value;
    written as ``<out stem>.registration.tif`` and summarised in the report."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "registration", SurveyRegistration.from_value(self.registration))
        if self.tile_fn is None and self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {METHODS}")
        learns = self.method == "cmsr" and not self.tile_fn
        if self.survey_model and not learns:
            raise ValueError(f"survey_model applies to method 'cmsr' only (got method "
                             f"{self.tile_fn or self.method!r})")
        if self.model is not None:
            if not learns:
                raise ValueError(f"model (a survey model file) applies to method 'cmsr' only (got method "
                                 f"{self.tile_fn or self.method!r})")
            if self.survey_model is False:
                raise ValueError("model (a survey model file to reuse) needs the survey model; "
                                 "it contradicts survey_model=False")
        if self.batch_tiles < 0:
            raise ValueError(f"batch_tiles must be >= 0, got {self.batch_tiles}")
        if self.stitch not in STITCH_MODES:
            raise ValueError(f"stitch {self.stitch!r}: expected one of {STITCH_MODES}")
        if self.degradation not in ("area", "bicubic"):
            raise ValueError(f"degradation {self.degradation!r}: expected 'area' or 'bicubic'")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction {self.min_valid_fraction}: expected 0..1")
        if self.compress not in ("deflate", "zstd"):
            raise ValueError(f"compress {self.compress!r}: expected 'deflate' or 'zstd'")
        for name in ("target_nodata", "rgb_nodata"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise ValueError(f"{name} {v!r}: expected a number or None")
                if v != v:  # NaN pixels are nodata whatever is declared; keeps job.json strict JSON
                    raise ValueError(f"{name} nan: NaN pixels are always nodata; declare a number (e.g. 0, -9999)")
                object.__setattr__(self, name, float(v))
        # normalise sequences to tuples so equal configs compare (and hash) equal after JSON
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        for name in ("guide_bands", "target_bands"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(int(b) for b in v))
        object.__setattr__(self, "cmsr_overrides", tuple((str(k), v) for k, v in self.cmsr_overrides))
        object.__setattr__(self, "survey_learning", tuple((str(k), v) for k, v in self.survey_learning))
        if self.model is not None:
            object.__setattr__(self, "model", str(self.model))

    def replace(self, **changes: Any) -> "JobConfig":
        d = asdict(self)
        d.update(changes)
        return JobConfig(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cmsr_overrides"] = [list(kv) for kv in self.cmsr_overrides]
        d["survey_learning"] = [list(kv) for kv in self.survey_learning]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown JobConfig fields: {sorted(unknown)}")
        d = dict(d)
        for name in ("cmsr_overrides", "survey_learning"):
            if d.get(name) is not None:
                d[name] = tuple(tuple(kv) for kv in d[name])
        return cls(**d)

    def work_dir_for(self, out: str) -> str:
        """The job's work dir for output ``out``: ``work_dir``, else ``<out>.work`` (absolute).
        One definition: ``prepare`` writes there and ``own_job`` locks it."""
        return os.path.abspath(self.work_dir or os.path.abspath(out) + ".work")

    def result_fields(self) -> dict:
        """The settings that change tile results (part of the plan key). The survey model's
        settings are not: ``prepare`` keys its decision instead (whether one is used, the reused
        file's content, the learning overrides), so an auto and a forced survey model share tiles."""
        d = self.to_dict()
        for k in ("work_dir", "resume", "compress", "quicklook", "stitch", "batch_tiles", "survey_model", "model",
                  "survey_learning"):
            d.pop(k)
        if not d["write_guide_weight"]:  # a job without the band keeps the key it had before the option
            d.pop("write_guide_weight")
        return d
