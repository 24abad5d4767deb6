"""Hyper-parameters of the CMSR core: one frozen config of small frozen groups, with named presets.

Why groups: the parts of CMSR that can be switched on and off (the guide branch, a registration
of the guide, the paper's learned warp, a guided base, the conservative gate) each carry their
own numbers, and a flat list of flags let one write combinations that mean nothing (a learned
warp without a guide, a guided base for ZSSR). Each part is ``Group | None`` here, so a preset
reads as a sentence and ``CMSRConfig.__post_init__`` refuses the combinations that cannot run.
Defaults are the paper's / official code's settings (camillarhodes/CMSR, branch
``experimental``: ``THERMAL_IMAGES_CONF`` on top of ZSSR's ``Config``); ``best`` and ``fast`` are
the measured deviations (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Union

Degradation = Literal["bicubic", "area"]


# --- where the guide may act --------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """A weight in [0, 1] from the R^2 of a local linear fit of the LR by the guide (resized to
    the LR grid): 0 where the guide explains less than ``lo`` of the LR's local variance, 1 above
    ``hi`` (``cmsr.baselines.guide_confidence``). Why: where the target is flat or its structure is
    not the guide's (a foreign object, RGB-only texture) whatever the guide adds is not the target's.
    """

    lo: float
    hi: float
    radius: int = 2
    """Fit window radius in LR pixels (5x5 windows: small enough to follow object outlines)."""
    eps: float = 1e-3
    """Ridge regularisation of the fit (normalised guide units^2)."""
    noise_var: float = 1e-4
    """Added to the LR's window variance (normalised units^2) so flat windows never count as explained."""
    pool: Literal["mean", "min"] = "mean"
    """How the windows covering a pixel are pooled: ``mean`` (as the guided filter averages its
    coefficients) or ``min`` (trust a pixel only if every window over it is explained, so a foreign
    object's outline does not pass through windows that straddle it)."""
    flat_guide_var: float = 0.0
    """Windows whose guide variance (summed over bands) is below this count as explained in
    proportion: a flat guide transfers nothing, so it is no evidence against the guide (0: off)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.lo < self.hi:
            raise ValueError(f"gate needs 0 <= lo < hi, got ({self.lo}, {self.hi})")
        if self.pool not in ("mean", "min"):
            raise ValueError(f"gate pool must be 'mean' or 'min', got {self.pool!r}")


@dataclass(frozen=True)
class GuidedFilterParams:
    """Colour-guided filter upsampling (He et al.) in normalised [0, 1] units.

    The defaults are the dev-pair tuning's compromise (benchmarks/RESULTS.md): much guide transfer,
    what NIR wants; :meth:`smooth` is the little-transfer setting registered thermal pairs prefer.
    """

    radius: int = 2
    """Window radius in HR pixels (window 2r+1 square)."""
    eps: float = 1e-2
    """Regularisation of the local linear model; larger = smoother, less guide texture."""
    iterations: int = 4
    """Filter -> back-project cycles; each cycle transfers more guide structure."""
    bp_rounds: int = 12
    """Back-projection rounds after each filter pass (restores LR consistency)."""
    gate: Gate | None = None
    """Where the guide explains little of the LR, fall back to bicubic + back-projection
    (conservative transfer). None: the guided filter everywhere."""

    @classmethod
    def smooth(cls, gate: Gate | None = None) -> "GuidedFilterParams":
        """Little guide transfer (radius 2, eps 0.1, 3 cycles)."""
        return cls(radius=2, eps=1e-1, iterations=3, gate=gate)


# --- the non-learned base the residuals are added to --------------------------------------------
@dataclass(frozen=True)
class Bicubic:
    """``up(T)``: the paper's base."""

    name: str = "bicubic"
    needs_guide = False


@dataclass(frozen=True)
class BackProjected:
    """``up(T)`` back-projected ``rounds`` times against T (Irani & Peleg)."""

    rounds: int = 12
    name: str = "bp"
    needs_guide = False


@dataclass(frozen=True)
class GuidedBase:
    """Colour-guided filter + back-projection of ``up(T)``, guided by the (deformed) guide."""

    filter: GuidedFilterParams = GuidedFilterParams()
    name: str = "guided"
    needs_guide = True


FixedBase = Union[Bicubic, BackProjected, GuidedBase]


