"""``lesrcnn bench``: inference speed of every installed CPU backend on this machine, side by side.

Timed runs of all backends are interleaved in one process (machine noise hits them alike), on the
same weights, beside the fp32 GEMM peak measured in the same run on the same threads. GFLOP/s
counts the released network's FLOPs, so exact savings such as the fused RB show as speed. Then the
whole-file ``upscale`` of a 1920x1080 JPEG at x2. Developer benchmarks (the CUDA rows among them)
live in ``benchmarks/``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import LesrcnnError, first_line

BACKENDS = ["eager-nchw", "torch", "torch-compile", "onnx", "openvino", "onnx-int8", "openvino-int8"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gemm_peak(n: int = 3072, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n x n matrix multiply on torch's threads: the better of MKL and
    oneDNN, the library of our convolutions (MKL is slow on AMD)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    calls = [functools.partial(torch.mm, a, b)]
    if torch.backends.mkldnn.is_available():
        bt = b.t().contiguous().to_mkldnn()
        calls.append(functools.partial(torch._C._nn.mkldnn_linear, a.to_mkldnn(), bt, None))
    best = float("inf")
    for f in calls:
        f()  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def lr_size(size: int, scale: int) -> int:
    return max(1, round(size / scale))


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak RSS in MB (Linux's VmHWM); ``reset`` first restarts it from the current
    RSS, so that the next call gives the peak of what ran in between."""
    if reset:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0.0


def make_runner(backend: str, model, scale: int, lr: int, threads: int):
    """A no-argument callable that super-resolves one 1 x 3 x lr x lr image."""
    import copy

    import numpy as np
    import torch

    from .backends import create
    from .model import fuse_rb
    from .upscale import prepare

    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, lr, lr), dtype=np.float32))
    if backend == "eager-nchw":  # the released code's way: plain NCHW module, unfused RB
        return torch.no_grad()(functools.partial(copy.deepcopy(model).float().eval(), x, scale))
    if backend == "torch-compile":
        compiled = torch.compile(prepare(fuse_rb(model), "cpu"), dynamic=False)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.inference_mode()(functools.partial(compiled, x, scale))
    if backend not in BACKENDS:
        raise LesrcnnError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    name, _, int8 = backend.partition("-")  # the engine `upscale --backend NAME [--precision int8]` runs
    engine = create(model, name, "int8" if int8 else "fp32", "cpu", threads, (scale,))
    return functools.partial(engine, x, scale)


def _interleaved(model, s: int, size: int, backends: list[str], info: dict, repeat: int, warmup: int,
                 gemm_n: int) -> list[dict]:
    """The rows of one scale and size; the GEMM peak is measured between their runs."""
    from .complexity import macs

    lr = lr_size(size, s)
    runners = {}
    for b in backends:
        _log(f"bench: x{s} {lr * s}px preparing {b} ...")
        try:
            run = make_runner(b, model, s, lr, info["threads"])
            for _ in range(max(1, warmup) if b == "torch-compile" else warmup):  # compiles on the first call
                run()
            runners[b] = run
        except Exception as e:  # a backend that cannot run here is reported, the others go on
            _log(f"bench: x{s} {lr * s}px {b}: not measured ({first_line(e)[:200]})")
    times: dict[str, list[float]] = {b: [] for b in runners}
    rss = dict.fromkeys(runners, 0.0)
    peak = 0.0
    for _ in range(repeat):
        peak = max(peak, gemm_peak(gemm_n, reps=2))
        for b, run in runners.items():
            peak_rss_mb(reset=True)
            t = time.perf_counter()
            run()
            times[b].append(time.perf_counter() - t)
            rss[b] = max(rss[b], peak_rss_mb())
    info["peak_gflops"] = max(info["peak_gflops"], peak)
    rows = []
    for b, ts in times.items():
        t = statistics.median(ts)
        gflops = 2 * macs(s, lr, lr) / t / 1e9
        rows.append({"backend": b, "scale": s, "size": size, "lr": [lr, lr], "hr": [lr * s, lr * s],
                     "seconds": t, "seconds_min": min(ts), "runs": len(ts),
                     "mpx_per_s": (lr * s) ** 2 / 1e6 / t, "gflops": gflops, "peak_gflops": peak,
                     "peak_fraction": gflops / peak, "peak_rss_mb": round(rss[b], 1),
                     "threads": info["threads"]})
        _log(f"bench: x{s} {lr * s}px {b:<13} {t:.4f} s  {gflops:.0f} GFLOP/s")
    return rows


