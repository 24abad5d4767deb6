"""Hyper-parameters of the CMSR core, one frozen dataclass with named presets.

Why one object: the same numbers drive training, inference, the CLI, the benchmarks and the
batched/tiled pipelines, and a frozen dataclass can be hashed, logged and ``replace``-d for
ablations (``use_guide=False`` is pure ZSSR, ``use_warp=False`` is CMSR without the internal
transformer). Defaults are the paper's / official code's settings (camillarhodes/CMSR,
branch ``experimental``: ``THERMAL_IMAGES_CONF`` on top of ZSSR's ``Config``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CMSRConfig:
    """Every knob of internal training and inference. Field docs say what and why."""

    # --- degradation / scale schedule -------------------------------------------------------
    degradation: Literal["bicubic", "area"] = "bicubic"
    """How an LR pixel is made from HR: MATLAB antialiased bicubic (the paper's benchmark protocol)
    or the mean over each s x s block (what a thermal pixel measures). Used for the son, for
    back-projection and for the reconstruction check."""
    gradual: bool = True
    """Train coarse-to-fine: for x4 a x2 stage then a x4 stage (official thermal config), the
    network and the warp carried over and each stage's output added to the father sources."""
    scale_schedule: tuple[int, ...] | None = None
    """Explicit stage factors (relative to the LR, increasing, last == scale). None: automatic,
    see :func:`stage_factors` (powers of two below ``scale``, then ``scale``)."""

    # --- network ----------------------------------------------------------------------------
    sr_depth: int = 8
    """Conv layers of F_sr (ZSSR's net): 3x3, ReLU between, no biases."""
    sr_width: int = 64
    """Channels of F_sr's hidden layers."""
    guide_depth: int = 4
    """Layers of the guide branch F_g: (depth-1) 3x3 convs then one 1x1 conv to one channel."""
    guide_width: int = 16
    """Channels of F_g's hidden layers."""
    init_variance: float = 0.1
    """Weights ~ N(0, init_variance / fan_in) (ZSSR ``init_variance``), small because the net
    learns a residual over the bicubic upsampling."""

    base: Literal["bicubic", "bp", "guided", "guided_smooth", "auto"] = "bicubic"
    """The non-learned image the residuals are added to (for the son at training time and for the
    LR at test time). ``bicubic`` (paper): ``up(T)``. ``bp``: ``up(T)`` back-projected
    ``base_bp_rounds`` times against T. ``guided``: colour-guided filter + back-projection
    (``cmsr.baselines.guided_filter_upsample``, guide = the deformed guide on the same grid, its
    default setting: much guide transfer). ``guided_smooth``: the same with the smoother setting
    (``GuidedFilterParams.smooth()``: little transfer, what registered thermal pairs prefer).
    ``auto``: whichever of ``bp`` / ``guided`` / ``guided_smooth`` best reconstructs the LR from
    its own /2 copy, decided once before training (internal model selection, no ground truth)."""
    base_bp_rounds: int = 12
    """Back-projection rounds of the ``bp`` base."""
    guide_gate: tuple[float, float] | None = None
    """Conservative inference: (lo, hi) of the same local-fit R^2 as ``base_gate``, applied to each
    stage's whole guide-dependent change -- the output is blended towards the same network run
    without F_g on the ``bp`` base, fully where the guide explains less than ``lo`` of the LR's local
    variance (a flat target under a textured guide, a foreign object), then back-projected. None
    (paper): no gate. Costs a second self-ensemble per stage."""
    guide_gate_pool: Literal["mean", "min"] = "mean"
    """How ``guide_gate``'s R^2 pools the fit windows covering a pixel (``cmsr.baselines.local_fit_r2``):
    ``mean`` as the guided filter, or ``min`` (trust a pixel only if every window over it is
    explained: a foreign object's outline no longer passes through windows that straddle it)."""
    guide_gate_flat_var: float = 0.0
    """``guide_gate``'s windows whose guide variance (normalised units^2, summed over bands) is below
    this count as explained in proportion: a flat guide transfers nothing (0: off)."""
    base_gate: tuple[float, float] | None = None
    """Conservative guided bases: (lo, hi) of the R^2 of a local linear fit of the LR by the guide
    at the LR's scale (``GuidedFilterParams.gate``); where the guide explains less than ``lo`` of
    the LR's local variance the guided bases fall back to ``bp``. None (paper): no gate."""
    warp_warmup_iters: int = 0
    """Iterations at the start of training during which the warp is frozen (0 = paper). While F_g
    is still random its gradient on the warp is noise, and Adam turns noise into a drift."""

    warp_prealign_iters: int = 0
    """Adam steps per pyramid level (/4, /2, /1 of the LR grid) of a registration of the warp's
    global affine before training, by the residual of a local linear (guided-filter) fit of the LR
    by the warped guide (``cmsr.warp.prealign``). 0 = paper (no such step). A deviation: the paper's
    only signal for the warp is the full-output loss, which does not recover a few-pixel
    misalignment (benchmarks/RESULTS.md, stress tests)."""
    warp_prealign_lr: float = 2e-3
    """Adam learning rate of the pre-registration (normalised coordinates)."""
    warp_prealign_search: int = 0
    """Before the pre-registration's descent, try every whole-LR-pixel shift within +- this many
    LR pixels by the same criterion and start from the best (0: no search)."""
    warp_learn: bool = True
    """Train the warp by the full-output loss during training (paper). False: the warp stays as the
    pre-registration left it (a deviation: that loss drives a few-pixel misalignment the wrong way,
    benchmarks/RESULTS.md)."""
    warp_min_registration_px: float = 0.0
    """After the pre-registration, drop the warp (identity) when its mean displacement is below this
    many HR pixels: a sub-pixel correction of an already registered pair bought nothing measurable
    and its bilinear resampling softens the guide. 0 = always keep it."""

    # --- ablations --------------------------------------------------------------------------
    use_guide: bool = True
    """False: pure ZSSR (no guide branch, no warp)."""
    use_warp: bool = True
    """False: the guide is used as given (no internal transformer)."""

    # --- internal transformer (warp) --------------------------------------------------------
    svf_grid: int = 5
    """Control nodes per side of the mid-scale stationary velocity field (a 4x4 tessellation has
    5x5 vertices, as the paper's CPAB ``ncx = ncy = 4``)."""
    svf_integration_grid: int = 33
    """Side of the dense grid on which the velocity is integrated by scaling-and-squaring."""
    svf_squarings: int = 6
    """Scaling-and-squaring steps (the field is divided by 2**steps and composed with itself)."""
    tps_grid: int = 8
    """Thin-plate-spline control points per side (8x8)."""
    lr_ratio_affine: float = 1.0
    """Learning-rate multiplier of the global affine level."""
    lr_ratio_svf: float = 1.0
    """Learning-rate multiplier of the mid-scale diffeomorphic level."""
    lr_ratio_tps: float = 0.2
    """Learning-rate multiplier of the fine TPS level (keeps it tame: no deformation loss)."""
    lr_ratio_guide: float = 1.0
    """Learning-rate multiplier of the guide branch F_g."""

    # --- father/son sampling ----------------------------------------------------------------
    crop_size: int = 48
    """Father crop side (rounded up to a multiple of the stage factor, capped by the source)."""
    augment_leave_as_is_probability: float = 0.05
    """Probability of a plain integer crop."""
    augment_no_interpolate_probability: float = 0.45
    """Probability of a 90-degree rotation / flip with an integer crop (no interpolation)."""
    augment_min_scale: float = 0.5
    """Smallest zoom of an interpolated (affine) father."""
    augment_scale_diff_sigma: float = 0.25
    """Std of the x/y anisotropy of an affine father."""
    augment_shear_sigma: float = 0.1
    """Std of the shear of an affine father."""
    augment_allow_rotation: bool = True
    """Allow arbitrary rotations and reflections of affine fathers."""
    guide_train_sampling: Literal["point", "area"] = "point"
    """How the deformed guide is sampled at a father's resolution. ``point``: bilinear point
    samples of the full-resolution guide (what the official code's ``tf.contrib.image.transform``
    does, aliased at x4); ``area``: bilinear samples of the guide first resized (antialiased) to the
    father source's resolution, so that it looks at training time as it does at test time."""

    # --- optimisation -----------------------------------------------------------------------
    learning_rate: float = 1e-4
    """Adam's initial learning rate (batch 1)."""
    max_iters: int = 800
    """Iteration cap per stage."""
    min_iters: int = 256
    """No learning-rate drop within this many iterations of the previous one (ZSSR ``min_iters``)."""
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
    """Back-projection rounds ``y += up(x - down(y))`` on every ensemble member and on the median,
    after each stage, with the configured degradation."""

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.degradation not in ("bicubic", "area"):
            raise ValueError(f"degradation must be 'bicubic' or 'area', got {self.degradation!r}")
        if self.guide_train_sampling not in ("point", "area"):
            raise ValueError(f"guide_train_sampling must be 'point' or 'area', got {self.guide_train_sampling!r}")
        if self.sr_depth < 2 or self.guide_depth < 2:
            raise ValueError("sr_depth and guide_depth must be at least 2")
        if self.guide_gate_pool not in ("mean", "min"):
            raise ValueError(f"guide_gate_pool must be 'mean' or 'min', got {self.guide_gate_pool!r}")
        if self.max_iters < 1 or self.crop_size < 8:
            raise ValueError("max_iters must be >= 1 and crop_size >= 8")

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

    # --- presets ----------------------------------------------------------------------------
    @classmethod
    def paper(cls) -> "CMSRConfig":
        """The official thermal configuration, as close as this implementation gets."""
        return cls()

    @classmethod
    def fast(cls) -> "CMSRConfig":
        """Interactive setting (~1/3 of ``best``'s time): ``best`` with at most 250 iterations per
        stage and the first learning-rate drop allowed after 120."""
        return cls.best().replace(max_iters=250, min_iters=120)

    @classmethod
    def best(cls) -> "CMSRConfig":
        """``paper`` plus the measured deviations that win on the dev pairs (benchmarks/RESULTS.md):

        * the guide is registered to the LR before training (``warp_prealign_iters``: the warp's
          global affine by a local-linear-fit criterion) and the warp is then kept frozen
          (``warp_learn=False``); a registration under 0.5 HR px is dropped. The paper's training
          of the warp by the full-output loss drifts on registered pairs and does not recover a
          misalignment; the registration does (stress test: +5.7 dB over no warp, 0.3 px), and
          it finds the 2-7 px the ULB17-VT thermal pairs are themselves off by;
        * the residuals are learned over a non-learned base chosen per image by internal
          reconstruction at /2: bicubic + back-projection, or colour-guided filter + BP with much
          (``guided``) or little (``guided_smooth``) transfer; the guided bases fall back to BP
          where a local linear fit of the LR by the guide explains little (``base_gate``);
        * conservative inference (``guide_gate``): the guide may change the output only where every
          fit window over a pixel explains the LR (``guide_gate_pool="min"``; flat-guide windows
          count as explained). Conservativeness stress, 18 paste draws, all within 0.5 dB of
          bicubic (worst -0.17): a flat field under a pasted texture -5.2 -> -0.2 dB, a true edge
          pulled to a pasted patch's outline -1.2 -> +0.1 dB;
        * measured (CPU, 1 thread, seed 0): thermal bp + 0.69 dB over all 16 pairs, every pair
          above bp; NIR guided filter + BP + 1.08 dB on both scenes (``paper``: thermal bp +
          0.25-0.31, NIR GF+BP - 1.5).
        """
        return cls(base="auto", base_gate=(0.2, 0.6), guide_gate=(0.02, 0.1), guide_gate_pool="min",
                   guide_gate_flat_var=0.01, use_warp=True, warp_prealign_iters=100,
                   warp_prealign_search=4, warp_learn=False, warp_min_registration_px=0.5)

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
