"""MATLAB-compatible bicubic ``imresize``: the degradation every SR benchmark is made with.

MATLAB computes, for each output index, a set of input indices and weights (cubic kernel
a=-0.5, widened by 1/s when downscaling for antialiasing, edge-replicated indices,
weights normalised to sum 1), applies them along the first dimension (rows) and then
the second (columns), and for uint8 input rounds half away from zero after each pass.
Doing exactly that reproduces MATLAB's LR images bit for bit.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    return (1.5 * a3 - 2.5 * a2 + 1) * (a <= 1) + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2))


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (out_len, P) into the input (0-based, edge-clamped) and their weights."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width /= scale
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    p = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(p, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    idx = np.clip(idx, 1, in_len).astype(np.int64) - 1
    keep = np.any(w != 0, axis=0)
    return idx[:, keep], w[:, keep]


def _resize_axis(a: np.ndarray, axis: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    idx, w = contributions(a.shape[axis], out_len, scale, antialias)
    moved = np.moveaxis(a, axis, 0)  # (L, ...)
    gathered = moved[idx]  # (out, P, ...)
    w = w.reshape(w.shape + (1,) * (moved.ndim - 1))
    out = (gathered * w).sum(axis=1)
    return np.moveaxis(out, 0, axis)


def _round_half_away(a: np.ndarray) -> np.ndarray:
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def imresize(img: np.ndarray | torch.Tensor, scale: float, antialias: bool = True) -> np.ndarray | torch.Tensor:
    """Resize an HxW or HxWxC image by ``scale`` (e.g. 1/2, 1/3, 1/4, or 2) like MATLAB.

    uint8 input gives uint8 output, rounded after each pass (MATLAB's behaviour); uint16 the
    same with 16-bit range; float input stays float and unrounded. Torch tensors in HxW(xC)
    layout are accepted and returned as tensors.
    """
    if isinstance(img, torch.Tensor):
        return torch.from_numpy(imresize(img.detach().cpu().numpy(), scale, antialias))
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    dtype = img.dtype
    integer = np.issubdtype(dtype, np.integer)
    a = img.astype(np.float64)
    # MATLAB resizes the dimension with the smaller scale first; with equal scales, rows first.
    for axis in (0, 1):
        n = math.ceil(img.shape[axis] * scale)  # MATLAB's output size
        a = _resize_axis(a, axis, n, scale, antialias)
        if integer:
            info = np.iinfo(dtype)
            a = np.clip(_round_half_away(a), info.min, info.max)
    return a.astype(dtype) if integer else a.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``scale`` (the benchmarks' 'modcrop')."""
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    return img[:h, :w]


def degrade(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of scale, its MATLAB-bicubic LR)."""
    hr = crop_to_multiple(hr, scale)
    return hr, imresize(hr, 1.0 / scale)