def whole_file(weights: str | None, threads: int, size: tuple[int, int] = (1920, 1080),
               scale: int = 2) -> dict:
    """``upscale`` of one synthetic photo-like JPEG with the default backend: seconds of start-up,
    decode, upscale (of which the network), encode, and the process's peak RSS during the job."""
    import numpy as np
    from PIL import Image

    from .io import read_picture, write_picture
    from .upscale import Upscaler

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(xx / (23 + 9 * c)) * np.cos(yy / (17 + 5 * c)) for c in range(3)], 2)
    img[((xx // 97 + yy // 61) % 2) == 0] *= 0.7
    img = np.clip(img * 255 + np.random.default_rng(0).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="lesrcnn-bench-") as d:
        src, dst = Path(d, "in.jpg"), Path(d, "out.jpg")
        Image.fromarray(img).save(src, quality=92)
        t0 = time.perf_counter()
        up = Upscaler(scale, weights, device="cpu", threads=threads)
        marks: list[float] = []  # start, end, start, ... of each engine call: the network alone
        up.engine.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter()))
        up.engine.register_forward_hook(lambda *_: marks.append(time.perf_counter()))
        peak_rss_mb(reset=True)
        t1 = time.perf_counter()
        pic = read_picture(src)
        t2 = time.perf_counter()
        out = up.upscale_picture(pic)
        t3 = time.perf_counter()
        write_picture(out, dst, "JPEG")
        t4 = time.perf_counter()
    network_s = sum(marks[1::2]) - sum(marks[::2])
    return {"input": f"{w}x{h} JPEG", "output": f"{w * scale}x{h * scale} JPEG", "backend": up.backend,
            "tile": up.tile, "startup_s": t1 - t0, "decode_s": t2 - t1, "upscale_s": t3 - t2,
            "network_s": network_s, "encode_s": t4 - t3, "wall_s": t4 - t1,
            "network_share": network_s / (t4 - t1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def format_table(rows: list[dict], info: dict, auto: list[str], job: dict | None = None) -> str:
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "onnxruntime", "openvino") if k in info)
    lines = [f"# {info['cpu']}, {info['threads']} thread(s); lesrcnn {info['lesrcnn']}, {versions}",
             f"# GEMM peak GFLOP/s (same run; fp32, best of MKL and oneDNN between the rows): "
             f"{info['peak_gflops']:.0f}",
             "# one process, backends interleaved run by run; seconds: median per image after warm-up; "
             "GFLOP/s: FLOPs of the released network / time; peak%: of the GEMM peak; RSS: the whole process",
             f"{'backend':<14} {'scale':>5} {'HR size':>9} {'seconds':>8} {'MP/s':>7} {'GFLOP/s':>8} "
             f"{'peak%':>6} {'vs eager':>8} {'vs torch':>8} {'RSS MB':>7}"]
    base = {(r["scale"], r["size"], r["backend"]): r["seconds"] for r in rows}
    for r in rows:
        vs = [base.get((r["scale"], r["size"], b)) for b in ("eager-nchw", "torch")]
        vs = [f"{t / r['seconds']:.2f}x" if t else "-" for t in vs]
        lines.append(f"{r['backend']:<14} {'x' + str(r['scale']):>5} {r['hr'][0]:>4}x{r['hr'][1]:<4} "
                     f"{r['seconds']:>8.4f} {r['mpx_per_s']:>7.3f} {r['gflops']:>8.1f} "
                     f"{r['peak_fraction']:>6.1%} {vs[0]:>8} {vs[1]:>8} {r['peak_rss_mb']:>7.0f}")
    lines += auto
    if job:
        lines.append(f"upscale {job['input']} -> {job['output']} ({job['backend']}, tile {job['tile']}): "
                     f"{job['wall_s']:.2f} s after a {job['startup_s']:.2f} s start-up = decode "
                     f"{job['decode_s']:.2f} s + upscale {job['upscale_s']:.2f} s (network "
                     f"{job['network_s']:.2f} s) + encode {job['encode_s']:.2f} s; network "
                     f"{job['network_share']:.1%} of the wall time; peak RSS {job['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def _csv(allowed, what: str, convert=int):
    """An argparse type: comma-separated values in ``allowed`` (``what`` names them), repeats dropped."""
    def parse(text: str) -> list:
        try:
            vals = list(dict.fromkeys(convert(v.strip()) for v in text.split(",") if v.strip()))
        except ValueError:
            vals = [text]
        bad = [v for v in vals if v not in allowed] or ([] if vals else ["(empty)"])
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(str, bad))}: {what} expected")
        return vals
    return parse


