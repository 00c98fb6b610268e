"""``lesrcnn bench``: inference speed of every backend against the machine's own measured peak.

For each scale, HR output size and backend it reports seconds per image (median of the timed
runs after warm-up), HR megapixels per second, effective GFLOP/s (FLOPs of the released network,
``complexity.macs``, divided by the time: exact algebraic savings such as the fused RB count as
speed), that figure as a fraction of the fp32 GEMM peak measured in the same run with the same
threads (a large single-precision matrix multiply; bf16/fp16 GPU rows use that dtype's GEMM
peak) and the peak resident memory.

Backends: ``eager-nchw`` (the released code's way: plain NCHW modules, unfused RB, default
allocator), ``torch`` (our default path, ``upscale.prepare``: channels-last, fused oneDNN
convolutions, allocator that reuses buffers), ``onnx`` (ONNX Runtime fp32, CPU),
``onnx-int8`` (ONNX Runtime, static INT8 QDQ, CPU) and, with a CUDA GPU, ``cuda-fp32`` (TF32
off), ``cuda-bf16``, ``cuda-fp16``, timed with device synchronisation (input already on the
device). By default each case runs in its own process so that its peak RSS is its own;
``--interleave`` runs all backends of a size in one process, alternating their timed runs (fair
ratios on a busy machine; RSS is then the process's, ONNX Runtime's threads do not spin, and the
allocator tuning of the ``torch`` backend, being process-wide, speeds up ``eager-nchw`` too, so
its "vs eager" ratios compare the layers alone).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import LesrcnnError

CPU_BACKENDS = ["eager-nchw", "torch", "onnx", "onnx-int8"]
GPU_BACKENDS = ["cuda-fp32", "cuda-bf16", "cuda-fp16"]
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS
DEFAULT_SIZES = [256, 512, 1024]  # HR output sizes of the paper's Table 8


# --- peaks -------------------------------------------------------------------------------------

def gemm_peaks(device: str = "cpu", dtype: str = "fp32", n: int | None = None, reps: int = 5) -> dict[str, float]:
    """Best GFLOP/s of an n x n x n matrix multiply per library, on the threads torch uses.

    CPU: MKL (``torch.mm``) and oneDNN (the matmul behind ``mkldnn_linear``, the library of our
    convolutions); MKL takes a slower path on AMD processors, so the best of the two is the peak.
    CUDA: cuBLAS in the given dtype, TF32 off."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    n = n or (3072 if device == "cpu" else 8192)
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev).to(dt)
    b = torch.randn(n, n, device=dev).to(dt)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cands = {"cublas" if dev.type == "cuda" else "mkl": lambda: torch.mm(a, b)}
    if dev.type == "cpu" and dt == torch.float32 and torch.backends.mkldnn.is_available():
        try:
            am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            torch._C._nn.mkldnn_linear(am, bm, None)
            cands["onednn"] = lambda: torch._C._nn.mkldnn_linear(am, bm, None)
        except (RuntimeError, AttributeError):
            pass
    prev = torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    try:
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
    finally:
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def gemm_peak(device: str = "cpu", dtype: str = "fp32", n: int | None = None, reps: int = 5) -> float:
    """The machine's measured peak: the best of :func:`gemm_peaks`."""
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


# --- one backend -------------------------------------------------------------------------------

def lr_size(size: int, scale: int) -> int:
    return max(1, round(size / scale))


def load_model(weights: str | None, scale: int):
    """The checkpoint's network, or (no weights) an untrained one initialised to interpolate:
    the weights do not change the time, only the output."""
    from .model import build, init_interpolation

    if weights:
        from . import weights as W

        ck = W.load(weights, scale)
        return ck.model.eval()
    return init_interpolation(build(scale), seed=0).eval()


