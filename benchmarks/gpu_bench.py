"""CUDA rows beside the paper's Table 8: the fused network (channels-last) in fp32 (TF32 off), bf16
and fp16, device-synchronised, input on the device, beside the cuBLAS GEMM peak of each dtype
measured in the same run. Developer benchmark: `lesrcnn bench` covers the CPU backends.

Usage: python benchmarks/gpu_bench.py [--scales 2,3,4] [--sizes 256,512,1024] [--repeat 20]
       [--warmup 5] [--weights W]   (prints a JSON list of rows, one per backend, scale and size)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lesrcnn import weights as W  # noqa: E402
from lesrcnn.bench import lr_size  # noqa: E402
from lesrcnn.complexity import macs  # noqa: E402
from lesrcnn.model import fuse_rb  # noqa: E402
from lesrcnn.upscale import prepare  # noqa: E402

DTYPES = {"cuda-fp32": torch.float32, "cuda-bf16": torch.bfloat16, "cuda-fp16": torch.float16}


def seconds(f, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def gemm_peak(dtype: torch.dtype, n: int = 8192) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    seconds(lambda: torch.mm(a, b), 1)
    return 2 * n**3 / min(seconds(lambda: torch.mm(a, b), 5)) / 1e9


def make_runner(model, dtype: torch.dtype, scale: int, lr: int):
    """The module as ``Upscaler`` runs it on a GPU (fused RB, channels-last), one 1 x 3 x lr x lr image."""
    m = prepare(fuse_rb(model), "cuda", dtype)
    x = np.random.default_rng(0).random((1, 3, lr, lr), dtype=np.float32)  # the CPU rows' input
    x = torch.from_numpy(x).to("cuda", dtype).contiguous(memory_format=torch.channels_last)
    return torch.inference_mode()(lambda: m(x, scale))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.benchmark = True
    model = W.load(a.weights).model
    peaks = {b: gemm_peak(dt) for b, dt in DTYPES.items()}
    rows = []
    for s in map(int, a.scales.split(",")):
        for size in map(int, a.sizes.split(",")):
            lr = lr_size(size, s)
            for b, dt in DTYPES.items():
                run = make_runner(model, dt, s, lr)
                seconds(run, a.warmup)
                torch.cuda.reset_peak_memory_stats()
                ts = seconds(run, a.repeat)
                t = statistics.median(ts)
                gflops = 2 * macs(s, lr, lr) / t / 1e9
                rows.append({"backend": b, "scale": s, "size": size, "lr": [lr, lr], "hr": [lr * s, lr * s],
                             "seconds": t, "seconds_min": min(ts), "runs": len(ts),
                             "mpx_per_s": (lr * s) ** 2 / 1e6 / t, "gflops": gflops, "peak_gflops": peaks[b],
                             "peak_fraction": gflops / peaks[b],
                             "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
                             "gpu": torch.cuda.get_device_name()})
                print(f"{b} x{s} {size}px {t:.5f} s", file=sys.stderr)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
