"""Inference: device choice, the one tiler (bounded memory, tiled == untiled), the ``Upscaler`` API."""
from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import weights as W
from .errors import LesrcnnError
from .io import (DEEP_FORMATS, DEFAULT_MAX_PIXELS, ImageWarning, Picture, check_output, format_for_path, max_value,
                 normalize_format, picture_from_pil, picture_to_pil, read_picture, to_gray, write_picture)
from .metrics import to_uint8
from .model import LESRCNN, check_scale

# Peak bytes of activations per LR pixel of a tile, per scale (fp32, measured with margin).
_BYTES_PER_LR_PIXEL = {2: 6_000, 3: 12_000, 4: 20_000}
Box = tuple[int, int, int, int]
Progress = Callable[[int, int], None] | None  # (tiles done, tiles in all)
QUANTIZE = ("truncate", "round")
MIN_TILE = 16


def pick_device(spec: str | torch.device = "auto") -> torch.device:
    """The one device picker: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps"."""
    spec = str(spec).strip().lower()
    mps = torch.backends.mps.is_available()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", spec):
        raise LesrcnnError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LesrcnnError(f"--device {spec}: no CUDA device is available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise LesrcnnError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not mps:
        raise LesrcnnError(f"--device {spec}: MPS is not available")
    return dev


def prepare(model: LESRCNN, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32) -> LESRCNN:
    """Eval mode, channels-last (the fast layout for these 3x3 convolutions on CPU and GPU)."""
    if torch.device(device).type == "cpu":
        tune_cpu_allocator()
    return model.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)