def make_runner(backend: str, model, scale: int, lr: int, threads: int, onnx_file: str | None = None,
                shared_process: bool = False):
    """A no-argument callable that super-resolves one prepared lr x lr image (synchronised)."""
    import copy

    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((1, 3, lr, lr), dtype=np.float32))
    multi = model.multiscale

    if backend == "eager-nchw":
        m = copy.deepcopy(model).float().eval()
        m.fuse_rb, m.fast_cpu = False, False

        def run():
            with torch.no_grad():
                return m(x, scale) if multi else m(x)
        return run
    if backend == "torch":
        from .upscale import forward_tiled, prepare

        m = prepare(copy.deepcopy(model), "cpu")
        return lambda: forward_tiled(m, x, scale, tile=0)
    if backend in ("onnx", "onnx-int8"):
        from .export import session

        sess = session(onnx_file, ["CPUExecutionProvider"], threads=threads, spin=not shared_process)
        xn = x.numpy()
        return lambda: sess.run(None, {"input": xn})[0]
    if backend in GPU_BACKENDS:
        if not torch.cuda.is_available():
            raise LesrcnnError(f"{backend}: no CUDA device")
        dt = {"cuda-fp32": torch.float32, "cuda-bf16": torch.bfloat16, "cuda-fp16": torch.float16}[backend]
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        from .upscale import prepare

        m = prepare(copy.deepcopy(model), "cuda", dt)
        xd = x.to("cuda", dt).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                y = m(xd, scale) if multi else m(xd)
            torch.cuda.synchronize()
            return y
        return run
    raise LesrcnnError(f"unknown backend {backend!r}")


