"""Inference: the fast forward path, tiling with bounded memory, and the ``Upscaler`` API."""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Callable

import torch

from .model import LESRCNN

# Peak bytes of activations per LR pixel of a tile, per scale (fp32, measured with margin).
_BYTES_PER_LR_PIXEL = {2: 6_000, 3: 12_000, 4: 20_000}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import LesrcnnError
        raise LesrcnnError("--device cuda: no CUDA device is available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        from .errors import LesrcnnError
        raise LesrcnnError("--device mps: MPS is not available")
    return torch.device(device)


def prepare(model: LESRCNN, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LESRCNN:
    """Eval mode, channels-last (the fast layout for these 3x3 convolutions on CPU and GPU)."""
    model = model.eval().to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last)


def default_overlap(model: LESRCNN) -> int:
    return model.receptive_margin() + 2


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_tile(scale: int, device: torch.device, dtype: torch.dtype = torch.float32, budget_fraction: float = 0.25,
              max_tile: int = 1024) -> int:
    """Largest square LR tile whose activations fit a fraction of the free memory."""
    per_px = _BYTES_PER_LR_PIXEL[scale] * (2 if dtype == torch.float32 else 1) // 2
    budget = min(available_memory_bytes(device) * budget_fraction, 4 << 30)
    side = int(math.sqrt(budget / per_px))
    return max(64, min(max_tile, side // 16 * 16))


def _forward(model: LESRCNN, x: torch.Tensor, scale: int) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last)
    return model(x, scale) if model.multiscale else model(x)


@torch.inference_mode()
def forward_tiled(
    model: LESRCNN,
    x: torch.Tensor,
    scale: int,
    tile: int = 0,
    overlap: int | None = None,
    batch: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """SR of an NCHW batch ``x`` (N usually 1), tiled in LR space when ``tile`` > 0.

    Each tile is extended by ``overlap`` LR pixels of real image on every side (cut at the
    image border, never padded), so with an overlap of at least the receptive margin each
    output pixel sees exactly the context it sees untiled. Tiles of equal shape are batched.
    Output is float in the model's dtype, on the model's device, unclamped.
    """
    n, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return _forward(model, x, scale)
    overlap = default_overlap(model) if overlap is None else overlap
    out = torch.empty((n, c, h * scale, w * scale), dtype=x.dtype, device=x.device)
    boxes = []
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(0, y0 - overlap), max(0, x0 - overlap)
            py1, px1 = min(h, y1 + overlap), min(w, x1 + overlap)
            boxes.append(((y0, y1, x0, x1), (py0, py1, px0, px1)))
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for b in boxes:
        (py0, py1, px0, px1) = b[1]
        groups[(py1 - py0, px1 - px0)].append(b)
    done = 0
    per = max(1, batch // n)
    for items in groups.values():
        for i in range(0, len(items), per):
            chunk = items[i:i + per]
            xb = torch.cat([x[:, :, p[0]:p[1], p[2]:p[3]] for _, p in chunk], dim=0)
            yb = _forward(model, xb, scale)
            for j, ((y0, y1, x0, x1), (py0, _, px0, _)) in enumerate(chunk):
                oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                    yb[j * n:(j + 1) * n, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
            done += len(chunk)
            if progress is not None:
                progress(done, len(boxes))
    return out