@functools.cache
def tune_cpu_allocator() -> bool:
    """Make glibc keep freed activation buffers (64 MB a layer for a 512x512 tile, above its mmap
    threshold) for reuse instead of unmapping them and faulting fresh zeroed pages in for the next
    layer: ~15% of CPU inference time. Process-wide, once; ``LESRCNN_MALLOC_TUNING=0`` disables it."""
    if os.environ.get("LESRCNN_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc
        return False


def _tile_pixels(scale: int, device: torch.device, dtype: torch.dtype) -> float:
    """LR pixels of tiles whose activations fit a quarter of the free memory (at most 4 GiB). On the
    CPU that is MemAvailable: it counts the page cache the kernel gives back, as free memory would not."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):  # not Linux
            free = 4 << 30
    per_px = _BYTES_PER_LR_PIXEL[scale] * (2 if dtype == torch.float32 else 1) // 2
    return min(free * 0.25, 4 << 30) / per_px


# --- the one tiler ---------------------------------------------------------------------------------

def plan_tiles(h: int, w: int, tile: int, overlap: int) -> list[tuple[Box, Box]]:
    """LR tiles as (core (y0, y1, x0, x1), padded (py0, py1, px0, px1)), row-major; ``tile`` <= 0:
    the whole image. Cores split the image into nearly equal parts (no thin leftover); each is
    padded by ``overlap`` pixels of real image, cut at the border (never padded), so with an overlap
    of at least the receptive margin each output pixel sees exactly its untiled context."""
    tile = tile if tile > 0 else max(h, w)
    ny, nx = -(-h // tile), -(-w // tile)
    ys = [round(i * h / ny) for i in range(ny + 1)]
    xs = [round(j * w / nx) for j in range(nx + 1)]
    return [((y0, y1, x0, x1),
             (max(0, y0 - overlap), min(h, y1 + overlap), max(0, x0 - overlap), min(w, x1 + overlap)))
            for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def tiled_apply(h: int, w: int, scale: int, tile: int, overlap: int, batch: int,
                fetch: Callable[[list[Box]], torch.Tensor], infer: Callable[[torch.Tensor], torch.Tensor],
                store: Callable[[Box, torch.Tensor], None], progress: Progress = None) -> None:
    """Run ``infer`` over the tiles of an h x w LR image, up to ``batch`` consecutive tiles of one
    padded shape at a time: ``fetch`` makes the NCHW batch of the padded boxes, ``store`` receives
    each core box and its CHW SR crop."""
    plan = plan_tiles(h, w, tile, overlap)
    done = 0
    for _, same in itertools.groupby(plan, key=lambda t: (t[1][1] - t[1][0], t[1][3] - t[1][2])):
        same = list(same)
        for chunk in (same[k:k + batch] for k in range(0, len(same), batch)):
            y = infer(fetch([pad for _, pad in chunk]))
            for j, ((y0, y1, x0, x1), (py0, _, px0, _)) in enumerate(chunk):
                oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                store((y0, y1, x0, x1), y[j, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale])
            done += len(chunk)
            if progress is not None:
                progress(done, len(plan))


@torch.inference_mode()
def forward_tiled(model: Callable, x: torch.Tensor, scale: int, tile: int = 0) -> torch.Tensor:
    """SR of an NCHW batch ``x`` with ``model(x, scale)`` (a network or an engine), tiled in LR
    space when ``tile`` > 0. Output is float, on ``x``'s device, unclamped."""
    n, c, h, w = x.shape
    overlap = model.receptive_margin() + 2
    out = torch.empty((n, c, h * scale, w * scale), dtype=x.dtype, device=x.device)
    for i in range(n):  # the callbacks run within the iteration: img and o are this image's
        img, o = x[i:i + 1], out[i]
        tiled_apply(h, w, scale, tile, overlap, 4,
                    lambda boxes: torch.cat([img[:, :, p[0]:p[1], p[2]:p[3]] for p in boxes]).contiguous(
                        memory_format=torch.channels_last),
                    lambda xb: model(xb, scale),
                    lambda b, t: o[:, b[0] * scale:b[1] * scale, b[2] * scale:b[3] * scale].copy_(t))
    return out


# --- the Upscaler API: LR tiles cut from the image (numpy) go through an inference engine
# (lesrcnn.backends) in batches, and each tile's core is written, quantised, straight into the
# preallocated output: peak memory is the input + the output + one batch of activations.

def _dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The 8 flips/rotations of the self-ensemble (k = 0..7) on NCHW, or their inverses."""
    rot, flip = k % 4, k >= 4
    if inverse:
        return torch.rot90(x.flip(3) if flip else x, -rot, (2, 3))
    x = torch.rot90(x, rot, (2, 3))
    return x.flip(3) if flip else x


def _quantizer(dtype: np.dtype, quantize: str):
    """float32 HxWxC SR (unclamped) -> the output dtype."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return lambda a: to_uint8(a, quantize)  # the paper's / eval's conversion, bit for bit
    if dtype == np.uint16:
        return lambda a: np.floor(np.clip(a, 0.0, 1.0) * np.float32(65535) + np.float32(0.5)).astype(dtype)
    return lambda a: np.clip(a, 0.0, 1.0).astype(dtype, copy=False)


class Upscaler:
    """Upscale images with LESRCNN: loads the model once, then ``upscale`` / ``upscale_file``.

    ``weights``: None (embedded), a registry name, a file of ours, an official ``.pth``, a
    :class:`~lesrcnn.weights.Checkpoint`, or (onnx/openvino backends) an ``.onnx`` file; ``backend``,
    ``precision``, ``threads``: :func:`lesrcnn.backends.create`. ``tile``: LR tile side (None: from free
    memory, 0: no tiling); ``overlap`` defaults to the receptive margin + 2, so tiled == untiled.
    ``quantize``: "truncate" (the released code's and ``lesrcnn eval``'s 8-bit conversion) or "round"
    (about +0.05 dB). Gray images run as R=G=B and come back as BT.601 luma; NaN/Inf output is refused.
    """

    def __init__(self, scale: int = 2, weights=None, device: str = "auto", *, precision: str = "fp32",
                 tile: int | None = None, overlap: int | None = None, batch: int | None = None,
                 self_ensemble: bool = False, backend: str = "auto", quantize: str = "truncate",
                 max_pixels: int | None = None, threads: int | None = None, progress: bool = True):
        from .backends import create

        self.scale = check_scale(scale)
        if quantize not in QUANTIZE:
            raise LesrcnnError(f"quantize must be truncate or round, got {quantize!r}")
        self.quantize, self.self_ensemble = quantize, bool(self_ensemble)
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else (int(max_pixels) or None)
        onnx_file = Path(weights) if isinstance(weights, (str, os.PathLike)) and \
            str(weights).lower().endswith(".onnx") else None
        if isinstance(weights, W.Checkpoint):
            weights.require_scale(self.scale)
        elif onnx_file is None:
            weights = W.load(weights, self.scale)
        self.checkpoint: W.Checkpoint | None = None if onnx_file else weights
        self.device = torch.device("cpu") if precision == "int8" and device == "auto" else pick_device(device)
        self.engine = create(None if onnx_file else weights.model, backend, precision, self.device, threads,
                             (self.scale,), onnx_file, progress)
        if self.scale not in self.engine.scales:
            raise LesrcnnError(f"{onnx_file} is a x{self.engine.scales[0]} model; "
                               f"it cannot upscale x{self.scale}")
        self.backend, self.precision, self.dtype = self.engine.name, self.engine.precision, self.engine.dtype
        margin = self.engine.receptive_margin()
        self.overlap = margin + 2 if overlap is None else int(overlap)
        if self.overlap < 0:
            raise LesrcnnError(f"tile overlap must be >= 0, got {self.overlap}")
        if self.overlap < margin:
            warnings.warn(f"tile overlap {self.overlap} is below the network's receptive margin ({margin} LR "
                          f"pixels): tile seams may show", ImageWarning, stacklevel=2)
        if tile is None:  # the largest square tile (64..1024 LR pixels, a multiple of 16) that fits
            side = int(math.sqrt(_tile_pixels(self.scale, self.device, self.dtype)))
            tile = max(64, min(1024, side // 16 * 16))
        self.tile = int(tile)
        if self.tile < 0 or 0 < self.tile < MIN_TILE:
            raise LesrcnnError(f"tile must be 0 (no tiling) or at least {MIN_TILE} LR pixels, got {tile}")
        if batch is None and self.tile > 0:  # tiles per pass. GPU: as many as fit the memory budget (1..8).
            # CPU: batching buys nothing once a tile fills the cores, so only small tiles are grouped, up
            # to about one 256x256 tile's worth (memory then stays what --tile asked for).
            side = self.tile + 2 * self.overlap
            budget = _tile_pixels(self.scale, self.device, self.dtype) if self.device.type != "cpu" else 256**2
            batch = min(8, budget // (side * side))
        self.batch = max(1, int(batch or 1))

    def __repr__(self) -> str:
        src = self.checkpoint.source if self.checkpoint is not None else "onnx"
        return (f"Upscaler(scale={self.scale}, weights={src!r}, device={self.device.type!r}, "
                f"precision={self.precision!r}, tile={self.tile}, overlap={self.overlap}, "
                f"backend={self.backend!r}, self_ensemble={self.self_ensemble})")

    def _forward_once(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW float32 host tensor in [0, 1] -> NCHW float32 host SR (unclamped, finite)."""
        y = self.engine(x, self.scale).float().cpu()
        if not bool(torch.isfinite(y).all()):
            raise LesrcnnError(f"the network's output holds NaN or Inf ({self.backend} backend, "
                               f"{self.precision}): the weights are broken")
        return y

    @torch.inference_mode()
    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        acc = self._forward_once(x)  # k = 0 of the self-ensemble: the identity
        for k in range(1, 8 if self.self_ensemble else 1):
            acc.add_(_dihedral(self._forward_once(_dihedral(x, k).contiguous()), k, inverse=True))
        return acc.div_(8) if self.self_ensemble else acc

    def run(self, src: np.ndarray, out_dtype=None, progress: Progress = None) -> np.ndarray:
        """HxWxC colour planes (C = 1 gray or 3 RGB; uint8, uint16 or float in [0, 1]) ->
        (sH)x(sW)xC in ``out_dtype`` (default: the input's; float output is float32 clipped to [0, 1])."""
        h, w, c = src.shape
        if h == 0 or w == 0:
            raise LesrcnnError("zero-size image")
        if out_dtype is None:
            out_dtype = src.dtype if src.dtype in (np.uint8, np.uint16) else np.float32
        s = self.scale
        out = np.empty((h * s, w * s, c), dtype=out_dtype)
        quant = _quantizer(out.dtype, self.quantize)
        mv = max_value(src.dtype)

        def fetch(boxes: list[Box]) -> torch.Tensor:
            tiles = np.stack([src[p[0]:p[1], p[2]:p[3]] for p in boxes])
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).to(torch.float32).div_(mv)  # as eval: uint8 / 255
            return x.expand(-1, 3, -1, -1) if c == 1 else x

        def store(b: Box, t: torch.Tensor) -> None:
            a = t.permute(1, 2, 0).numpy()
            out[b[0] * s:b[1] * s, b[2] * s:b[3] * s] = quant(to_gray(a) if c == 1 else a)

        tiled_apply(h, w, s, self.tile, self.overlap, self.batch, fetch, self._infer, store, progress)
        return out

    def upscale_picture(self, pic: Picture, bits: int | None = None, progress=None) -> Picture:
        """A :class:`lesrcnn.io.Picture` -> the upscaled Picture, metadata kept (DPI scaled);
        ``bits``: 8 or 16 for integer output (default: the input's kind)."""
        color = self.run(pic.color, {8: np.uint8, 16: np.uint16, None: None}.get(bits, np.float32), progress)
        alpha = None if pic.alpha is None else resize_alpha(pic.alpha, self.scale, color.dtype)
        dpi = None if pic.dpi is None else tuple(_tidy(d * self.scale) for d in pic.dpi)
        return replace(pic, color=color, alpha=alpha, dpi=dpi)

    def upscale_array(self, arr: np.ndarray, progress=None) -> np.ndarray:
        """HxW or HxWxC (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) uint8/uint16/float in [0, 1] ->
        the upscaled array; uint8/uint16 stay so, float comes back float32 in [0, 1]."""
        a = np.asarray(arr)
        if a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)
            if a.size and not np.isfinite(a).all():
                raise LesrcnnError("the array holds NaN or Inf")
            if a.size and (a.max() > 1.5 or a.min() < -0.5):
                warnings.warn(f"float arrays are expected in [0, 1]; this one spans {a.min():g}..{a.max():g} "
                              f"(divide 8-bit data by 255)", ImageWarning, stacklevel=3)
        elif a.dtype not in (np.uint8, np.uint16):
            raise LesrcnnError(f"arrays must be uint8, uint16 or float in [0, 1], got {a.dtype}")
        a = a[..., None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
            raise LesrcnnError(f"arrays must be HxW or HxWxC with C in 1..4, got shape {np.shape(arr)}")
        nc = 1 if a.shape[2] <= 2 else 3
        alpha = a[..., nc] if nc < a.shape[2] else None
        pic = self.upscale_picture(Picture(np.ascontiguousarray(a[..., :nc]), alpha), progress=progress)
        out = pic.color if pic.alpha is None else np.concatenate([pic.color, pic.alpha[..., None]], axis=2)
        return out[..., 0] if np.ndim(arr) == 2 else out

    def upscale(self, img, progress=None):
        """Upscale a PIL image, a numpy array (HxW / HxWxC; uint8, uint16 or float in [0, 1]) or a
        torch tensor (HxW, CxHxW or NxCxHxW; uint8 or float in [0, 1]); returns the same kind."""
        if isinstance(img, np.ndarray):
            out = self.upscale_array(img, progress)
            return out.astype(img.dtype) if img.dtype.kind == "f" else out
        if isinstance(img, torch.Tensor):
            return self._upscale_tensor(img, progress)
        from PIL import Image

        if isinstance(img, Image.Image):
            return picture_to_pil(self.upscale_picture(picture_from_pil(img), progress=progress))
        raise TypeError(f"upscale() takes a PIL image, a numpy array or a torch tensor, "
                        f"not {type(img).__name__}")

    def _upscale_tensor(self, t: torch.Tensor, progress=None) -> torch.Tensor:
        if t.dtype not in (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise LesrcnnError(f"tensors must be uint8 or float in [0, 1], got {t.dtype}")
        if t.ndim in (2, 3):  # HxW -> 1xHxW -> 1x1xHxW
            return self._upscale_tensor(t[None], progress)[0]
        if t.ndim != 4 or t.shape[1] not in (1, 2, 3, 4):
            raise LesrcnnError(f"tensors must be HxW, CxHxW or NxCxHxW with C in 1..4, got {tuple(t.shape)}")
        outs = []
        for img in t:
            a = img.detach().cpu().permute(1, 2, 0)
            a = a.numpy() if t.dtype == torch.uint8 else a.float().numpy()
            outs.append(torch.from_numpy(self.upscale_array(a, progress)).permute(2, 0, 1))
        return torch.stack(outs).to(device=t.device, dtype=t.dtype)

    def upscale_file(self, src, dst, *, format: str | None = None, quality: int | None = None,
                     overwrite: bool = False, progress=None):
        """Read ``src``, upscale, write ``dst`` atomically. The format comes from ``format`` or
        ``dst``'s extension; 16-bit input stays 16-bit in PNG/TIFF. Returns ``dst`` as a Path."""
        dst = Path(dst)
        fmt = normalize_format(format) if format else format_for_path(dst)
        if not fmt:
            raise LesrcnnError(f"{dst}: unknown image extension; name the format (png, jpg, webp, tiff, bmp)")
        check_output(dst, overwrite, [src] if isinstance(src, (str, os.PathLike)) else [])
        pic = read_picture(src, self.max_pixels)
        bits = 16 if pic.bits == 16 and fmt in DEEP_FORMATS else 8
        write_picture(self.upscale_picture(pic, bits, progress), dst, fmt, quality)
        return dst

    def upscale_video(self, src, dst, **opts):
        """Upscale every frame of a video file; audio, subtitles, timestamps, rotation, colour tags and
        bit depth kept; resumable. Options and result: :func:`lesrcnn.video.upscale_video`."""
        from .video import upscale_video

        return upscale_video(self, src, dst, **opts)


def _tidy(v: float) -> float:
    """DPI after scaling: snap values within 0.01 of an integer (PNG stores pixels per metre)."""
    r = round(v)
    return float(r) if abs(v - r) < 0.01 else round(v, 4)


def resize_alpha(alpha: np.ndarray, scale: int, out_dtype) -> np.ndarray:
    """Alpha plane HxW -> (sH)x(sW), bicubic (Pillow), in ``out_dtype`` (uint8, uint16 or float32)."""
    from PIL import Image

    size = (alpha.shape[1] * scale, alpha.shape[0] * scale)
    if alpha.dtype == np.uint8 and np.dtype(out_dtype) == np.uint8:  # mode L: 1 byte a pixel all the way
        return np.asarray(Image.fromarray(np.ascontiguousarray(alpha)).resize(size, Image.Resampling.BICUBIC))
    a = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.float32) / np.float32(max_value(alpha.dtype)))
    return _quantizer(out_dtype, "round")(np.asarray(a.resize(size, Image.Resampling.BICUBIC)))
