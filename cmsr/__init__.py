"""CMSR: single-pair cross-modality super-resolution (Shacht et al., CVPR 2021) in PyTorch.

Public surface: :func:`run` / :func:`superresolve` (numpy in, numpy out, target units),
:func:`imresize` (MATLAB-compatible), :data:`METHODS`, :class:`SRResult`, :class:`InvalidInput`,
for many tiles at once :func:`run_many` (one batched training) with :func:`choose_batch_size` and
:func:`estimate_registrations` (each tile's registration, for a survey's consistent field), and
:class:`CMSRConfig` (presets ``paper`` / ``fast`` / ``best``) / ``DEFAULT_PRESET``.
"""

from __future__ import annotations

from cmsr.api import METHODS, SRResult, estimate_registrations, run, run_many, superresolve
from cmsr.memory import choose_batch_size
from cmsr.config import DEFAULT_PRESET, CMSRConfig
from cmsr.errors import InvalidInput
from cmsr.resize import imresize

__all__ = ["METHODS", "SRResult", "run", "run_many", "estimate_registrations", "choose_batch_size", "superresolve", "imresize", "InvalidInput", "CMSRConfig", "DEFAULT_PRESET"]
