"""Upscaling speed and memory: ``Upscaler`` against a plain NCHW eager forward of the same network.

1. Speed: a 512x512 -> 1024x1024 x2 job (uint8 image in, uint8 image out) through ``Upscaler``
   (channels-last, fused RB, inference mode, the fast CPU path, tiling and quantisation
   included) against the released code's way of running the same LESRCNN (contiguous NCHW
   float tensor, ``torch.no_grad``, the plain module), interleaved in one process
   so that machine noise hits both alike. Prints HR megapixels per second and the ratio.
2. Memory: the peak resident set size of a whole ``lesrcnn upscale`` job of a 2000x1500 PNG
   (-> 4000x3000) x2, run in a fresh subprocess (decode, model, tiles, encode, everything).

Weights: the interpolation initialisation of the multi-scale network (same cost as trained
weights). Prints figures; not a test. A few minutes on a laptop CPU.

    python benchmarks/bench_upscale.py [--rounds 4] [--size 512] [--rss-size 2000x1500] [--rss-tile N] [--no-rss]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lesrcnn import Upscaler
from lesrcnn import weights as W
from lesrcnn.model import build, init_interpolation


def make_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(0.05 * x + c) * np.cos(0.07 * y - c) for c in range(3)], axis=2)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def speed(weights: Path, size: int, rounds: int) -> None:
    img = make_image(size, size)
    up = Upscaler(scale=2, weights=str(weights), device="cpu")

    plain = W.load(str(weights)).model.eval()  # an independent copy, as the released code runs it (unfused RB)

    def ours() -> np.ndarray:
        return up.upscale(img)

    def eager() -> torch.Tensor:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).contiguous()
        with torch.no_grad():
            return plain(x, 2).mul(255).clamp(0, 255).byte()

    a, b = ours(), eager()  # warm-up (also checks that both compute the same image)
    diff = np.abs(a.astype(int) - b[0].permute(1, 2, 0).numpy().astype(int)).max()
    times: dict[str, list[float]] = {"Upscaler": [], "plain NCHW eager": []}
    for _ in range(rounds):
        for name, fn in (("Upscaler", ours), ("plain NCHW eager", eager)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    hr_mp = (2 * size) ** 2 / 1e6
    print(f"speed: {size}x{size} -> {2 * size}x{2 * size} x2, {rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads, tile {up.tile} (auto), max |diff| {diff} (8-bit levels)")
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    for name in times:
        print(f"  {name:<18} median {med[name]:6.2f} s = {hr_mp / med[name]:6.3f} HR MP/s, best {best[name]:6.2f} s = "
              f"{hr_mp / best[name]:6.3f} HR MP/s   (runs: {', '.join(f'{x:.2f}' for x in times[name])})")
    print(f"  speed-up           median {med['plain NCHW eager'] / med['Upscaler']:.2f}x, "
          f"best {best['plain NCHW eager'] / best['Upscaler']:.2f}x (best-of-runs is the fairer figure on a busy machine)")


def rss_job(weights: Path, h: int, w: int, tile: int | None = None) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.png", Path(d) / "out.png"
        Image.fromarray(make_image(h, w, seed=1)).save(src)
        cmd = [sys.executable, "-m", "lesrcnn", "upscale", str(src), "-o", str(dst), "-s", "2", "--weights",
               str(weights), "-q"] + ([] if tile is None else ["--tile", str(tile)])
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        if r.returncode != 0:
            print(f"memory: the job failed: {r.stderr.strip()}")
            return
        with Image.open(dst) as im:
            out = im.size
    note = "" if peak_kib > before else " (a previous child had a higher peak; figure is an upper bound)"
    if platform.system() == "Darwin":
        peak_kib //= 1024  # bytes there
    in_mb, out_mb = h * w * 3 / 2**20, out[0] * out[1] * 3 / 2**20
    print(f"memory: `lesrcnn upscale` {w}x{h} -> {out[0]}x{out[1]} x2 PNG, tile {tile or 'auto'}, in a subprocess: peak RSS "
          f"{peak_kib / 1024:.0f} MiB, {dt:.1f} s wall{note}")
    print(f"  (uint8 input {in_mb:.0f} MiB, uint8 output {out_mb:.0f} MiB; the rest is torch, the model, "
          f"one batch of tile activations and the PNG encoder)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="LR side of the speed job (default 512)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rss-size", default="2000x1500", help="LR WxH of the memory job (default 2000x1500)")
    ap.add_argument("--rss-tile", type=int, help="--tile for the memory job (default: automatic)")
    ap.add_argument("--no-rss", action="store_true", help="skip the memory job")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    a = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        weights = W.save(init_interpolation(build("multi")), Path(d) / "interp.safetensors")
        if not a.no_speed:
            speed(weights, a.size, a.rounds)
        if not a.no_rss:
            w, h = (int(v) for v in a.rss_size.lower().split("x"))
            rss_job(weights, h, w, a.rss_tile)


if __name__ == "__main__":
    main()