@dataclass(frozen=True)
class AutoBase:
    """Pick, per image and before training, the candidate that best reconstructs the LR from its
    own /``factor`` copy (internal model selection, no ground truth). The first candidate is the
    fallback when the check cannot run (no guide, an LR not divisible by ``factor``)."""

    candidates: tuple[FixedBase, ...] = (BackProjected(), GuidedBase(), GuidedBase(GuidedFilterParams.smooth(),
                                                                                     "guided_smooth"))
    factor: int = 2
    """At /4 an 80x60 LR leaves 20x15 pixels, too few for a stable choice (it picked the guided
    filter for 9 of 16 thermal pairs, where it loses 0.5 dB to back-projection; at /2 for 3)."""
    needs_guide = True

    def __post_init__(self) -> None:
        names = [c.name for c in self.candidates]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"auto base candidates need distinct names, got {names}")
        if self.factor < 2:
            raise ValueError("auto base factor must be >= 2")


Base = Union[Bicubic, BackProjected, GuidedBase, AutoBase]


# --- the guide branch and its geometry ----------------------------------------------------------
@dataclass(frozen=True)
class GuideBranch:
    """F_g: (depth - 1) 3x3 convs then one 1x1 conv to one channel, on the (deformed) guide."""

    depth: int = 4
    width: int = 16
    lr_ratio: float = 1.0
    """Learning-rate multiplier of F_g."""
    train_sampling: Literal["point", "area"] = "point"
    """How the deformed guide is sampled at a father's resolution. ``point``: bilinear point
    samples of the full-resolution guide (the official code's ``tf.contrib.image.transform``,
    aliased at x4); ``area``: of the guide first resized (antialiased) to the father source's
    resolution, so it looks at training time as it does at test time."""

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError("guide branch depth must be at least 2")
        if self.train_sampling not in ("point", "area"):
            raise ValueError(f"train_sampling must be 'point' or 'area', got {self.train_sampling!r}")


@dataclass(frozen=True)
class Registration:
    """Register the guide's global affine to the LR before training (a deviation from the paper).

    Why: the paper's only signal for its warp is the full-output loss, which does not recover a
    few-pixel misalignment and drifts on registered pairs (benchmarks/RESULTS.md, stress tests).
    The criterion is the residual of a local linear (guided-filter) fit of the LR by the warped
    guide: small exactly where the guide's edges sit on the target's (``cmsr.registration``).
    """

    search_px: int = 4
    """First try every whole-LR-pixel shift within +- this many pixels and start from the best (a
    descent alone stalls on the weak cross-modal signal a few pixels away). 0: no search."""
    descent_iters: int = 100
    """Adam steps of the affine per pyramid level (/4, /2, /1 of the LR grid)."""
    learning_rate: float = 2e-3
    """Adam learning rate of the descent (normalised coordinates)."""
    radius: int = 2
    """Fit window radius of the criterion (LR pixels at each level)."""
    eps: float = 1e-3
    """Ridge regularisation of the criterion's fit."""
    min_px: float = 0.5
    """Keep the guide as given when the registration moves it by less than this many HR pixels on
    average: a sub-pixel correction bought nothing measurable and bilinear resampling softens it."""
    translation_fallback: bool = True
    """Also descend on the shift alone (the linear part fixed at the identity) and keep that when its
    criterion is no worse than the whole affine's. Why: the affine's 6 parameters are poorly
    determined by a cross-modal criterion, and its descent can end in a worse minimum than the
    shift alone (a spurious 9 % zoom or 16 % squeeze on 2 of the 16 thermal dev pairs; a pasted
    object moved 3 of 26 pasted-object draws' registrations by 4-8 px). No threshold: the lower
    criterion wins. Costs a second descent (the shift search is shared). False: the affine alone."""

    def __post_init__(self) -> None:
        if self.descent_iters < 1 or self.search_px < 0:
            raise ValueError("registration needs descent_iters >= 1 and search_px >= 0")


@dataclass(frozen=True)
class LearnedWarp:
    """The paper's internal transformer, learned with the networks by the full-output loss:
    global affine -> mid-scale smooth diffeomorphism -> thin-plate spline (``cmsr.warp``)."""

    svf_grid: int = 5
    """Control nodes per side of the stationary velocity field (the vertices of the paper's 4x4
    CPAB tessellation)."""
    svf_integration_grid: int = 33
    """Side of the dense grid on which the velocity is integrated by scaling-and-squaring."""
    svf_squarings: int = 6
    """Scaling-and-squaring steps."""
    tps_grid: int = 8
    """Thin-plate-spline control points per side."""
    lr_ratio_affine: float = 1.0
    lr_ratio_svf: float = 1.0
    lr_ratio_tps: float = 0.2
    """Learning-rate multipliers per level (the fine TPS kept tame: there is no deformation loss)."""
    warmup_iters: int = 0
    """Iterations at the start of training with the warp frozen (0 = paper): while F_g is still
    random its gradient on the warp is noise, and Adam turns noise into a drift."""


