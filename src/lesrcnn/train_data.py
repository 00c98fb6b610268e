"""Training patches: images decoded once into (device) memory, crops gathered by indexing there.

The random draws (scale, image, position, flips) come from a checkpointed numpy Generator, a few
numbers per patch: a resumed run draws what an uninterrupted one would, and every DDP rank draws
the same global batch and gathers only its slice. A patch is one gather from a flat uint8 buffer
of all images with the flip and rotation folded into the indices, so no pixel crosses the bus."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from .data import hr_images, read_rgb
from .degrade import real_lr
from .errors import LesrcnnError
from .resize import degrade, imresize


class Flat:
    """Images of different sizes in one flat (pixels, 3) uint8 buffer, with offsets and widths."""

    def __init__(self, images: list[np.ndarray], device: torch.device):
        self.hw = np.array([im.shape[:2] for im in images], dtype=np.int64).reshape(-1, 2)  # host: for draws
        off = np.concatenate([[0], np.cumsum(self.hw[:, 0] * self.hw[:, 1])[:-1]]).astype(np.int64)
        self.buf = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in images])).to(device)
        self.off, self.width = (torch.from_numpy(a).to(device) for a in (off, self.hw[:, 1].copy()))

    def gather(self, p: torch.Tensor, side: int, stride: int = 1) -> torch.Tensor:
        """(n, side, side, 3) patches for draws ``p`` = (image, y, x, flip_h, flip_v, transpose), with
        the top-left corner at (y, x) * stride; flips and transposition as in the paper's code."""
        i, y, x, fh, fv, rot = p.T.reshape(6, -1, 1, 1)  # each (n, 1, 1): broadcast over the patch
        u = torch.arange(side, device=self.buf.device)
        r, c = u.view(1, side, 1), u.view(1, 1, side)
        r, c = torch.where(rot.bool(), c, r), torch.where(rot.bool(), r, c)
        r, c = torch.where(fv.bool(), side - 1 - r, r), torch.where(fh.bool(), side - 1 - c, c)
        return self.buf[self.off[i] + (y * stride + r) * self.width[i] + x * stride + c]


def _prepare(path: Path, scales: tuple[int, ...], need: int, bicubic: bool,
             rescale: tuple[float, ...] = ()) -> list[tuple]:
    """(HR, {scale: LR}) for one file and for each of its ``rescale`` downscales (the augmentation
    the 291-image SR papers use: more, and sharper, images), those at least ``need`` px."""
    original = read_rgb(path)
    return [(hr, {s: degrade(hr, s)[1] for s in (scales if bicubic else ())})
            for hr in (original, *(imresize(original, f) for f in rescale)) if min(hr.shape[:2]) >= need]


