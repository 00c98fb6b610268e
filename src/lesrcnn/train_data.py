"""Training patches: images decoded once into (device) memory, crops gathered by indexing there.

The random draws (scale, image, position, flips) come from a numpy Generator on the host, a few
numbers per patch, whose state is checkpointed: a resumed run draws what an uninterrupted one
would, and every DDP rank draws the same global batch and gathers only its own slice. The pixels
never leave the device: a patch is one gather from a flat uint8 buffer of all images, with the
flip and rotation folded into the gather's indices, so the same code runs on CPU and GPU.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from .data import hr_images, read_rgb
from .errors import LesrcnnError
from .resize import crop_to_multiple, imresize


@dataclass
class Flat:
    """Images of different sizes in one flat (pixels, 3) uint8 buffer: offsets and sizes per image."""
    buf: torch.Tensor
    off: torch.Tensor  # pixel offset of each image, on the buffer's device
    width: torch.Tensor
    hw: np.ndarray  # (n, 2) heights and widths on the host, for drawing positions

    @classmethod
    def of(cls, images: list[np.ndarray], device: torch.device) -> "Flat":
        hw = np.array([im.shape[:2] for im in images], dtype=np.int64).reshape(-1, 2)
        off = np.concatenate([[0], np.cumsum(hw[:, 0] * hw[:, 1])[:-1]]).astype(np.int64)
        buf = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in images])).to(device)
        return cls(buf, torch.from_numpy(off).to(device), torch.from_numpy(hw[:, 1].copy()).to(device), hw)

    def gather(self, p: torch.Tensor, side: int, stride: int = 1) -> torch.Tensor:
        """(n, side, side, 3) patches for draws ``p`` = (image, y, x, flip_h, flip_v, transpose), with
        the top-left corner at (y, x) * stride; flips and transposition as in the paper's code."""
        n, dev = p.shape[0], self.buf.device
        i, y, x = p[:, 0], p[:, 1] * stride, p[:, 2] * stride
        fh, fv, rot = (p[:, k].bool().view(n, 1, 1) for k in (3, 4, 5))
        u = torch.arange(side, device=dev)
        r0, c0 = u.view(1, side, 1).expand(n, side, side), u.view(1, 1, side).expand(n, side, side)
        r, c = torch.where(rot, c0, r0), torch.where(rot, r0, c0)
        r, c = torch.where(fv, side - 1 - r, r), torch.where(fh, side - 1 - c, c)
        w = self.width[i].view(n, 1, 1)
        pix = self.off[i].view(n, 1, 1) + (y.view(n, 1, 1) + r) * w + x.view(n, 1, 1) + c
        return self.buf[pix]


def _prepare(path: Path, scales: tuple[int, ...], need: int, bicubic: bool) -> tuple | None:
    """(HR, {scale: LR}) for one file, or None when it is smaller than every scale's HR patch."""
    hr = read_rgb(path)
    if min(hr.shape[:2]) < need:
        return None
    return hr, {s: imresize(crop_to_multiple(hr, s), 1.0 / s) for s in (scales if bicubic else ())}


