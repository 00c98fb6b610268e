"""``lesrcnn bench``: inference speed of every installed backend on this machine, side by side.

All backends run in one process, their timed runs interleaved (machine noise hits them alike),
on the same weights (default: the embedded ones), beside the fp32 GEMM peak measured in the
same run on the same threads. Rows: ``eager-nchw`` (the released code's way: plain NCHW
module, unfused RB), ``torch`` (our fused oneDNN path), ``torch-compile`` (inductor, where a
compiler is available), ``onnx`` / ``openvino`` (the exported graph in ONNX Runtime / OpenVINO)
and their ``-int8`` rows (the INT8 model ``--precision int8`` runs), and with a GPU
``cuda-fp32`` (TF32 off), ``cuda-bf16``, ``cuda-fp16``. GFLOP/s counts the released network's
FLOPs (``complexity.macs``), so exact savings such as the fused RB show as speed. Then the
whole-file time of ``upscale`` (decode, inference, encode) of a 1920x1080 JPEG at x2 with the
default (``auto``) backend. Developer benchmarks live in ``benchmarks/``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import LesrcnnError

CPU_BACKENDS = ["eager-nchw", "torch", "torch-compile", "onnx", "openvino", "onnx-int8", "openvino-int8"]
GPU_BACKENDS = ["cuda-fp32", "cuda-bf16", "cuda-fp16"]
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS


# --- peaks -------------------------------------------------------------------------------------

def gemm_peaks(device: str = "cpu", dtype: str = "fp32", n: int | None = None, reps: int = 5) -> dict[str, float]:
    """Best GFLOP/s of an n x n x n matrix multiply per library, on the threads torch uses.

    CPU: MKL (``torch.mm``) and oneDNN (``mkldnn_linear``, the library of our convolutions);
    MKL takes a slower path on AMD processors, so the best of the two is the peak. CUDA:
    cuBLAS in the given dtype, TF32 off."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    n = n or (3072 if device == "cpu" else 8192)
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev).to(dt), torch.randn(n, n, device=dev).to(dt)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cands = {"cublas" if dev.type == "cuda" else "mkl": lambda: torch.mm(a, b)}
    if dev.type == "cpu" and dt == torch.float32 and torch.backends.mkldnn.is_available():
        try:
            am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            torch._C._nn.mkldnn_linear(am, bm, None)
            cands["onednn"] = lambda: torch._C._nn.mkldnn_linear(am, bm, None)
        except (RuntimeError, AttributeError):
            pass
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for name, f in cands.items():
        f()
        sync()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            f()
            sync()
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * n**3 / best / 1e9
    return out


def gemm_peak(device: str = "cpu", dtype: str = "fp32", n: int | None = None, reps: int = 5) -> float:
    return max(gemm_peaks(device, dtype, n, reps).values())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lr_size(size: int, scale: int) -> int:
    return max(1, round(size / scale))


