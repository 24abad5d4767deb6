"""MATLAB-compatible ``imresize`` (bicubic, antialiased on downscale) and the degradation operators.

Why its own implementation: the paper's benchmark protocol (and every ``_lr.png`` of the dev
pairs) is MATLAB's ``imresize``; PIL/OpenCV/``torch.nn.functional.interpolate`` differ from it by
more than a grey level, which is worth several tenths of a dB in the tables. The resize is a
separable linear operator, so it is built as two small dense matrices (rows, columns) and
applied with two matmuls: exact, differentiable, the same code on CPU and CUDA, and fast for
tile-sized images. Matrices are cached per (in, out, scale), as tensors per dtype and device.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

DegradationModel = Literal["bicubic", "area"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's ``cubic``."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (
        -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    ) * ((ax > 1) & (ax <= 2))


@functools.lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out_len, in_len) float64 matrix of MATLAB's 1-D bicubic resize.

    ``scale`` is the factor MATLAB uses for the kernel and the pixel-centre mapping (it is
    ``out_len / in_len`` only when the caller asked for a scale that divides exactly).
    Boundary handling is MATLAB's symmetric mirror.
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"resize lengths must be positive, got {in_len} -> {out_len}")
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * _cubic(scale * x)  # noqa: E731 - tiny local closure
        kernel_width = kernel_width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based like MATLAB
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirror[np.mod(idx - 1, 2 * in_len).astype(np.int64)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len), taps)
    np.add.at(mat, (rows, cols.ravel()), weights.ravel())
    return mat


def _output_len(in_len: int, scale: float) -> int:
    return int(math.ceil(in_len * scale - 1e-9))


def _plan(
    shape: tuple[int, int],
    scale_factor: float | tuple[float, float] | None,
    output_shape: tuple[int, int] | None,
) -> tuple[tuple[float, float], tuple[int, int]]:
    """MATLAB's rule: one of scale or output size is given; the other is derived."""
    if output_shape is not None:
        out = (int(output_shape[0]), int(output_shape[1]))
        scales = (out[0] / shape[0], out[1] / shape[1]) if scale_factor is None else (
            (float(scale_factor), float(scale_factor))
            if np.isscalar(scale_factor)
            else (float(scale_factor[0]), float(scale_factor[1]))  # type: ignore[index]
        )
        return scales, out
    if scale_factor is None:
        raise ValueError("imresize needs scale_factor or output_shape")
    scales = (
        (float(scale_factor), float(scale_factor))
        if np.isscalar(scale_factor)
        else (float(scale_factor[0]), float(scale_factor[1]))  # type: ignore[index]
    )
    return scales, (_output_len(shape[0], scales[0]), _output_len(shape[1], scales[1]))


def _matrix_t(in_len: int, out_len: int, scale: float, antialias: bool, like: torch.Tensor,
              transposed: bool = False) -> torch.Tensor:
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return _cached_matrix(in_len, out_len, scale, antialias, dtype, like.device, transposed)


@functools.lru_cache(maxsize=128)
def _cached_matrix(in_len: int, out_len: int, scale: float, antialias: bool, dtype: torch.dtype,
                   device: torch.device, transposed: bool) -> torch.Tensor:
    """The matrix as a tensor of this dtype on this device, made once: converting it on every call
    was ~45 % of a small resize on CPU (back-projection runs thousands of them per tile) and is a
    host-to-device copy per call on CUDA. Read-only by convention (only ever a matmul operand)."""
    mat = resize_matrix(in_len, out_len, scale, antialias)
    t = torch.as_tensor(mat.T if transposed else mat, dtype=dtype, device=device)
    return t.contiguous()


def imresize_torch(
    x: torch.Tensor,
    scale_factor: float | tuple[float, float] | None = None,
    output_shape: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize the last two dims of a float tensor exactly as MATLAB ``imresize(x, s, 'bicubic')``.

    Differentiable; works on any leading dims and on CUDA. Dimension order follows MATLAB
    (the dimension with the smaller scale is resized first), which matters only at the last
    bit but keeps the dev-pair protocol exact.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    (sh, sw), (oh, ow) = _plan((h, w), scale_factor, output_shape)
    def rows(t: torch.Tensor) -> torch.Tensor:
        if (oh, sh) == (h, 1.0):
            return t
        return torch.matmul(_matrix_t(h, oh, sh, antialias, t), t)
    def cols(t: torch.Tensor) -> torch.Tensor:
        if (ow, sw) == (w, 1.0):
            return t
        return torch.matmul(t, _matrix_t(w, ow, sw, antialias, t, transposed=True))
    return cols(rows(x)) if sh <= sw else rows(cols(x))


def imresize(
    image: np.ndarray,
    scale_factor: float | tuple[float, float] | None = None,
    output_shape: tuple[int, int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """numpy ``imresize`` on (H, W) or (H, W, C) arrays, MATLAB semantics.

    Integer inputs are computed in float64 and rounded/clipped back to their dtype, as MATLAB
    does for uint8; float inputs stay float (float32 in -> float32 out).
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"imresize expects (H, W) or (H, W, C), got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if arr.ndim == 3:
        t = t.permute(2, 0, 1)
    out = imresize_torch(t, scale_factor, output_shape, antialias)
    if arr.ndim == 3:
        out = out.permute(1, 2, 0)
    res = out.numpy()
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.round(res), info.min, info.max).astype(arr.dtype)
    return res.astype(arr.dtype if arr.dtype in (np.float32, np.float64) else np.float32)


def area_downsample_torch(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over each ``factor x factor`` block: what one coarse sensor pixel measures."""
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(
            f"area downsampling needs sizes divisible by {factor}, got {tuple(x.shape[-2:])}"
        )
    lead = x.shape[:-2]
    y = F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), factor)
    return y.reshape(*lead, *y.shape[-2:])


def degrade_torch(x: torch.Tensor, factor: int, model: DegradationModel) -> torch.Tensor:
    """The one degradation operator used everywhere (son, back-projection, consistency)."""
    if model == "area":
        return area_downsample_torch(x, factor)
    if model == "bicubic":
        return imresize_torch(x, 1.0 / factor)
    raise ValueError(f"unknown degradation model {model!r} (expected 'bicubic' or 'area')")


def upsample_torch(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling onto the exact ``factor``-times grid (MATLAB ``imresize(x, factor)``)."""
    return imresize_torch(x, float(factor))
