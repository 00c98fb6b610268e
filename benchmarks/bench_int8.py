"""INT8 vs fp32 speed in OpenVINO, side by side in one interleaved run (ratios to fp32).

Usage: python benchmarks/bench_int8.py [--scales 2,3,4] [--size 256] [--threads 2] [--repeats 7]
           [--extra NAME=FILE.onnx ...]

Candidates: fp32 (the default backend's graph), ``int8`` (what ``--precision int8`` runs for the
embedded weights, :func:`lesrcnn.backends.int8_onnx`) and any ``--extra`` ONNX files (e.g. a
whole-network INT8 model for comparison). Each repeat runs every candidate once in turn, so a
busy shared machine slows them alike; prints the median seconds and the speed-up over fp32.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lesrcnn import backends as BK  # noqa: E402
from lesrcnn import weights as W  # noqa: E402
from lesrcnn.export import INT8_RECIPE, to_onnx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--extra", action="append", default=[], help="NAME=FILE.onnx (x2 only)")
    a = ap.parse_args()
    ck = W.load(None)
    x = np.random.default_rng(0).random((1, 3, a.size, a.size), dtype=np.float32)
    print(f"# OpenVINO, {a.size}x{a.size} LR, {a.threads} threads, median of {a.repeats} interleaved runs; "
          f"int8 = recipe {INT8_RECIPE}")
    for s in [int(v) for v in a.scales.split(",")]:
        runs = {"fp32": BK.openvino_runner(to_onnx(ck.model, s).SerializeToString(), a.threads),
                "int8": BK.openvino_runner(BK.int8_onnx(ck.model, s, progress=False), a.threads)}
        for e in a.extra if s == 2 else []:
            name, path = e.split("=", 1)
            runs[name] = BK.openvino_runner(Path(path).read_bytes(), a.threads)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.repeats + 1):  # the first round warms up
            for k, run in runs.items():
                t = time.perf_counter()
                run(x)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        print("  ".join(f"x{s} {k}: {m * 1000:.0f} ms ({med['fp32'] / m:.2f}x)" for k, m in med.items()), flush=True)


if __name__ == "__main__":
    main()
