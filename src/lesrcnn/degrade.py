"""Real-photo LR for training: users' photos are blurred, resized, noised and JPEG-compressed, and a
network trained only on clean bicubic LR sharpens JPEG blocks along with edges. ``real_lr`` makes
each patch's LR through a randomised :class:`Chain`; all randomness comes from ``rng``."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .errors import LesrcnnError
from .resize import imresize


@dataclass(frozen=True)
class Chain:
    """The stages in order, with their probabilities and ranges (U: uniform). Blur and noise are
    off most of the time and JPEG 30% of the time, so clean inputs keep their share."""

    blur_prob: float = 0.25  # HR: anisotropic Gaussian, sigmas U(min, 0.5 + scale / 4), any angle
    blur_sigma_min: float = 0.3
    kernels: tuple[tuple[str, float], ...] = (  # MATLAB bicubic (the evaluation's), else PIL (antialiased)
        ("bicubic", 0.55), ("bilinear", 0.15), ("area", 0.15), ("lanczos", 0.15))
    noise_prob: float = 0.2  # LR: Gaussian (gauss_share) or Poisson
    gauss_share: float = 0.7
    gauss_sigma: tuple[float, float] = (1.0, 8.0)  # U, on the 0-255 scale
    gray_noise_prob: float = 0.4  # the same Gaussian noise on all channels
    poisson_log10_peak: tuple[float, float] = (2.5, 4.0)  # photons at full white: 10 ** U
    jpeg_prob: float = 0.7  # quality U (integers), 4:2:0 chroma subsampling, baseline
    jpeg_quality: tuple[int, int] = (60, 95)


def _check_rgb8(a: np.ndarray, who: str) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise LesrcnnError(f"{who} needs an HxWx3 uint8 array, got {getattr(a, 'dtype', type(a))} "
                           f"{getattr(a, 'shape', '')}")


def _blur(hr: np.ndarray, scale: int, rng: np.random.Generator, c: Chain) -> np.ndarray:
    s1, s2 = rng.uniform(c.blur_sigma_min, 0.5 + 0.25 * scale, size=2)
    theta = rng.uniform(0.0, math.pi)
    r = int(math.ceil(3 * max(s1, s2)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    u, v = math.cos(theta) * x + math.sin(theta) * y, -math.sin(theta) * x + math.cos(theta) * y
    k = np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    return cv2.filter2D(hr, -1, (k / k.sum()).astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def _noise(lr: np.ndarray, rng: np.random.Generator, c: Chain) -> np.ndarray:
    a = lr.astype(np.float32)
    if rng.random() < c.gauss_share:
        sigma = rng.uniform(*c.gauss_sigma)
        shape = lr.shape[:2] + (1,) if rng.random() < c.gray_noise_prob else lr.shape
        a += rng.normal(0.0, sigma, size=shape).astype(np.float32)
    else:
        peak = 10.0 ** rng.uniform(*c.poisson_log10_peak)
        a = rng.poisson(a * (peak / 255.0)).astype(np.float32) * (255.0 / peak)
    return np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8)


def real_lr(hr: np.ndarray, scale: int, rng: np.random.Generator, chain: Chain = Chain()) -> np.ndarray:
    """HR uint8 HxWx3 (sides multiples of ``scale``) -> LR uint8 (H/scale)x(W/scale)x3."""
    _check_rgb8(hr, "real_lr")
    h, w = hr.shape[:2]
    if h % scale or w % scale or h == 0 or w == 0:
        raise LesrcnnError(f"HR size {w}x{h} is not a positive multiple of the scale {scale}")
    x = _blur(hr, scale, rng, chain) if rng.random() < chain.blur_prob else hr
    names, probs = zip(*chain.kernels)
    kernel = names[rng.choice(len(probs), p=np.divide(probs, sum(probs)))]
    if kernel == "bicubic":
        x = imresize(x, 1.0 / scale)
    else:
        pil = {"bilinear": Image.BILINEAR, "area": Image.BOX, "lanczos": Image.LANCZOS}[kernel]
        x = np.asarray(Image.fromarray(x).resize((w // scale, h // scale), pil))
    if rng.random() < chain.noise_prob:
        x = _noise(x, rng, chain)
    if rng.random() < chain.jpeg_prob:
        x = jpeg_variant(x, int(rng.integers(chain.jpeg_quality[0], chain.jpeg_quality[1] + 1)))
    return np.ascontiguousarray(x)


def jpeg_variant(lr: np.ndarray, quality: int = 75) -> np.ndarray:
    """``lr`` through a JPEG file in memory: baseline, 4:2:0 chroma subsampling (as cameras and the
    web). At quality 75 on a clean MATLAB-bicubic LR: the evaluation's real-photo LR."""
    _check_rgb8(lr, "jpeg_variant")
    if not 1 <= int(quality) <= 100:
        raise LesrcnnError(f"JPEG quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    return np.array(Image.open(buf).convert("RGB"))