def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import number

    p = sub.add_parser("bench", description="Inference speed of every installed CPU backend beside the "
                       "machine's fp32 GEMM peak, and the whole-file upscale of a 1920x1080 JPEG.")
    p.add_argument("--weights", help="checkpoint (default: the embedded weights)")
    p.add_argument("--scales", type=_csv((2, 3, 4), "2, 3 or 4"), default="2", help="comma-separated scales")
    p.add_argument("--sizes", type=_csv(range(1, 1 << 20), "positive integers"), default="512",
                   help="HR output sizes, comma-separated (Table 8: 256,512,1024)")
    p.add_argument("--backends", type=_csv(BACKENDS, ", ".join(BACKENDS), str), default=",".join(BACKENDS),
                   help="comma-separated subset")
    p.add_argument("--repeat", type=number(1), default=5, help="timed runs per backend (median reported)")
    p.add_argument("--warmup", type=number(0), default=1, help="untimed runs first")
    p.add_argument("-j", "--threads", type=number(1), help="CPU threads (default: torch's default)")
    p.add_argument("--gemm-size", type=number(64), default=3072, help="n of the n x n x n peak GEMM")
    p.add_argument("--no-file", action="store_true", help="skip the whole-file upscale of a 1920x1080 JPEG")
    p.add_argument("--json", action="store_true", help="print JSON (rows, machine, auto, whole-file job)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(a) -> int:
    """Every backend of ``--backends`` at every scale and HR size, interleaved, then the whole file."""
    import torch

    from . import __version__
    from . import weights as W
    from .upscale import tune_cpu_allocator
    from .weights_cli import backends_info

    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tune_cpu_allocator()  # process-wide: every row runs with it
    ck = W.load(a.weights, *a.scales)
    info = {"cpu": cpu_name(), "threads": threads, "lesrcnn": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "peak_gflops": 0.0}
    for dist in ("onnxruntime", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    rows = [row for s in a.scales for size in a.sizes
            for row in _interleaved(ck.model, s, size, a.backends, info, a.repeat, a.warmup, a.gemm_size)]
    job = None if a.no_file else whole_file(a.weights, threads)
    auto = [f"auto ({prec}, cpu) picks {v['picks'] or 'nothing'}: {v['rule']}"  # as `lesrcnn info --backends`
            for prec, v in backends_info()["auto"].items()]
    if a.json:
        print(json.dumps({"rows": rows, "machine": info, "auto": auto, "whole_file": job}, indent=2))
    else:
        print(format_table(rows, info, auto, job))
    return 0
