"""Real-photo degradations: LR training inputs that look like what users actually upscale.

The benchmarks' LR images are clean MATLAB-bicubic downscales; users' photos have also been
blurred by optics, resized by other software, noised by sensors and, above all, JPEG-compressed.
A network trained only on the clean case sharpens JPEG blocks along with edges. ``real_lr`` makes
the LR of each training patch on the fly through a randomised chain, in this order:

1. Blur (HR, probability 0.25): anisotropic Gaussian, sigmas uniform in
   [0.3, 0.5 + 0.25 * scale] HR pixels each, random angle (optics, motion, prior resizes).
2. Downscale by ``scale`` with a random kernel: MATLAB bicubic (``lesrcnn.resize.imresize``,
   the one the evaluation uses) 55%, antialiased bilinear 15%, area/box 15%, Lanczos-3 15%.
3. Noise (LR, probability 0.2): Gaussian 70% (sigma uniform in [1, 8] on the 0-255 scale,
   in colour or, 40% of the time, the same on all channels) or Poisson 30% (photon peak
   10**U(2.5, 4) at full white).
4. JPEG (probability 0.7): quality uniform in [60, 95], 4:2:0 chroma subsampling, baseline.

Blur and noise are off most of the time and JPEG off 30% of the time, so clean inputs keep
their share. All randomness comes from ``rng``, so a seed reproduces the patch exactly.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import LesrcnnError
from .resize import imresize


@dataclass(frozen=True)
class Chain:
    """The chain's probabilities and ranges (module docstring); frozen so a run logs one recipe."""

    blur_prob: float = 0.25
    blur_sigma_min: float = 0.3
    kernels: tuple[tuple[str, float], ...] = (("bicubic", 0.55), ("bilinear", 0.15), ("area", 0.15),
                                              ("lanczos", 0.15))
    noise_prob: float = 0.2
    gauss_share: float = 0.7
    gauss_sigma: tuple[float, float] = (1.0, 8.0)
    gray_noise_prob: float = 0.4
    poisson_log10_peak: tuple[float, float] = (2.5, 4.0)
    jpeg_prob: float = 0.7
    jpeg_quality: tuple[int, int] = (60, 95)


DEFAULT_CHAIN = Chain()


def _check(hr: np.ndarray, scale: int) -> None:
    if not isinstance(hr, np.ndarray) or hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        raise LesrcnnError(f"real_lr needs an HxWx3 uint8 array, got {getattr(hr, 'dtype', type(hr))} "
                           f"{getattr(hr, 'shape', '')}")
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise LesrcnnError(f"scale must be a positive integer, got {scale!r}")
    h, w = hr.shape[:2]
    if h % scale or w % scale or h == 0 or w == 0:
        raise LesrcnnError(f"HR size {w}x{h} is not a positive multiple of the scale {scale}")


def _blur(hr: np.ndarray, scale: int, rng: np.random.Generator, c: Chain) -> np.ndarray:
    hi = 0.5 + 0.25 * scale
    s1, s2 = rng.uniform(c.blur_sigma_min, hi, size=2)
    theta = rng.uniform(0.0, math.pi)
    r = min(int(math.ceil(3 * max(s1, s2))), min(hr.shape[:2]) - 1)  # reflect padding needs r < side
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = cos * x + sin * y, -sin * x + cos * y
    k = np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    k = torch.from_numpy((k / k.sum()).astype(np.float32))
    x = torch.from_numpy(hr).permute(2, 0, 1)[None].float()
    x = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k.expand(3, 1, *k.shape).contiguous(), groups=3)
    return x[0].permute(1, 2, 0).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def _downscale(hr: np.ndarray, scale: int, kernel: str) -> np.ndarray:
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if kernel == "bicubic":
        return imresize(hr, 1.0 / scale)
    pil = {"bilinear": Image.BILINEAR, "area": Image.BOX, "lanczos": Image.LANCZOS}[kernel]
    return np.asarray(Image.fromarray(hr).resize((w, h), pil), dtype=np.uint8)


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


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode in memory: baseline JPEG, 4:2:0 chroma subsampling (as cameras and the web)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def real_lr(hr: np.ndarray, scale: int, rng: np.random.Generator, chain: Chain = DEFAULT_CHAIN) -> np.ndarray:
    """HR uint8 HxWx3 (sides multiples of ``scale``) -> LR uint8 (H/scale)x(W/scale)x3."""
    _check(hr, scale)
    c = chain
    x = _blur(hr, scale, rng, c) if rng.random() < c.blur_prob else hr
    names = [k for k, _ in c.kernels]
    probs = np.array([p for _, p in c.kernels], dtype=np.float64)
    x = _downscale(x, scale, names[rng.choice(len(names), p=probs / probs.sum())])
    if rng.random() < c.noise_prob:
        x = _noise(x, rng, c)
    if rng.random() < c.jpeg_prob:
        x = jpeg(x, int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)))
    return np.ascontiguousarray(x)


def jpeg_variant(lr: np.ndarray, quality: int = 75) -> np.ndarray:
    """The evaluation's real-photo LR: a clean (MATLAB-bicubic) LR image saved as JPEG ``quality``."""
    if not isinstance(lr, np.ndarray) or lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
        raise LesrcnnError(f"jpeg_variant needs an HxWx3 uint8 array, got {getattr(lr, 'dtype', type(lr))} "
                           f"{getattr(lr, 'shape', '')}")
    if not 1 <= int(quality) <= 100:
        raise LesrcnnError(f"JPEG quality must be 1..100, got {quality}")
    return jpeg(lr, quality)
