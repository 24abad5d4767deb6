"""Survey-level learning: one model learned from tiles across a survey, every tile fine-tuned from it.

Why: all tiles of a survey come from one sensor pair, one flight, one degradation, so what most
of a tile's 1600 iterations learn (how thermal/NIR relates to RGB, the blur, the noise) is the
same for every tile, and a small tile alone is too little data to learn it (a 25x25 LR tile
overfits). Learning it once from crops drawn across the survey leaves each tile only its own
specifics. What stays per tile, because it is what makes CMSR CMSR: its own internal training on
its own pair (a short fine-tune with its own father/son stream and lr policy) and its own guide
registration (or the survey's consistent field).

Survey-level decisions are made here once, not per tile: the base the residuals are learned over
(a vote of the sample tiles' own internal choices, weighted by valid pixels; a per-tile choice that
flips between neighbours makes seams), with the normalisation already survey-level (the caller's
ranges). The model is saved with what it was made for (scale, guide band count, the networks'
shapes, the base) and refused for anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import model as M
from .config import AutoBase, CMSRConfig, FixedBase
from .errors import InvalidInput
from .inputs import check_scale, prepare_tiles
from .registration import register
from .train import choose_bases, load_init_state, train

FORMAT = "cmsr.survey_model"
VERSION = 1


@dataclass(frozen=True)
class SurveyLearning:
    """How the survey model is learned and how tiles fine-tune from it.

    sample_tiles: tiles the survey model learns from, one per texture stratum (the survey's tiles
        ranked by LR gradient energy and cut into this many equal strata; in each, the tile with the
        most valid pixels). More strata cover more of what the survey contains.
    min_valid_fraction: tiles with less valid LR than this are never sampled (unless none has more).
    iterations_per_stage: training iterations per stage factor, spread evenly over the sample
        tiles (each visited once, in turn, the weights carried over); None: twice the preset's
        ``max_iters`` (two tiles' worth, on many tiles' data).
    finetune_iters: iteration cap of each tile's fine-tune (one stage at the final scale).
    finetune_min_iters: the lr policy's ``min_iters`` while fine-tuning.
    finetune_gradual: keep the preset's gradual stages while fine-tuning (slower, rarely better).
    finetune_learning_rate: Adam's initial lr while fine-tuning; None = the preset's.
    """

    sample_tiles: int = 12
    min_valid_fraction: float = 0.5
    iterations_per_stage: int | None = None
    finetune_iters: int = 160
    finetune_min_iters: int = 60
    finetune_gradual: bool = False
    finetune_learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.sample_tiles < 1 or self.finetune_iters < 1 or self.finetune_min_iters < 0:
            raise ValueError("sample_tiles and finetune_iters must be >= 1, finetune_min_iters >= 0")
        if self.iterations_per_stage is not None and self.iterations_per_stage < 1:
            raise ValueError("iterations_per_stage must be >= 1 (or None)")


@dataclass(frozen=True)
class SurveyModel:
    """The networks learned from a survey, with what they were made for."""

    weights: dict[str, torch.Tensor] = field(repr=False)
    """F_sr (and F_g) weights, CPU tensors: every tile's ``init_state``."""
    base: str
    """The survey's base (a candidate name of the preset's base, e.g. ``bp``, ``guided_smooth``)."""
    scale: int
    guide_bands: int | None
    """Guide bands F_g takes (None: no guide branch)."""
    sample: tuple[int, ...] = ()
    """Indices (in the caller's tile list) of the tiles it learned from, in visiting order."""
    iterations: int = 0
    """Training iterations it took, all stages and tiles together."""

    def meta(self) -> dict:
        """What the model was made for and from (JSON-able; saved with it)."""
        return {"base": self.base, "scale": self.scale, "guide_bands": self.guide_bands,
                "sample": list(self.sample), "iterations": self.iterations}


def finetune_config(config: CMSRConfig, learning: SurveyLearning = SurveyLearning(),
                    base: FixedBase | None = None) -> CMSRConfig:
    """The per-tile config after survey learning: ``config`` with the fine-tune budget and, given a
    survey ``base``, that base instead of a per-tile choice."""
    changes: dict = {"max_iters": learning.finetune_iters, "min_iters": learning.finetune_min_iters}
    if not learning.finetune_gradual:
        changes["gradual"] = False
        changes["scale_schedule"] = None
    if learning.finetune_learning_rate is not None:
        changes["learning_rate"] = learning.finetune_learning_rate
    if base is not None:
        changes["base"] = base
    return config.replace(**changes)


def tile_config(config: CMSRConfig, model: SurveyModel, learning: SurveyLearning = SurveyLearning()) -> CMSRConfig:
    """The config every tile fine-tunes with from ``model``: the fine-tune budget and the survey's base."""
    return finetune_config(config, learning, base_named(config, model.base))


def base_named(config: CMSRConfig, name: str) -> FixedBase:
    """The fixed base called ``name`` in ``config``: one of an auto base's candidates, or the base itself."""
    options = config.base.candidates if isinstance(config.base, AutoBase) else (config.base,)
    for b in options:
        if b.name == name:
            return b
    raise ValueError(f"base {name!r} is not one of this config's ({', '.join(b.name for b in options)})")