# --- father/son sampling ------------------------------------------------------------------------
@dataclass(frozen=True)
class FatherSampling:
    """ZSSR's ``random_augment`` probabilities and ranges (``cmsr.augment``)."""

    leave_as_is_probability: float = 0.05
    """Probability of a plain integer crop."""
    no_interpolate_probability: float = 0.45
    """Probability of a 90-degree rotation / flip with an integer crop (no interpolation)."""
    min_scale: float = 0.5
    """Smallest zoom of an interpolated (affine) father."""
    scale_diff_sigma: float = 0.25
    """Std of the x/y anisotropy of an affine father."""
    shear_sigma: float = 0.1
    """Std of the shear of an affine father."""
    allow_rotation: bool = True
    """Allow arbitrary rotations and reflections."""


@dataclass(frozen=True)
class CMSRConfig:
    """Every knob of internal training and inference. Field docs say what and why."""

    # --- degradation / scale schedule -------------------------------------------------------
    degradation: Degradation = "bicubic"
    """How an LR pixel is made from HR: MATLAB antialiased bicubic (the paper's benchmark protocol)
    or the mean over each s x s block (what a thermal pixel measures). Used for the son, for
    back-projection and for the reconstruction check."""
    gradual: bool = True
    """Train coarse-to-fine: for x4 a x2 stage then a x4 stage (official thermal config), the
    network and the warp carried over and each stage's output added to the father sources."""
    scale_schedule: tuple[int, ...] | None = None
    """Explicit stage factors (increasing, last == scale). None: see :meth:`stage_factors`."""

    # --- networks ---------------------------------------------------------------------------
    sr_depth: int = 8
    """Conv layers of F_sr (ZSSR's net): 3x3, ReLU between, no biases."""
    sr_width: int = 64
    """Channels of F_sr's hidden layers."""
    init_variance: float = 0.1
    """Weights ~ N(0, init_variance / fan_in) (ZSSR), small: the nets learn residuals."""
    guide: GuideBranch | None = GuideBranch()
    """The guide branch; None is pure ZSSR (no guide, so no registration, warp or guided base)."""

    # --- what the residuals are added to, where the guide may act ---------------------------
    base: Base = Bicubic()
    """The non-learned image under the residuals, for the son at training time and for the LR at
    test time."""
    guide_gate: Gate | None = None
    """Conservative inference: each stage's guide-dependent change is blended towards the same
    network run without F_g on the ``BackProjected()`` base, fully where the gate is 0, then
    back-projected. None (paper): no gate. Costs a second self-ensemble per stage."""

    # --- the guide's geometry ---------------------------------------------------------------
    registration: Registration | None = None
    """Register the guide before training (None = paper: the guide as given)."""
    warp: LearnedWarp | None = LearnedWarp()
    """The paper's learned warp, starting from the registration (or the identity). None: the guide
    stays as registered; its learned levels are then neither built nor evaluated."""

    # --- father/son sampling ----------------------------------------------------------------
    crop_size: int = 48
    """Father crop side (rounded up to a multiple of the stage factor, capped by the source)."""
    sampling: FatherSampling = FatherSampling()

    # --- optimisation -----------------------------------------------------------------------
    learning_rate: float = 1e-4
    """Adam's initial learning rate (batch 1)."""
    max_iters: int = 800
    """Iteration cap per stage."""
    min_iters: int = 256
    """No learning-rate drop within this many iterations of the previous one (ZSSR)."""
    min_learning_rate: float = 9e-6
    """Stop a stage once the learning rate falls below this."""
    run_test_every: int = 20
    """Reconstruction-error check period (iterations)."""
    lr_policy_check_every: int = 60
    """Learning-rate policy period (iterations)."""
    lr_slope_points: int = 12
    """How many recent reconstruction errors the line is fitted to (ZSSR: 256 / 20)."""
    lr_change_ratio: float = 1.5
    """Drop the learning rate when ``-ratio * slope < std(slope)`` (slope not clearly negative)."""

    # --- inference --------------------------------------------------------------------------
    self_ensemble: bool = True
    """8-way geometric self-ensemble (4 rotations x flip), pixel-wise median."""
    back_projection_rounds: int = 6
    """Back-projection rounds on every ensemble member and on the median, after each stage."""
    gate_reference_ensemble: bool = True
    """With a guide gate: self-ensemble the gate's reference run (the network without F_g) as well.
    False: one member, which halves the gate's extra inference (it is ~1/4 of a fine-tuned 512-px
    tile's CPU time; benchmarks/RESULTS.md, issue 12 item 4)."""

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.degradation not in ("bicubic", "area"):
            raise ValueError(f"degradation must be 'bicubic' or 'area', got {self.degradation!r}")
        if self.sr_depth < 2:
            raise ValueError("sr_depth must be at least 2")
        if self.max_iters < 1 or self.crop_size < 8:
            raise ValueError("max_iters must be >= 1 and crop_size >= 8")
        if self.guide is None:
            needs = [name for name, part in (("registration", self.registration), ("warp", self.warp),
                                             ("guide_gate", self.guide_gate)) if part is not None]
            if self.base.needs_guide:
                needs.append(f"base {type(self.base).__name__}")
            if needs:
                raise ValueError(f"without a guide branch (guide=None) there can be no {', '.join(needs)}")

    @property
    def uses_guide(self) -> bool:
        return self.guide is not None

    def stage_factors(self, scale: int) -> tuple[int, ...]:
        """The stage factors used for ``scale``.

        Gradual: powers of two below ``scale``, then ``scale`` itself (x4 -> 2, 4; x8 -> 2, 4, 8;
        x3 -> 2, 3; x6 -> 2, 4, 6). Every stage maps the original LR straight to its own grid, so
        a non-power-of-two last step is as valid as the paper's x2 -> x4; the earlier outputs only
        serve as extra (larger) father sources.
        """
        if self.scale_schedule is not None:
            sched = tuple(int(f) for f in self.scale_schedule)
            if not sched or sched[-1] != scale or any(b <= a for a, b in zip(sched, sched[1:])) or sched[0] < 2:
                raise ValueError(f"scale_schedule {sched} must increase from >= 2 and end at scale {scale}")
            return sched
        if not self.gradual or scale <= 2:
            return (int(scale),)
        out: list[int] = []
        f = 2
        while f < scale:
            out.append(f)
            f *= 2
        out.append(int(scale))
        return tuple(out)

    # --- ablations --------------------------------------------------------------------------
    def without_guide(self) -> "CMSRConfig":
        """Pure ZSSR: no guide branch, and so no registration, warp, gate or guided base (an auto
        base becomes its fallback candidate, a guided one back-projection)."""
        base = self.base
        if isinstance(base, AutoBase):
            base = base.candidates[0]
        if base.needs_guide:
            base = BackProjected()
        return self.replace(guide=None, registration=None, warp=None, guide_gate=None, base=base)

    def without_warp(self) -> "CMSRConfig":
        """The guide used as given: no registration, no learned warp."""
        return self.replace(registration=None, warp=None)

    # --- presets ----------------------------------------------------------------------------
    @classmethod
    def paper(cls) -> "CMSRConfig":
        """The official thermal configuration, as close as this implementation gets."""
        return cls()

    @classmethod
    def best(cls) -> "CMSRConfig":
        """``paper`` with the deviations that win on the dev pairs (benchmarks/RESULTS.md): the
        guide registered once and then kept (no learned warp); the residuals learned over a base
        chosen per image among back-projection and two guided filters that fall back to
        back-projection where the guide explains little; and the guide allowed to change the output
        only where every fit window over a pixel explains the LR (flat-guide windows count as
        explained)."""
        base_gate = Gate(0.2, 0.6)
        return cls(
            registration=Registration(search_px=4, descent_iters=100, min_px=0.5),
            warp=None,
            base=AutoBase(candidates=(BackProjected(),
                                      GuidedBase(GuidedFilterParams(gate=base_gate)),
                                      GuidedBase(GuidedFilterParams.smooth(base_gate), "guided_smooth"))),
            guide_gate=Gate(0.02, 0.1, pool="min", flat_guide_var=0.01),
        )

    @classmethod
    def fast(cls) -> "CMSRConfig":
        """Interactive setting (~1/3 of ``best``'s time): ``best`` with at most 250 iterations per
        stage and the first learning-rate drop allowed after 120."""
        return cls.best().replace(max_iters=250, min_iters=120)

    @classmethod
    def preset(cls, name: str) -> "CMSRConfig":
        """Preset by name: ``paper`` | ``fast`` | ``best``."""
        presets = {"paper": cls.paper, "fast": cls.fast, "best": cls.best}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r} (expected one of {sorted(presets)})")
        return presets[name]()

    def replace(self, **changes: object) -> "CMSRConfig":
        """``dataclasses.replace`` shortcut (ablations, budget overrides)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


PRESETS: tuple[str, ...] = ("paper", "fast", "best")
DEFAULT_PRESET: str = "best"
"""The CLI default preset name."""