def time_runner(run, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        run()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        out.append(time.perf_counter() - t)
    return out


def _max_rss_mb() -> float:
    """Peak RSS of this process image. VmHWM, not getrusage's ru_maxrss: Linux carries the
    latter over exec from the forked parent, so a child would report at least the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 2**20)


class RssSampler:
    """Peak RSS of this process while a block runs (sampled from /proc/self/statm)."""

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


# --- a case in its own process -----------------------------------------------------------------

def _child_main() -> None:
    spec = json.loads(sys.stdin.read())
    import torch

    torch.set_num_threads(spec["threads"])
    extra = {}
    try:
        model = load_model(spec["weights"], spec["scale"])
        run = make_runner(spec["backend"], model, spec["scale"], spec["lr"], spec["threads"], spec.get("onnx"))
        if spec["backend"] in GPU_BACKENDS:  # steady state: not cudnn.benchmark's trial workspaces
            for _ in range(max(1, spec["warmup"])):
                run()
            torch.cuda.reset_peak_memory_stats()
        times = time_runner(run, spec["warmup"] if spec["backend"] not in GPU_BACKENDS else 0, spec["repeat"])
        if spec["backend"] in GPU_BACKENDS:
            extra["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res = {"times": times, "peak_rss_mb": _max_rss_mb(), **extra}
    except LesrcnnError as e:
        res = {"error": str(e)}
    except Exception as e:  # reported as the case's error, the bench goes on
        res = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
    sys.stdout.write("\n@@RESULT@@" + json.dumps(res) + "\n")


def run_isolated(spec: dict, timeout: float | None = None) -> dict:
    code = "from lesrcnn.bench import _child_main; _child_main()"
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), capture_output=True, text=True,
                       env=env, timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"case process failed ({r.returncode}): {tail[:300]}"}


# --- the whole benchmark -----------------------------------------------------------------------

def onnx_files(model, scale: int, backends: list[str], folder: Path, calib: str | None) -> dict[str, str]:
    from .export import build_onnx, calibration_patches, quantize_int8, save_onnx, synthetic_patches

    out: dict[str, str] = {}
    if not any(b.startswith("onnx") for b in backends):
        return out
    proto = build_onnx(model, scale)
    if "onnx" in backends:
        out["onnx"] = str(save_onnx(proto, folder / f"x{scale}.onnx"))
    if "onnx-int8" in backends:
        patches = calibration_patches(calib, scale, 32) if calib else synthetic_patches(16)
        out["onnx-int8"] = str(save_onnx(quantize_int8(proto, patches, method="minmax"), folder / f"x{scale}_int8.onnx"))
    return out


def _row(backend: str, scale: int, size: int, lr: int, times: list[float], peak: float, threads: int,
         rss: float | None, **extra) -> dict:
    from .complexity import macs

    t = statistics.median(times)
    flops = 2 * macs(scale, lr, lr)
    gflops = flops / t / 1e9
    return {"backend": backend, "scale": scale, "size": size, "lr": [lr, lr], "hr": [lr * scale, lr * scale],
            "seconds": t, "seconds_min": min(times), "runs": len(times), "mpx_per_s": (lr * scale) ** 2 / 1e6 / t,
            "gflops": gflops, "peak_gflops": peak, "peak_fraction": gflops / peak,
            "peak_rss_mb": None if rss is None else round(rss, 1), "threads": threads,
            "device": "cuda" if backend in GPU_BACKENDS else "cpu", **extra}


def run_bench(scales: list[int], sizes: list[int], backends: list[str], weights: str | None = None,
              repeat: int = 5, warmup: int = 1, threads: int | None = None, interleave: bool = False,
              calib: str | None = None, log=None, gemm_n: int | None = None) -> tuple[list[dict], dict]:
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    gpu = [b for b in backends if b in GPU_BACKENDS]
    if gpu and not torch.cuda.is_available():
        log(f"bench: no CUDA device: skipping {', '.join(gpu)} (not measured)")
        backends = [b for b in backends if b not in GPU_BACKENDS]
    if any(b.startswith("onnx") for b in backends):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            log("bench: onnx/onnxruntime not installed: skipping the onnx backends")
            backends = [b for b in backends if not b.startswith("onnx")]
    if not backends:
        raise LesrcnnError("no backend to run")
    info = {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    log(f"bench: measuring the fp32 GEMM peak on {threads} thread(s) ...")
    by_lib = gemm_peaks("cpu", n=gemm_n)
    info["gemm_cpu_by_library"] = by_lib
    peaks = {"cpu": max(by_lib.values())}
    if gpu and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        for b in gpu:
            peaks[b] = gemm_peak("cuda", b.split("-")[1])
    info["peaks_gflops"] = dict(peaks)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lesrcnn-bench-") as tmp:
        for s in scales:
            model = load_model(weights, s)
            files = onnx_files(model, s, backends, Path(tmp), calib)
            for size in sizes:
                lr = lr_size(size, s)
                if interleave:
                    rows += _interleaved(model, s, size, lr, backends, files, peaks, threads, repeat, warmup, log,
                                         gemm_n)
                    continue
                for b in backends:
                    spec = {"backend": b, "scale": s, "lr": lr, "threads": threads, "weights": weights,
                            "warmup": warmup, "repeat": repeat, "onnx": files.get(b)}
                    res = run_isolated(spec)
                    if "error" in res:
                        log(f"bench: x{s} {size} {b}: {res['error']}")
                        continue
                    extra = {"peak_gpu_mb": round(res["peak_gpu_mb"], 1)} if "peak_gpu_mb" in res else {}
                    row = _row(b, s, size, lr, res["times"], peaks.get(b, peaks["cpu"]), threads,
                               res["peak_rss_mb"], **extra)
                    rows.append(row)
                    log(f"bench: x{s} {lr * s}px {b:<10} {row['seconds']:.4f} s  {row['gflops']:.0f} GFLOP/s")
    info["peaks_gflops_end"] = {"cpu": gemm_peak("cpu", n=gemm_n)}
    return rows, info


def _interleaved(model, s, size, lr, backends, files, peaks, threads, repeat, warmup, log, gemm_n) -> list[dict]:
    runners = {}
    for b in backends:
        try:
            runners[b] = make_runner(b, model, s, lr, threads, files.get(b), shared_process=True)
            for _ in range(warmup):
                runners[b]()
        except (LesrcnnError, RuntimeError) as e:
            log(f"bench: x{s} {size} {b}: {e}")
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
    peak_cpu = max(local_peaks)
    rows = []
    for b in runners:
        rows.append(_row(b, s, size, lr, times[b], peaks[b] if b in GPU_BACKENDS else peak_cpu, threads, rss[b],
                         rss_scope="process"))
        log(f"bench: x{s} {lr * s}px {b:<10} {rows[-1]['seconds']:.4f} s  {rows[-1]['gflops']:.0f} GFLOP/s")
    return rows


def format_table(rows: list[dict], info: dict) -> str:
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in info["peaks_gflops"].items())
    lines = [f"# {info['cpu']}, {info['threads']} thread(s); torch {info['torch']}"
             + (f", onnxruntime {info['onnxruntime']}" if "onnxruntime" in info else "")
             + (f"; GPU {info['gpu']}" if "gpu" in info else "; no GPU: CUDA rows not measured"),
             f"# GEMM peak GFLOP/s (same run): {peaks}"
             + (f" (cpu: best of {', '.join(f'{k} {v:.0f}' for k, v in info['gemm_cpu_by_library'].items())})"
                if "gemm_cpu_by_library" in info else "")
             + f"; at the end: cpu {info['peaks_gflops_end']['cpu']:.0f}",
             "# seconds: median per image after warm-up; GFLOP/s: FLOPs of the released network / time; "
             "peak%: of the GEMM peak"
             + ("; RSS: the whole process (--interleave: every backend loaded at once)"
                if any(r.get("rss_scope") == "process" for r in rows) else "; RSS: peak of the case's own process"),
             f"{'backend':<11} {'scale':>5} {'HR size':>9} {'seconds':>9} {'MP/s':>7} {'GFLOP/s':>8} {'peak%':>6} "
             f"{'vs eager':>8} {'RSS MB':>8}"]
    base = {(r["scale"], r["size"]): r["seconds"] for r in rows if r["backend"] == "eager-nchw"}
    for r in rows:
        b = base.get((r["scale"], r["size"]))
        vs = f"{b / r['seconds']:.2f}x" if b else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-"
        lines.append(f"{r['backend']:<11} {'x' + str(r['scale']):>5} {r['hr'][0]:>4}x{r['hr'][1]:<4} "
                     f"{r['seconds']:>9.4f} {r['mpx_per_s']:>7.3f} {r['gflops']:>8.1f} {r['peak_fraction']:>6.1%} "
                     f"{vs:>8} {rss:>8}")
    return "\n".join(lines)


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


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="inference speed per backend vs the machine's measured fp32 peak")
    p.add_argument("--weights", help="checkpoint (default: an untrained network; weights do not change speed)")
    p.add_argument("--scales", default="2,3,4", help="comma-separated (default 2,3,4)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="HR output sizes, comma-separated (default 256,512,1024: the paper's Table 8)")
    p.add_argument("--backends", help=f"comma-separated subset of {','.join(ALL_BACKENDS)} "
                                      "(default: all that this machine has)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case (median reported; default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--interleave", action="store_true",
                   help="one process, backends alternate run by run (fair ratios on a busy machine)")
    p.add_argument("--calib", help="image folder for the INT8 calibration (default: synthetic patches)")
    p.add_argument("--gemm-size", type=int, default=3072, help="n of the n x n x n peak GEMM (default 3072)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per case")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
    import torch

    scales = _int_list(a.scales, "scales", {2, 3, 4})
    sizes = _int_list(a.sizes, "sizes")
    if a.backends:
        backends = [b.strip() for b in a.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in ALL_BACKENDS]
        if bad:
            raise LesrcnnError(f"--backends: unknown {', '.join(bad)}; choose from {', '.join(ALL_BACKENDS)}")
    else:
        backends = CPU_BACKENDS + (GPU_BACKENDS if torch.cuda.is_available() else [])
    if a.repeat < 1 or a.warmup < 0:
        raise LesrcnnError("--repeat must be >= 1 and --warmup >= 0")
    if a.threads is not None and a.threads < 1:
        raise LesrcnnError("--threads must be >= 1")
    if a.weights:
        from . import weights as W

        ck = W.load(a.weights)
        for s in scales:
            ck.require_scale(s)
    if a.calib and not Path(a.calib).is_dir():
        raise LesrcnnError(f"--calib: not a folder: {a.calib}")
    if a.gemm_size < 64:
        raise LesrcnnError("--gemm-size must be >= 64")
    rows, info = run_bench(scales, sizes, backends, a.weights, a.repeat, a.warmup, a.threads, a.interleave, a.calib,
                           gemm_n=a.gemm_size)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, info))
    return 0
