"""Training throughput: our loop's step vs a plain NCHW eager PyTorch step of the same network.

Both steps do the same work (forward, loss, backward, clip, Adam) on the same batches; they are
interleaved in one run so that machine noise hits both alike. Prints HR pixels per second.

    python benchmarks/bench_train.py [--scale 2] [--batch 16] [--patch 48] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from lesrcnn.model import build
from lesrcnn.train import PatchSampler, to_tensor


def step_fn(model, opt, channels_last: bool):
    def step(lr_np, hr_np):
        if channels_last:
            x, y = to_tensor(lr_np, torch.device("cpu")), to_tensor(hr_np, torch.device("cpu"))
        else:
            x = torch.from_numpy(lr_np).permute(0, 3, 1, 2).float().div(255).contiguous()
            y = torch.from_numpy(hr_np).permute(0, 3, 1, 2).float().div(255).contiguous()
        loss = F.l1_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=None, help="HR folder for the data-path measurement (optional)")
    a = ap.parse_args()
    torch.manual_seed(0)
    ours = build(a.scale).to(memory_format=torch.channels_last)
    ours.fuse_rb = True
    plain = build(a.scale)
    plain.fuse_rb = False
    steps = {"ours (channels-last, fused RB)": step_fn(ours, torch.optim.Adam(ours.parameters(), 1e-4), True),
             "plain NCHW eager": step_fn(plain, torch.optim.Adam(plain.parameters(), 1e-4), False)}
    rng = np.random.default_rng(0)
    s, p = a.scale, a.patch
    lr = rng.integers(0, 256, (a.batch, p, p, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (a.batch, p * s, p * s, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for name, fn in steps.items():  # warm-up
        fn(lr, hr)
    for _ in range(a.rounds):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn(lr, hr)
            times[name].append(time.perf_counter() - t)
    hr_px = a.batch * (p * s) ** 2
    print(f"x{s}, batch {a.batch}, LR patch {p}, {torch.get_num_threads()} threads, median of {a.rounds}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:<32} {v:7.3f} s/step  {hr_px / v / 1e6:6.3f} HR Mpx/s")
    names = list(med)
    print(f"  speed-up: {med[names[1]] / med[names[0]]:.2f}x")
    if a.data:
        sampler = PatchSampler([a.data], (s,), {s: p}, log=lambda *x: None)
        t = time.perf_counter()
        for _ in range(20):
            sampler.batch(rng, a.batch)
        d = (time.perf_counter() - t) / 20
        print(f"  data path: {d * 1000:.1f} ms/batch = {100 * d / med[names[0]]:.1f}% of a training step")


if __name__ == "__main__":
    main()
