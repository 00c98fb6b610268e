"""PSNR and SSIM with the protocol of the paper (and of every SR paper of its family).

Y channel of ITU-R BT.601 ("16 + ..."), rounded to integers; ``scale`` pixels cropped
from every border; SSIM with an 11x11 Gaussian (sigma 1.5), valid filtering, L = 255.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Quantize = Literal["truncate", "round"]


def to_uint8(x: torch.Tensor | np.ndarray, quantize: Quantize = "truncate") -> np.ndarray:
    """[0, 1] float -> uint8. 'truncate' is the released code's ``x.mul(255).clamp(0,255).byte()``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.clip(np.asarray(x, dtype=np.float32) * np.float32(255), 0, 255)
    if quantize == "round":
        x = np.floor(x + 0.5)
    elif quantize != "truncate":
        raise ValueError(f"quantize must be 'truncate' or 'round', got {quantize!r}")
    return x.astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB (or HxW gray, taken as R=G=B) -> rounded Y as float64."""
    a = img.astype(np.float64)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    y = 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0
    return np.floor(y + 0.5)


def shave(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:a.shape[0] - border, border:a.shape[1] - border] if border > 0 else a


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """PSNR (dB) between two uint8 RGB images on rounded Y, ``border`` pixels cropped."""
    _check_pair(sr, hr)
    d = shave(rgb_to_y(sr), border) - shave(rgb_to_y(hr), border)
    mse = float(np.mean(d * d))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim_gray(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two float grayscale images, Gaussian 11x11 sigma 1.5, valid filtering."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _gaussian_1d()
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))[None, None]
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    _check_pair(sr, hr)
    return ssim_gray(shave(rgb_to_y(sr), border), shave(rgb_to_y(hr), border))


def _check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"size mismatch: SR {sr.shape[1]}x{sr.shape[0]} vs HR {hr.shape[1]}x{hr.shape[0]}")
