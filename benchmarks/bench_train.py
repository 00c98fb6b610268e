"""Training throughput (HR pixels per second): the new loop against the previous one, in one run.

- new: images in (device) memory, patches gathered there (lesrcnn.train_data.PatchSampler), and
  lesrcnn.train_loop.Trainer.train_step: no host sync per step, fused Adam and bf16 autocast on
  CUDA, channels-last, EMA;
- new, RB unfused: the same, with the reconstruction block's two upsampler passes (what the loop
  ran before lesrcnn.train_loop.fuse_rb_for_training);
- previous: the per-patch numpy crop loop, a host-to-device copy per step, fp32, ``loss.item()``
  and a finiteness check every step (what `lesrcnn train` did before).
All three train the same multi-scale network on the same images; rounds are interleaved so
machine noise hits them alike.

    python benchmarks/bench_train.py [--device auto] [--batch 64] [--hr-patch 96] [--steps 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from lesrcnn.model import LESRCNN
from lesrcnn.resize import imresize
from lesrcnn.train import Options
from lesrcnn.train_data import PatchSampler, load_images
from lesrcnn.train_loop import Trainer
from lesrcnn.upscale import pick_device


def synthetic(n: int, side: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    out = []
    for _ in range(n):
        f = rng.uniform(3, 20, 6)
        img = np.stack([np.sin(f[c] * x + f[c + 3] * y + c) for c in range(3)], -1) * 100 + 128
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return out


class PreviousLoop:
    """The loop as it was: numpy crops per patch, one upload per step, a host sync per step."""

    def __init__(self, hrs, lrs, lr_patch, device):
        self.hrs, self.lrs, self.lr_patch, self.device = hrs, lrs, lr_patch, device
        torch.manual_seed(0)
        self.model = LESRCNN(scales=tuple(lr_patch)).to(device).to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), 1e-4)
        areas = np.array([h.shape[0] * h.shape[1] for h in hrs], dtype=np.float64)
        self.p = areas / areas.sum()

    def batch(self, rng, n):
        s = int(list(self.lr_patch)[rng.integers(len(self.lr_patch))])
        ps = self.lr_patch[s]
        lrs, hrs = np.empty((n, ps, ps, 3), np.uint8), np.empty((n, ps * s, ps * s, 3), np.uint8)
        for k, i in enumerate(rng.choice(len(self.hrs), size=n, p=self.p)):
            lr, hr = self.lrs[s][i], self.hrs[i]
            y, x = int(rng.integers(lr.shape[0] - ps + 1)), int(rng.integers(lr.shape[1] - ps + 1))
            a, b = lr[y:y + ps, x:x + ps], hr[y * s:(y + ps) * s, x * s:(x + ps) * s]
            fh, fv, rot = rng.integers(2, size=3)
            a, b = (a[:, ::-1], b[:, ::-1]) if fh else (a, b)
            a, b = (a[::-1], b[::-1]) if fv else (a, b)
            lrs[k], hrs[k] = (a.transpose(1, 0, 2), b.transpose(1, 0, 2)) if rot else (a, b)
        up = lambda a: torch.from_numpy(a).to(self.device).permute(0, 3, 1, 2).float().div_(255)  # noqa: E731
        cl = torch.channels_last
        return s, up(lrs).contiguous(memory_format=cl), up(hrs).contiguous(memory_format=cl)

    def step(self, rng, n):
        s, x, y = self.batch(rng, n)
        loss = F.l1_loss(self.model(x, s), y)
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.opt.step()
        return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hr-patch", type=int, default=96)
    ap.add_argument("--steps", type=int, default=10, help="steps per round and loop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", action="append", help="HR folders (default: 24 synthetic 320x320 images)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = pick_device(a.device)
    lr_patch = {s: a.hr_patch // s for s in (2, 3, 4)}
    if a.data:
        hrs, lrs = load_images(a.data, (2, 3, 4), {s: p * s for s, p in lr_patch.items()}, True, log=print)
    else:
        hrs = synthetic(24, 320)
        lrs = {s: [imresize(h[:h.shape[0] // s * s, :h.shape[1] // s * s], 1 / s) for h in hrs] for s in (2, 3, 4)}
    opts = Options(data=["-"], out=tempfile.mkdtemp(), scale="multi", batch=a.batch, hr_patch=a.hr_patch, loss="l1",
                   ema=0.999, precision="bf16" if dev.type == "cuda" else "fp32")
    sampler = PatchSampler(hrs, lrs, lr_patch, dev)

    def trainer(fused_rb: bool) -> Trainer:
        torch.manual_seed(0)
        model = LESRCNN(scales=(2, 3, 4)).to(dev).to(memory_format=torch.channels_last)
        t = Trainer(opts, model, dev)
        for m in (t.model, t.ema) if not fused_rb else ():  # back to the module's RB: two upsampler passes
            for up in m.upsample.values():
                del up.pair
        t.sampler = sampler
        return t

    def steps_of(t: Trainer):
        def run():
            for _ in range(a.steps):
                t.train_step(*t.sampler.batch(t.rng, a.batch))
        return run

    old, rng_old = PreviousLoop(hrs, lrs, lr_patch, dev), np.random.default_rng(1)

    def old_steps():
        for _ in range(a.steps):
            old.step(rng_old, a.batch)

    loops = {"new (device patches, no sync)": steps_of(trainer(True)),
             "new, RB unfused (2 upsampler passes)": steps_of(trainer(False)),
             "previous (numpy crops, sync/step)": old_steps}
    times: dict[str, list[float]] = {k: [] for k in loops}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for fn in loops.values():  # warm-up
        fn()
    for _ in range(a.rounds):
        for name, fn in loops.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) / a.steps)
    hr_px = a.batch * a.hr_patch ** 2
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{hw}: multi-scale LESRCNN-S, batch {a.batch}, HR patch {a.hr_patch}, {a.steps} steps x {a.rounds} rounds, "
          f"median step; new loop precision {opts.precision}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:<36} {v * 1000:8.1f} ms/step {1 / v:8.3f} steps/s {hr_px / v / 1e3:10.1f} HR kpx/s")
    new, unfused, prev = med.values()
    print(f"  speed-up against the previous loop: {prev / new:.2f}x; of the fused RB alone: {unfused / new:.2f}x")


if __name__ == "__main__":
    main()