def tile_texture(lr: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    """(mean absolute LR gradient over valid neighbour pairs, valid fraction) of one tile."""
    v = valid.to(torch.bool)
    gy = (lr[1:, :] - lr[:-1, :]).abs()[v[1:, :] & v[:-1, :]]
    gx = (lr[:, 1:] - lr[:, :-1]).abs()[v[:, 1:] & v[:, :-1]]
    n = gy.numel() + gx.numel()
    return (float(torch.cat([gy, gx]).mean()) if n else 0.0), float(v.float().mean())


def stratified_sample(lrs: Sequence[torch.Tensor], valids: Sequence[torch.Tensor], count: int,
                      min_valid_fraction: float = 0.5) -> list[int]:
    """Up to ``count`` tile indices covering the survey's range of texture, in visiting order.

    Why strata: a flat tile teaches the nets little, the busiest is atypical, and a survey is
    mostly what its middle strata hold. Tiles with enough valid pixels are ranked by texture and cut
    into ``count`` equal strata; each gives its tile with the most valid pixels (ties: the stratum's
    median). Visiting order: from the outer strata inwards, so training ends on the typical tiles.
    """
    stats = [tile_texture(lr, v) for lr, v in zip(lrs, valids)]
    eligible = [i for i, (_, f) in enumerate(stats) if f >= min_valid_fraction]
    if not eligible:
        eligible = [i for i, (_, f) in enumerate(stats) if f > 0] or list(range(len(lrs)))
    ranked = sorted(eligible, key=lambda i: (stats[i][0], i))
    count = max(1, min(int(count), len(ranked)))
    bounds = [round(k * len(ranked) / count) for k in range(count + 1)]
    picks = []
    for a, b in zip(bounds, bounds[1:]):
        stratum = ranked[a:b]
        mid = stratum[(len(stratum) - 1) // 2]
        picks.append(max(stratum, key=lambda i: (stats[i][1], i == mid)))
    order = sorted(range(len(picks)), key=lambda k: (-abs(k - (len(picks) - 1) / 2), k))
    return [picks[k] for k in order]


def vote_base(config: CMSRConfig, chosen: Sequence[FixedBase], weights: Sequence[float]) -> FixedBase:
    """The base most of the survey chose (weighted); ties go to the earlier candidate (the fallback)."""
    options = config.base.candidates if isinstance(config.base, AutoBase) else (config.base,)
    score = {b.name: 0.0 for b in options}
    for b, w in zip(chosen, weights):
        score[b.name] = score.get(b.name, 0.0) + float(w)
    return max(options, key=lambda b: (score[b.name], -options.index(b)))


def learn(lrs: Sequence[torch.Tensor], guides: Sequence[torch.Tensor | None], valids: Sequence[torch.Tensor],
          scale: int, config: CMSRConfig, *, seed: int = 0, device: str | torch.device = "cpu",
          learning: SurveyLearning = SurveyLearning(),
          registrations: Sequence[torch.Tensor | None] | None = None,
          progress: Callable[[int, int], None] | None = None) -> SurveyModel:
    """The survey model from normalised tiles (``cmsr.train.train``'s inputs) of one survey band.

    1. ``learning.sample_tiles`` tiles by :func:`stratified_sample`;
    2. the survey's base: each sample tile's own internal choice (``config.base``), then
       :func:`vote_base` weighted by valid pixels;
    3. the networks: the sample tiles visited in turn, each trained with the preset's stages over
       the survey base for its share of ``iterations_per_stage`` (the weights carried over from one
       to the next; no self-ensemble: the stage outputs only serve as the next stage's fathers).
    ``registrations``: per tile (the caller's list) an affine or None, e.g. the survey's field;
    None: each sample tile's own (``config.registration``), estimated once and used for both the base
    choice and the training. ``progress(done, total)`` after each sample tile.
    """
    if not lrs:
        raise ValueError("survey learning needs at least one tile")
    if config.guide is None:
        guides = [None] * len(lrs)
    picks = stratified_sample(lrs, valids, learning.sample_tiles, learning.min_valid_fraction)
    if registrations is not None:
        regs: list | None = [registrations[i] for i in picks]
    elif config.guide is not None and config.registration is not None:  # once per tile, not per use
        regs = [register(guides[i], lrs[i], valids[i].to(torch.bool), scale, config.registration)  # type: ignore[arg-type]
                for i in picks]
    else:
        regs = None
    chosen = choose_bases([lrs[i] for i in picks], [guides[i] for i in picks], [valids[i] for i in picks], scale,
                          config, device=device, registrations=regs)
    base = vote_base(config, chosen, [float(valids[i].float().sum()) for i in picks])
    per_stage = learning.iterations_per_stage or 2 * config.max_iters
    chunk = max(1, math.ceil(per_stage / len(picks)))
    visit = config.replace(base=base, max_iters=chunk, min_iters=chunk, self_ensemble=False)
    state: M.Params | None = None
    iterations = 0
    for j, i in enumerate(picks):
        (out,) = train([lrs[i]], [guides[i]], [valids[i]], scale, visit, seeds=[seed + j], device=device,
                       init_state=state, registrations=None if regs is None else [regs[j]])
        assert out.weights is not None
        state = out.weights
        iterations += int(out.stats["iterations"])
        if progress is not None:
            progress(j + 1, len(picks))
    assert state is not None
    bands = None if guides[picks[0]] is None else int(guides[picks[0]].shape[0])  # type: ignore[union-attr]
    return SurveyModel(weights=state, base=base.name, scale=int(scale), guide_bands=bands, sample=tuple(picks),
                       iterations=iterations)


def learn_arrays(targets: Sequence[np.ndarray], guides: Sequence[np.ndarray | None], scale: int,
                 config: CMSRConfig, *, seed: int = 0, device: str | torch.device = "cpu",
                 target_range: tuple[float, float] | None = None, guide_range: np.ndarray | None = None,
                 learning: SurveyLearning = SurveyLearning(),
                 registrations: Sequence[np.ndarray | None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> SurveyModel:
    """:func:`learn` from raw tile arrays (target units, NaN nodata), normalised exactly as
    ``cmsr.run_many`` will normalise them (pass the survey's ranges)."""
    s = check_scale(scale)
    tiles = prepare_tiles(targets, guides, s, needs_guide=config.guide is not None, target_range=target_range,
                          guide_range=guide_range)
    regs = None if registrations is None else [None if a is None else torch.as_tensor(np.asarray(a, np.float32))
                                               for a in registrations]
    return learn([t.target.lr for t in tiles], [t.guide for t in tiles], [t.target.valid for t in tiles], s, config,
                 seed=seed, device=device, learning=learning, registrations=regs, progress=progress)


# --- the model file -----------------------------------------------------------------------------
def save_models(path: str, models: Sequence[SurveyModel], info: dict | None = None) -> None:
    """One survey model per target band in one file (tensors, strings and numbers only: it loads
    with ``weights_only``, so a model file never runs code). ``info``: JSON-able provenance."""
    torch.save({"format": FORMAT, "version": VERSION, "info": dict(info or {}),
                "bands": [{**m.meta(), "weights": {k: v.detach().cpu() for k, v in m.weights.items()}}
                          for m in models]}, path)


def load_models(path: str) -> tuple[list[SurveyModel], dict]:
    """(one model per target band, info) from a file :func:`save_models` wrote."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: survey model file not found") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InvalidInput(f"{path}: not a cmsr survey model ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("bands"), list):
        raise InvalidInput(f"{path}: not a cmsr survey model")
    if blob.get("version") != VERSION:
        raise InvalidInput(f"{path}: survey model format version {blob.get('version')}, this cmsr reads {VERSION}")
    models = []
    for b in blob["bands"]:
        w = b.get("weights")
        if not isinstance(w, dict) or not w or not all(isinstance(v, torch.Tensor) for v in w.values()):
            raise InvalidInput(f"{path}: survey model has no weights")
        models.append(SurveyModel(weights=w, base=str(b["base"]), scale=int(b["scale"]),
                                  guide_bands=None if b.get("guide_bands") is None else int(b["guide_bands"]),
                                  sample=tuple(int(i) for i in b.get("sample", ())),
                                  iterations=int(b.get("iterations", 0))))
    if not models:
        raise InvalidInput(f"{path}: survey model has no bands")
    return models, dict(blob.get("info") or {})


def check_fits(models: Sequence[SurveyModel], path: str, *, target_bands: int, scale: int,
               guide_bands: int | None, config: CMSRConfig) -> None:
    """Refuse, naming ``path``, a model made for another band count, scale, guide or network shape."""
    if len(models) != target_bands:
        raise InvalidInput(f"{path}: survey model made for {len(models)} target band(s), this job has {target_bands}")
    for b, m in enumerate(models, start=1):
        where = f"{path}: survey model (band {b})" if len(models) > 1 else f"{path}: survey model"
        if m.scale != scale:
            raise InvalidInput(f"{where} made for scale x{m.scale}, this job is x{scale}")
        want_bands = guide_bands if config.guide is not None else None
        if m.guide_bands != want_bands:
            raise InvalidInput(f"{where} made for {m.guide_bands or 'no'} guide band(s), this job has "
                               f"{want_bands or 'no guide branch'}")
        try:
            base_named(config, m.base)
        except ValueError:
            raise InvalidInput(f"{where} uses base {m.base!r}, which this preset does not have") from None
        gb = config.guide
        template = M.init_params(want_bands, sr_depth=config.sr_depth, sr_width=config.sr_width,
                                 guide_depth=gb.depth if gb else 4, guide_width=gb.width if gb else 16,
                                 init_variance=config.init_variance, seed=0)
        if set(m.weights) != set(template):
            raise InvalidInput(f"{where} has other networks than this preset (layers differ)")
        try:
            load_init_state(template, m.weights)
        except ValueError as exc:
            raise InvalidInput(f"{where} has other network shapes than this preset: {exc}") from None