class RssSampler:
    """Peak RSS (MB) of this process while a block runs (sampled from /proc/self/statm)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page / 2**20
        except OSError:
            return 0.0

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._rss()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


# --- one backend -------------------------------------------------------------------------------

def make_runner(backend: str, model, scale: int, lr: int, threads: int):
    """A no-argument callable that super-resolves one prepared 1 x 3 x lr x lr image (synchronised)."""
    import copy

    import numpy as np
    import torch

    from . import backends as BK
    from .model import fuse_rb
    from .upscale import prepare

    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, lr, lr), dtype=np.float32))
    if backend == "eager-nchw":
        m = copy.deepcopy(model).float().eval()
        return torch.no_grad()(lambda: m(x, scale))
    if backend == "torch":
        engine = BK.TorchEngine(model, torch.device("cpu"))
        return lambda: engine(x, scale)
    if backend == "torch-compile":
        m = torch.compile(prepare(fuse_rb(model), "cpu"), dynamic=False)
        xc = x.contiguous(memory_format=torch.channels_last)
        return torch.inference_mode()(lambda: m(xc, scale))
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
        xn = x.numpy()
        return lambda: run(xn)
    if backend in GPU_BACKENDS:
        if not torch.cuda.is_available():
            raise LesrcnnError(f"{backend}: no CUDA device")
        dt = {"cuda-fp32": torch.float32, "cuda-bf16": torch.bfloat16, "cuda-fp16": torch.float16}[backend]
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.benchmark = True
        m = prepare(fuse_rb(model), "cuda", dt)
        xd = x.to("cuda", dt).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                y = m(xd, scale)
            torch.cuda.synchronize()
            return y
        return run
    raise LesrcnnError(f"unknown backend {backend!r}; choose from {', '.join(ALL_BACKENDS)}")


def _row(backend: str, scale: int, size: int, lr: int, times: list[float], peak: float, threads: int,
         rss: float) -> dict:
    from .complexity import macs

    t = statistics.median(times)
    gflops = 2 * macs(scale, lr, lr) / t / 1e9
    return {"backend": backend, "scale": scale, "size": size, "lr": [lr, lr], "hr": [lr * scale, lr * scale],
            "seconds": t, "seconds_min": min(times), "runs": len(times), "mpx_per_s": (lr * scale) ** 2 / 1e6 / t,
            "gflops": gflops, "peak_gflops": peak, "peak_fraction": gflops / peak, "peak_rss_mb": round(rss, 1),
            "threads": threads, "device": "cuda" if backend in GPU_BACKENDS else "cpu"}


# --- the whole benchmark -----------------------------------------------------------------------

def run_bench(scales: list[int], sizes: list[int], backends: list[str], weights: str | None = None,
              repeat: int = 5, warmup: int = 1, threads: int | None = None, log=None,
              gemm_n: int | None = None) -> tuple[list[dict], dict]:
    """Every backend of ``backends`` at every scale and HR size, interleaved; (rows, machine info)."""
    import torch

    from . import weights as W
    from .upscale import tune_cpu_allocator

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tune_cpu_allocator()  # process-wide: every CPU row runs with it
    if not torch.cuda.is_available() and any(b in GPU_BACKENDS for b in backends):
        log("bench: no CUDA device: the cuda rows are not measured")
        backends = [b for b in backends if b not in GPU_BACKENDS]
    if not backends:
        raise LesrcnnError("no backend to run")
    info = machine_info(threads)
    log(f"bench: measuring the fp32 GEMM peak on {threads} thread(s) ...")
    info["gemm_cpu_by_library"] = gemm_peaks("cpu", n=gemm_n)
    peaks = {"cpu": max(info["gemm_cpu_by_library"].values())}
    for b in backends:
        if b in GPU_BACKENDS:
            info["gpu"] = torch.cuda.get_device_name()
            peaks[b] = gemm_peak("cuda", b.split("-")[1])
    info["peaks_gflops"] = peaks
    ck = W.load(weights)
    for s in scales:
        ck.require_scale(s)
    rows: list[dict] = []
    for s in scales:
        for size in sizes:
            rows += _interleaved(ck.model, s, size, backends, peaks, threads, repeat, warmup, log, gemm_n)
    info["peaks_gflops_end"] = {"cpu": gemm_peak("cpu", n=gemm_n)}
    return rows, info


def machine_info(threads: int) -> dict:
    import torch

    from . import __version__

    info = {"cpu": cpu_name(), "threads": threads, "lesrcnn": __version__, "torch": torch.__version__,
            "python": platform.python_version()}
    for mod in ("onnxruntime", "openvino"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    return info


def _interleaved(model, s, size, backends, peaks, threads, repeat, warmup, log, gemm_n) -> list[dict]:
    lr = lr_size(size, s)
    runners = {}
    for b in backends:
        try:
            log(f"bench: x{s} {lr * s}px preparing {b} ...")
            runners[b] = make_runner(b, model, s, lr, threads)
            for _ in range(max(1, warmup) if b == "torch-compile" else warmup):
                runners[b]()
        except Exception as e:  # a backend that cannot run here is reported, the others go on
            log(f"bench: x{s} {lr * s}px {b}: not measured ({_first_line(e)[:200]})")
            runners.pop(b, None)
    times: dict[str, list[float]] = {b: [] for b in runners}
    rss: dict[str, float] = {b: 0.0 for b in runners}
    local_peaks = []
    for _ in range(repeat):
        local_peaks.append(gemm_peak("cpu", n=gemm_n, reps=2))
        for b, run in runners.items():
            with RssSampler() as r:
                t = time.perf_counter()
                run()
                times[b].append(time.perf_counter() - t)
            rss[b] = max(rss[b], r.peak)
    rows = [_row(b, s, size, lr, times[b], peaks[b] if b in GPU_BACKENDS else max(local_peaks), threads, rss[b])
            for b in runners]
    for r in rows:
        log(f"bench: x{s} {lr * s}px {r['backend']:<13} {r['seconds']:.4f} s  {r['gflops']:.0f} GFLOP/s")
    return rows


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def whole_file(weights: str | None, threads: int, size: tuple[int, int] = (1920, 1080), scale: int = 2) -> dict:
    """``upscale`` of one JPEG (the default backend): decode, inference, encode seconds and the
    process's peak RSS during the job; the input is a synthetic photo-like image."""
    import numpy as np
    from PIL import Image

    from .io import read_picture, write_picture
    from .upscale import Upscaler

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(xx / (23 + 9 * c)) * np.cos(yy / (17 + 5 * c)) for c in range(3)], axis=2)
    img[((xx // 97 + yy // 61) % 2) == 0] *= 0.7
    img = np.clip(img * 255 + np.random.default_rng(0).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="lesrcnn-bench-") as d:
        src, dst = Path(d, "in.jpg"), Path(d, "out.jpg")
        Image.fromarray(img).save(src, quality=92)
        t0 = time.perf_counter()
        up = Upscaler(scale, weights, device="cpu", threads=threads)
        engine_s = [0.0]
        forward = up._forward_once

        def timed(x):
            t = time.perf_counter()
            y = forward(x)
            engine_s[0] += time.perf_counter() - t
            return y

        up._forward_once = timed  # network time alone, without tiling, copies and quantisation
        t1 = time.perf_counter()
        with RssSampler() as r:
            pic = read_picture(src)
            t2 = time.perf_counter()
            out = up.upscale_picture(pic)
            t3 = time.perf_counter()
            write_picture(out, dst, "JPEG")
            t4 = time.perf_counter()
    wall = t4 - t1
    return {"input": f"{w}x{h} JPEG", "output": f"{w * scale}x{h * scale} JPEG", "backend": up.backend,
            "tile": up.tile, "startup_s": t1 - t0, "decode_s": t2 - t1, "upscale_s": t3 - t2, "network_s": engine_s[0],
            "encode_s": t4 - t3, "wall_s": wall, "network_share": engine_s[0] / wall, "peak_rss_mb": round(r.peak, 1)}


def format_table(rows: list[dict], info: dict, auto: list[str] | None = None, job: dict | None = None) -> str:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in info["peaks_gflops"].items())
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "onnxruntime", "openvino") if k in info)
    lines = [f"# {info['cpu']}, {info['threads']} thread(s); lesrcnn {info['lesrcnn']}, {versions}"
             + (f"; GPU {info['gpu']}" if "gpu" in info else ""),
             f"# fp32 GEMM peak GFLOP/s (same run): {peaks} (cpu: best of "
             f"{', '.join(f'{k} {v:.0f}' for k, v in info['gemm_cpu_by_library'].items())}); "
             f"at the end: cpu {info['peaks_gflops_end']['cpu']:.0f}",
             "# one process, backends interleaved run by run; seconds: median per image after warm-up; GFLOP/s: "
             "FLOPs of the released network / time; peak%: of the GEMM peak; RSS: the whole process",
             f"{'backend':<14} {'scale':>5} {'HR size':>9} {'seconds':>8} {'MP/s':>7} {'GFLOP/s':>8} {'peak%':>6} "
             f"{'vs eager':>8} {'vs torch':>8} {'RSS MB':>7}"]
    base = {(r["scale"], r["size"], b): r["seconds"] for r in rows for b in ("eager-nchw", "torch") if r["backend"] == b}
    for r in rows:
        vs = [f"{base[(r['scale'], r['size'], b)] / r['seconds']:.2f}x" if (r["scale"], r["size"], b) in base else "-"
              for b in ("eager-nchw", "torch")]
        lines.append(f"{r['backend']:<14} {'x' + str(r['scale']):>5} {r['hr'][0]:>4}x{r['hr'][1]:<4} "
                     f"{r['seconds']:>8.4f} {r['mpx_per_s']:>7.3f} {r['gflops']:>8.1f} {r['peak_fraction']:>6.1%} "
                     f"{vs[0]:>8} {vs[1]:>8} {r['peak_rss_mb']:>7.0f}")
    lines += auto or []
    if job:
        lines.append(f"upscale {job['input']} -> {job['output']} ({job['backend']}, tile {job['tile']}): "
                     f"{job['wall_s']:.2f} s after a {job['startup_s']:.2f} s start-up = decode {job['decode_s']:.2f} s"
                     f" + upscale {job['upscale_s']:.2f} s (network {job['network_s']:.2f} s) + encode "
                     f"{job['encode_s']:.2f} s; network {job['network_share']:.1%} of the wall time; "
                     f"peak RSS {job['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def auto_lines() -> list[str]:
    """What ``--backend auto`` picks on this machine and why."""
    from .backends import auto_report

    out = []
    for prec in ("fp32", "int8"):
        rep = auto_report(prec)
        picked = next((n for n, st in rep if st == "picked"), None)
        why = "; ".join(f"{n}: {st}" for n, st in rep)
        out.append(f"auto ({prec}, cpu) picks {picked or 'nothing'}: first installed of its rule ({why})")
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
    p.add_argument("--sizes", default="512", help="HR output sizes, comma-separated (the paper's Table 8: 256,512,1024)")
    p.add_argument("--backends", help=f"comma-separated subset of {','.join(ALL_BACKENDS)} (default: all)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per backend (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("-j", "--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--gemm-size", type=int, default=3072, help="n of the n x n x n peak GEMM")
    p.add_argument("--no-file", action="store_true", help="skip the whole-file upscale of a 1920x1080 JPEG")
    p.add_argument("--json", action="store_true", help="print JSON (rows, machine, auto, whole-file job)")
    p.set_defaults(func=cmd_bench)
    return p


add_bench = add_parser


def cmd_bench(a) -> int:
    import torch

    scales = _int_list(a.scales, "scales", {2, 3, 4})
    sizes = _int_list(a.sizes, "sizes")
    backends = [b.strip() for b in (a.backends or ",".join(ALL_BACKENDS)).split(",") if b.strip()]
    bad = [b for b in backends if b not in ALL_BACKENDS]
    if bad:
        raise LesrcnnError(f"--backends: unknown {', '.join(bad)}; choose from {', '.join(ALL_BACKENDS)}")
    if a.repeat < 1 or a.warmup < 0:
        raise LesrcnnError("--repeat must be >= 1 and --warmup >= 0")
    if a.threads is not None and a.threads < 1:
        raise LesrcnnError("--threads must be >= 1")
    if a.gemm_size < 64:
        raise LesrcnnError("--gemm-size must be >= 64")
    rows, info = run_bench(scales, sizes, backends, a.weights, a.repeat, a.warmup, a.threads, gemm_n=a.gemm_size)
    job = None if a.no_file else whole_file(a.weights, info["threads"])
    if a.json:
        print(json.dumps({"rows": rows, "machine": info, "auto": auto_lines(), "whole_file": job}, indent=2))
    else:
        print(format_table(rows, info, auto_lines(), job))
    return 0
