"""Video upscaling speed: frames per second of ``Upscaler.upscale_video`` and where the time goes.

A synthetic 640x360 clip (smooth patterns that move, a little grain, H.264 + AAC, 30 fps) is
upscaled x2 to 1280x720 (libx264, the default crf/preset) with the embedded weights, once per
configuration: the default backend in fp32, and ``--precision int8`` (printed as unavailable
where the installed backends cannot build it). For each: frames per second of the whole
pipeline (decode, colour conversion, inference, encode, segment files; model loading and the
final remux are reported apart), and the share of the pipeline's wall time spent outside the
network (the goal: under 10%, i.e. the decode/encode threads keep the network busy).

With a GPU: ``--device cuda --precision bf16 --size 1920x1080`` gives the 1080p -> 2160p figure.
Prints figures; not a test.

    python benchmarks/bench_video.py [--frames 30] [--size 640x360] [--precision fp32,int8]
                                     [--backend auto] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


def make_clip(path: Path, frames: int, w: int, h: int, fps: int = 30) -> Path:
    import av

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = out.add_stream("aac", rate=48000)
        for i in range(frames):
            img = np.stack([0.5 + 0.3 * np.sin(0.03 * (x + 4 * i) + c) * np.cos(0.05 * y - c)
                            for c in range(3)], 2)
            img[h // 3:h // 2, (20 + 8 * i) % w:(80 + 8 * i) % w or w] = 0.9
            img += rng.normal(0, 0.015, img.shape).astype(np.float32)
            f = av.VideoFrame.from_ndarray((np.clip(img, 0, 1) * 255).astype(np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(f.reformat(format="yuv420p")))
        out.mux(vs.encode(None))
        samples, pos = int(48000 * frames / fps), 0
        while pos < samples:
            k = min(1024, samples - pos)
            s = (0.2 * np.sin(np.arange(pos, pos + k) * 0.03)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([s, s]), format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = 48000, pos, Fraction(1, 48000)
            out.mux(a.encode(af))
            pos += k
        out.mux(a.encode(None))
    return path


def run(clip: Path, out: Path, precision: str, backend: str, device: str) -> str:
    from lesrcnn.errors import LesrcnnError
    from lesrcnn.upscale import Upscaler

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            up = Upscaler(2, device=device, precision=precision, backend=backend)
    except (LesrcnnError, ImportError, RuntimeError) as e:
        return f"{precision:>5}  unavailable: {str(e).splitlines()[0][:100]}"
    if up.precision != precision:
        return f"{precision:>5}  unavailable: ran as {up.precision} on {up.device.type}"
    load = time.perf_counter() - t0
    r = up.upscale_video(clip, out, overwrite=True, progress=False)
    fps = r.frames / r.wall_s
    outside = 1 - r.infer_seconds / r.wall_s
    network = r.frames / r.infer_seconds
    return (f"{precision:>5}  {up.backend:<9} {fps:8.3f} fps   network alone {network:8.3f} fps   "
            f"outside the network {100 * outside:5.1f}% of {r.wall_s:7.1f} s   "
            f"(model load {load:.1f} s, remux {r.seconds - r.wall_s:.1f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--size", default="640x360")
    p.add_argument("--precision", default="fp32,int8")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    w, h = (int(v) for v in a.size.lower().split("x"))
    print(f"video x2 {w}x{h} -> {2 * w}x{2 * h}, {a.frames} frames, libx264 (default crf/preset), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", a.frames, w, h)
        for precision in a.precision.split(","):
            print(run(clip, Path(tmp) / f"out_{precision}.mp4", precision, a.backend, a.device), flush=True)


if __name__ == "__main__":
    main()