def load_images(folders: list[str], scales: tuple[int, ...], hr_side: dict[int, int], bicubic: bool,
                workers: int = 0, log=print) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
    """Decode every HR image once and make its MATLAB-bicubic LR once (in parallel processes)."""
    paths = [p for f in folders for p in hr_images(f)]
    need = min(hr_side.values())
    t0 = time.time()
    workers = workers or min(len(paths) // 8, os.cpu_count() or 1, 16)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            done = list(pool.map(partial(_prepare, scales=scales, need=need, bicubic=bicubic), paths, chunksize=4))
    else:
        done = [_prepare(p, scales, need, bicubic) for p in paths]
    kept = [d for d in done if d is not None]
    if not kept:
        raise LesrcnnError(f"all {len(paths)} training images are smaller than the {need}px HR patch")
    hrs = [hr for hr, _ in kept]
    lrs = {s: [lr[s] for _, lr in kept] for s in scales} if bicubic else {}
    log(f"data: {len(hrs)} images ({len(paths) - len(hrs)} smaller than the patch skipped)"
        + (f", LR for x{'/x'.join(map(str, scales))} made" if bicubic else "") + f" in {time.time() - t0:.1f}s")
    return hrs, lrs


class PatchSampler:
    """Aligned (LR, HR) patch batches. ``lrs`` empty: LR made per patch by ``degrade.real_lr``
    (on the host, in threads, each patch with its own generator seeded from ``rng``).

    Every scale samples only the images at least as large as its HR patch, by area (every pixel
    equally likely), so a multi-scale run never meets an LR image smaller than its patch.
    """

    def __init__(self, hrs: list[np.ndarray], lrs: dict[int, list[np.ndarray]], lr_patch: dict[int, int],
                 device: torch.device):
        self.scales, self.lr_patch, self.device = tuple(sorted(lr_patch)), lr_patch, device
        self.real, self._pool = not lrs, None
        store = torch.device("cpu") if self.real else device  # real_lr runs on the host
        self.hr = Flat.of(hrs, store)
        self.lr = {s: Flat.of(lrs[s], store) for s in self.scales} if lrs else {}
        self.p: dict[int, np.ndarray] = {}
        for s in self.scales:
            side = lr_patch[s] * s
            area = np.where((self.hr.hw >= side).all(axis=1), self.hr.hw.prod(axis=1), 0).astype(np.float64)
            if area.sum() == 0:
                raise LesrcnnError(f"all training images are smaller than the {side}px HR patch of x{s}")
            self.p[s] = area / area.sum()

    def _threads(self) -> ThreadPoolExecutor:
        """real_lr's codecs and convolutions release the GIL: patches degrade in parallel threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(min(16, os.cpu_count() or 1))
        return self._pool

    def draw(self, rng: np.random.Generator, n: int) -> tuple[int, np.ndarray]:
        """The scale and n rows of (image, y, x, flip_h, flip_v, transpose); y, x in LR pixels for
        bicubic data, in HR pixels for real degradation (any HR position is then allowed)."""
        s = int(self.scales[rng.integers(len(self.scales))]) if len(self.scales) > 1 else self.scales[0]
        ps = self.lr_patch[s]
        idx = rng.choice(len(self.p[s]), size=n, p=self.p[s])
        hw = self.hr.hw[idx] if self.real else self.hr.hw[idx] // s
        room = hw - (ps * s if self.real else ps) + 1
        yx = rng.integers(0, room)
        return s, np.column_stack([idx, yx, rng.integers(2, size=(n, 3))]).astype(np.int64)

    def batch(self, rng: np.random.Generator, n: int,
              part: slice = slice(None)) -> tuple[int, torch.Tensor, torch.Tensor]:
        """One global batch of n draws; this process gathers rows ``part``. Returns
        (scale, LR, HR) as float NCHW channels-last tensors in [0, 1] on the device."""
        s, p = self.draw(rng, n)
        ps = self.lr_patch[s]
        if self.real:
            seeds = rng.integers(2**63, size=n)[part]  # one generator per patch: threads, same result
            hr = self.hr.gather(torch.from_numpy(p[part]), ps * s)
            lr = torch.from_numpy(np.stack(list(self._threads().map(partial(_degrade, scale=s), hr.numpy(), seeds))))
        else:
            pd = torch.from_numpy(p[part])
            pd = (pd.pin_memory() if self.device.type == "cuda" else pd).to(self.device, non_blocking=True)
            lr, hr = self.lr[s].gather(pd, ps), self.hr.gather(pd, ps * s, stride=s)
        return s, to_float(lr, self.device), to_float(hr, self.device)


def _degrade(hr: np.ndarray, seed: int, scale: int) -> np.ndarray:
    from .degrade import real_lr
    return real_lr(hr, scale, np.random.default_rng(seed))


def to_float(a: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float in [0, 1]; channels-last by construction."""
    return a.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
