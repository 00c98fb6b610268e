"""``lesrcnn bench``: inference speed of every installed backend on this machine, side by side.

Timed runs of all backends are interleaved in one process (machine noise hits them alike), on the
same weights, beside the fp32 GEMM peak measured in the same run on the same threads. GFLOP/s
counts the released network's FLOPs, so exact savings such as the fused RB show as speed. Then the
whole-file ``upscale`` of a 1920x1080 JPEG at x2. Developer benchmarks live in ``benchmarks/``.
"""
from __future__ import annotations

import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import LesrcnnError, first_line

CPU_BACKENDS = ["eager-nchw", "torch", "torch-compile", "onnx", "openvino", "onnx-int8", "openvino-int8"]
GPU_BACKENDS = ["cuda-fp32", "cuda-bf16", "cuda-fp16"]
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS


def gemm_peak(device: str = "cpu", dtype: str = "fp32", n: int | None = None, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matrix multiply on torch's threads: on the CPU the better of
    MKL and oneDNN, the library of our convolutions (MKL is slow on AMD); cuBLAS, TF32 off."""
    import torch

    dev = torch.device(device)
    n = n or (3072 if dev.type == "cpu" else 8192)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a, b = torch.randn(n, n, device=dev).to(dt), torch.randn(n, n, device=dev).to(dt)
    calls = [lambda: torch.mm(a, b)]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    elif dt == torch.float32 and torch.backends.mkldnn.is_available():
        am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        calls.append(lambda: torch._C._nn.mkldnn_linear(am, bm, None))
    best = float("inf")
    for f in calls:
        for i in range(reps + 1):
            t = time.perf_counter()
            f()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run is a warm-up
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
    """A no-argument callable that super-resolves one 1 x 3 x lr x lr image (synchronised)."""
    import copy

    import numpy as np
    import torch

    from . import backends as BK
    from .model import fuse_rb
    from .upscale import prepare

    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, lr, lr), dtype=np.float32))
    if backend == "eager-nchw":  # the released code's way: plain NCHW module, unfused RB
        m = copy.deepcopy(model).float().eval()
        return torch.no_grad()(lambda: m(x, scale))
    if backend == "torch":
        engine = BK.TorchEngine(model, torch.device("cpu"))
        return lambda: engine(x, scale)
    if backend in ("onnx", "openvino", "onnx-int8", "openvino-int8"):
        name, _, int8 = backend.partition("-")
        why = BK.installed(name)
        if why:
            raise LesrcnnError(why)
        if int8:
            src = BK.int8_onnx(model, scale)
        else:
            from .export import to_onnx

            src = to_onnx(model, scale).SerializeToString()
        run = BK.ort_runner(src, threads, spin=False) if name == "onnx" else BK.openvino_runner(src, threads)
        return lambda: run(x.numpy())
    if backend not in ("torch-compile", *GPU_BACKENDS):
        raise LesrcnnError(f"unknown backend {backend!r}; choose from {', '.join(ALL_BACKENDS)}")
    dev = "cpu" if backend == "torch-compile" else "cuda"
    if dev == "cuda":  # run_bench has checked that there is one
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.benchmark = True
    dt = {"cuda-bf16": torch.bfloat16, "cuda-fp16": torch.float16}.get(backend, torch.float32)
    m = prepare(fuse_rb(model), dev, dt)
    m = torch.compile(m, dynamic=False) if dev == "cpu" else m
    xd = x.to(dev, dt).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run_fused():
        y = m(xd, scale)
        if dev == "cuda":
            torch.cuda.synchronize()
        return y
    return run_fused


def run_bench(scales: list[int], sizes: list[int], backends: list[str], weights: str | None = None,
              repeat: int = 5, warmup: int = 1, threads: int | None = None, log=None,
              gemm_n: int | None = None) -> tuple[list[dict], dict]:
    """Every backend of ``backends`` at every scale and HR size, interleaved; (rows, machine info)."""
    import torch

    from . import __version__
    from . import weights as W
    from .upscale import tune_cpu_allocator

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tune_cpu_allocator()  # process-wide: every CPU row runs with it
    if not torch.cuda.is_available() and set(backends) & set(GPU_BACKENDS):
        log("bench: no CUDA device: the cuda rows are not measured")
        backends = [b for b in backends if b not in GPU_BACKENDS]
    if not backends:
        raise LesrcnnError("no backend to run")
    ck = W.load(weights)
    for s in scales:
        ck.require_scale(s)
    info = {"cpu": cpu_name(), "threads": threads, "lesrcnn": __version__, "torch": torch.__version__,
            "python": platform.python_version()}
    for dist in ("onnxruntime", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    gpu_peaks = {b: gemm_peak("cuda", b.split("-")[1]) for b in GPU_BACKENDS if b in backends}
    if gpu_peaks:
        info["gpu"] = torch.cuda.get_device_name()
    info["peaks_gflops"] = {"cpu": 0.0, **gpu_peaks}
    rows = [row for s in scales for size in sizes
            for row in _interleaved(ck.model, s, size, backends, gpu_peaks, info, repeat, warmup, gemm_n,
                                    log)]
    return rows, info


def _interleaved(model, s, size, backends, gpu_peaks, info, repeat, warmup, gemm_n, log) -> list[dict]:
    """The rows of one scale and size; the CPU GEMM peak is measured between their runs."""
    from .complexity import macs

    lr = lr_size(size, s)
    runners = {}
    for b in backends:
        log(f"bench: x{s} {lr * s}px preparing {b} ...")
        try:
            run = make_runner(b, model, s, lr, info["threads"])
            for _ in range(max(1, warmup) if b == "torch-compile" else warmup):
                run()
            runners[b] = run
        except Exception as e:  # a backend that cannot run here is reported, the others go on
            log(f"bench: x{s} {lr * s}px {b}: not measured ({first_line(e)[:200]})")
    times: dict[str, list[float]] = {b: [] for b in runners}
    rss = dict.fromkeys(runners, 0.0)
    cpu_peak = 0.0
    for _ in range(repeat):
        cpu_peak = max(cpu_peak, gemm_peak("cpu", n=gemm_n, reps=2))
        for b, run in runners.items():
            peak_rss_mb(reset=True)
            t = time.perf_counter()
            run()
            times[b].append(time.perf_counter() - t)
            rss[b] = max(rss[b], peak_rss_mb())
    info["peaks_gflops"]["cpu"] = max(info["peaks_gflops"]["cpu"], cpu_peak)
    rows = []
    for b, ts in times.items():
        t, peak = statistics.median(ts), gpu_peaks.get(b) or cpu_peak
        gflops = 2 * macs(s, lr, lr) / t / 1e9
        rows.append({"backend": b, "scale": s, "size": size, "lr": [lr, lr], "hr": [lr * s, lr * s],
                     "seconds": t, "seconds_min": min(ts), "runs": len(ts),
                     "mpx_per_s": (lr * s) ** 2 / 1e6 / t, "gflops": gflops, "peak_gflops": peak,
                     "peak_fraction": gflops / peak, "peak_rss_mb": round(rss[b], 1),
                     "threads": info["threads"], "device": "cuda" if b in GPU_BACKENDS else "cpu"})
        log(f"bench: x{s} {lr * s}px {b:<13} {t:.4f} s  {gflops:.0f} GFLOP/s")
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
    network_s = 0.0
    with tempfile.TemporaryDirectory(prefix="lesrcnn-bench-") as d:
        src, dst = Path(d, "in.jpg"), Path(d, "out.jpg")
        Image.fromarray(img).save(src, quality=92)
        t0 = time.perf_counter()
        up = Upscaler(scale, weights, device="cpu", threads=threads)
        forward = up._forward_once

        def timed(x):  # the network alone, without tiling, copies and quantisation
            nonlocal network_s
            t = time.perf_counter()
            y = forward(x)
            network_s += time.perf_counter() - t
            return y

        up._forward_once = timed
        peak_rss_mb(reset=True)
        t1 = time.perf_counter()
        pic = read_picture(src)
        t2 = time.perf_counter()
        out = up.upscale_picture(pic)
        t3 = time.perf_counter()
        write_picture(out, dst, "JPEG")
        t4 = time.perf_counter()
    return {"input": f"{w}x{h} JPEG", "output": f"{w * scale}x{h * scale} JPEG", "backend": up.backend,
            "tile": up.tile, "startup_s": t1 - t0, "decode_s": t2 - t1, "upscale_s": t3 - t2,
            "network_s": network_s, "encode_s": t4 - t3, "wall_s": t4 - t1,
            "network_share": network_s / (t4 - t1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def format_table(rows: list[dict], info: dict, auto: list[str] | None = None, job: dict | None = None) -> str:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in info["peaks_gflops"].items())
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "onnxruntime", "openvino") if k in info)
    gpu = f"; GPU {info['gpu']}" if "gpu" in info else ""
    lines = [f"# {info['cpu']}, {info['threads']} thread(s); lesrcnn {info['lesrcnn']}, {versions}{gpu}",
             f"# GEMM peak GFLOP/s (same run; cpu: fp32, best of MKL and oneDNN between the rows): {peaks}",
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
    lines += auto or []
    if job:
        lines.append(f"upscale {job['input']} -> {job['output']} ({job['backend']}, tile {job['tile']}): "
                     f"{job['wall_s']:.2f} s after a {job['startup_s']:.2f} s start-up = decode "
                     f"{job['decode_s']:.2f} s + upscale {job['upscale_s']:.2f} s (network "
                     f"{job['network_s']:.2f} s) + encode {job['encode_s']:.2f} s; network "
                     f"{job['network_share']:.1%} of the wall time; peak RSS {job['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def auto_lines() -> list[str]:
    """What ``--backend auto`` picks on this machine and why."""
    from .backends import auto_report

    out = []
    for prec in ("fp32", "int8"):
        rep = auto_report(prec)
        picked = next((n for n, st in rep if st == "picked"), "nothing")
        why = "; ".join(f"{n}: {st}" for n, st in rep)
        out.append(f"auto ({prec}, cpu) picks {picked}: first installed of its rule ({why})")
    return out


def _int_list(text: str, what: str, allowed: set[int] | None = None) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise LesrcnnError(f"--{what}: comma-separated integers expected, got {text!r}") from None
    if not vals:
        raise LesrcnnError(f"--{what}: empty")
    for v in vals:
        if (allowed and v not in allowed) or v < 1:
            raise LesrcnnError(f"--{what}: invalid value {v}")
    return list(dict.fromkeys(vals))


def add_parser(sub):
    import argparse

    p = sub.add_parser("bench", help="inference speed of every installed backend vs the machine's fp32 peak",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", help="checkpoint (default: the embedded weights)")
    p.add_argument("--scales", default="2", help="comma-separated scales")
    p.add_argument("--sizes", default="512", help="HR output sizes, comma-separated (Table 8: 256,512,1024)")
    p.add_argument("--backends", help=f"comma-separated subset of {','.join(ALL_BACKENDS)} (default: all)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per backend (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("-j", "--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--gemm-size", type=int, default=3072, help="n of the n x n x n peak GEMM")
    p.add_argument("--no-file", action="store_true", help="skip the whole-file upscale of a 1920x1080 JPEG")
    p.add_argument("--json", action="store_true", help="print JSON (rows, machine, auto, whole-file job)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(a) -> int:
    scales = _int_list(a.scales, "scales", {2, 3, 4})
    sizes = _int_list(a.sizes, "sizes")
    backends = [b.strip() for b in (a.backends or ",".join(ALL_BACKENDS)).split(",") if b.strip()]
    bad = [b for b in backends if b not in ALL_BACKENDS]
    if bad:
        raise LesrcnnError(f"--backends: unknown {', '.join(bad)}; choose from {', '.join(ALL_BACKENDS)}")
    if a.repeat < 1 or a.warmup < 0 or (a.threads or 1) < 1 or a.gemm_size < 64:
        raise LesrcnnError("--repeat and --threads must be >= 1, --warmup >= 0 and --gemm-size >= 64")
    rows, info = run_bench(scales, sizes, backends, a.weights, a.repeat, a.warmup, a.threads,
                           gemm_n=a.gemm_size)
    job = None if a.no_file else whole_file(a.weights, info["threads"])
    if a.json:
        print(json.dumps({"rows": rows, "machine": info, "auto": auto_lines(), "whole_file": job}, indent=2))
    else:
        print(format_table(rows, info, auto_lines(), job))
    return 0