def load_images(folders: list[str], scales: tuple[int, ...], hr_side: dict[int, int], bicubic: bool,
                log=print, rescale: tuple[float, ...] = ()) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
    """Decode every HR image once and make its MATLAB-bicubic LR once (in parallel processes)."""
    paths = [p for f in folders for p in hr_images(f)]
    need, t0 = min(hr_side.values()), time.time()
    prepare = partial(_prepare, scales=scales, need=need, bicubic=bicubic, rescale=rescale)
    workers = min(len(paths) // 8, os.cpu_count() or 1, 16)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            per_file = list(pool.map(prepare, paths, chunksize=4))
    else:
        per_file = list(map(prepare, paths))
    kept = [d for ds in per_file for d in ds]
    if not kept:
        raise LesrcnnError(f"all {len(paths)} training images are smaller than the {need}px HR patch")
    made = f", LR for x{'/x'.join(map(str, scales))} made" if bicubic else ""
    images = sum(map(bool, per_file))
    copies = f" + {len(kept) - images} rescaled copies" if rescale else ""
    log(f"data: {images} images{copies} ({len(paths) - images} smaller than the patch skipped){made} "
        f"in {time.time() - t0:.1f}s")
    return [hr for hr, _ in kept], ({s: [lr[s] for _, lr in kept] for s in scales} if bicubic else {})


def _worker_init() -> None:
    """One thread per worker (the pool is the parallelism). Ctrl-C or a TERM to the process group
    reaches the workers too: the trainer saves and shuts them down; they must not die first, or
    print tracebacks."""
    cv2.setNumThreads(1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


class PatchSampler:
    """Aligned (LR, HR) patch batches; ``lrs`` empty: LR made per patch on the host by ``real_lr``.
    Every scale samples only the images at least as large as its HR patch, by area, so a
    multi-scale run never meets an LR image smaller than its patch (issue 9.6)."""

    def __init__(self, hrs: list[np.ndarray], lrs: dict[int, list[np.ndarray]], lr_patch: dict[int, int],
                 device: torch.device, workers: int | None = None):
        self.scales, self.lr_patch, self.device = tuple(sorted(lr_patch)), lr_patch, device
        self.real, self.pool = not lrs, None
        # real LR in worker processes only beside a GPU: on a CPU the convolutions already use every core
        if workers is None:
            workers = 0 if device.type == "cpu" else min(16, os.cpu_count() or 1)
        self.workers = workers
        self.hr = Flat(hrs, torch.device("cpu") if self.real else device)
        self.lr = {s: Flat(lrs[s], device) for s in lrs}
        self.p: dict[int, np.ndarray] = {}
        for s in self.scales:
            area = np.where((self.hr.hw >= lr_patch[s] * s).all(axis=1), self.hr.hw.prod(axis=1), 0)
            if area.sum() == 0:
                raise LesrcnnError(f"all training images are smaller than the {lr_patch[s] * s}px HR patch "
                                   f"of x{s}")
            self.p[s] = area / area.sum()

    def real_lrs(self, hr: np.ndarray, scale: int, rngs) -> Iterator[np.ndarray]:
        """``real_lr`` of each HR patch, in ``workers`` processes (one chunk each): its many small
        numpy/PIL steps hold the GIL, so 16 threads on a GPU host gave one core's worth (360
        patches/s). Spawned, not forked: the parent may hold CUDA and thread pools."""
        if self.workers < 2 or len(hr) < 2:
            return map(real_lr, hr, repeat(scale), rngs)
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                            initializer=_worker_init)
        return self.pool.map(real_lr, hr, repeat(scale), rngs, chunksize=-(-len(hr) // self.workers))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def draw(self, rng: np.random.Generator, n: int) -> tuple[int, np.ndarray]:
        """The scale and n rows of (image, y, x, flip_h, flip_v, transpose); y, x in LR pixels for
        bicubic data, in HR pixels for real degradation (any HR position is then allowed)."""
        s = int(self.scales[rng.integers(len(self.scales))]) if len(self.scales) > 1 else self.scales[0]
        ps = self.lr_patch[s]
        idx = rng.choice(len(self.p[s]), size=n, p=self.p[s])
        room = (self.hr.hw[idx] - ps * s + 1) if self.real else (self.hr.hw[idx] // s - ps + 1)
        return s, np.column_stack([idx, rng.integers(0, room), rng.integers(2, size=(n, 3))]).astype(np.int64)

    def batch(self, rng: np.random.Generator, n: int,
              part: slice = slice(None)) -> tuple[int, torch.Tensor, torch.Tensor]:
        """One global batch of n draws, of which this process gathers rows ``part``: (scale, LR, HR),
        float NCHW channels-last in [0, 1] on the device."""
        s, p = self.draw(rng, n)
        ps, pd = self.lr_patch[s], torch.from_numpy(p[part])
        if self.real:
            rngs = map(np.random.default_rng, rng.integers(2**63, size=n)[part])  # one per patch (workers)
            hr = self.hr.gather(pd, ps * s)
            lr = torch.from_numpy(np.stack(list(self.real_lrs(hr.numpy(), s, rngs))))
        else:
            pd = (pd.pin_memory() if self.device.type == "cuda" else pd).to(self.device, non_blocking=True)
            lr, hr = self.lr[s].gather(pd, ps), self.hr.gather(pd, ps * s, stride=s)
        lr, hr = (t.to(self.device, non_blocking=True).permute(0, 3, 1, 2) for t in (lr, hr))  # NHWC -> NCHW
        return s, lr.float().div_(255), hr.float().div_(255)
