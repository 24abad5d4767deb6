"""CMSR: single-pair cross-modality super-resolution (Shacht et al., CVPR 2021) in PyTorch.

Public surface: :func:`run` / :func:`superresolve` (numpy in, numpy out, target units),
:func:`imresize` (MATLAB-compatible), :data:`METHODS`, :class:`SRResult`, :class:`InvalidInput`,
and (lazily, so importing the package stays light) :class:`CMSRConfig` / ``DEFAULT_PRESET``.
"""

from __future__ import annotations

from typing import Any

from cmsr.api import METHODS, SRResult, choose_batch_size, run, run_many, superresolve
from cmsr.errors import InvalidInput
from cmsr.resize import imresize

__all__ = ["METHODS", "SRResult", "run", "run_many", "choose_batch_size", "superresolve", "imresize", "InvalidInput", "CMSRConfig", "DEFAULT_PRESET"]


def __getattr__(name: str) -> Any:
    if name in ("CMSRConfig", "DEFAULT_PRESET"):
        from cmsr import config

        return getattr(config, name)
    raise AttributeError(f"module 'cmsr' has no attribute {name!r}")
