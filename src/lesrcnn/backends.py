"""Inference backends behind one interface: ``engine(x, scale) -> y`` on float32 NCHW tensors.

``torch`` (CPU fp32: the fused oneDNN runner of :mod:`lesrcnn.accel`; CUDA/MPS: the module), and
``onnx`` (ONNX Runtime) and ``openvino`` on the exported graph, fp32 or INT8, compiled once per weights
content, scale, precision and threads (dynamic height/width: a folder of images compiles once).
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import __version__, accel
from .errors import LesrcnnError, first_line
from .export import INT8_RECIPE, int8_model, to_onnx
from .io import ImageWarning, atomic_write_bytes
from .model import LESRCNN, check_scale, fuse_rb
from .upscale import prepare, tune_cpu_allocator

BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
# The rule behind ``auto`` on a CPU, from `lesrcnn bench` side by side on one machine (x2,
# 256x256 -> 512x512, 2 threads; benchmarks/results/bench_cpu.txt): OpenVINO fp32 is the fastest
# fp32 runtime and OpenVINO INT8 the fastest INT8 one; ONNX Runtime is next; our fused oneDNN
# PyTorch path last. On a GPU (CUDA/MPS) the torch backend is the only one.
AUTO_ORDER = {"fp32": ("openvino", "onnx", "torch"), "int8": ("openvino", "onnx")}
_RUNNERS: OrderedDict = OrderedDict()  # the compiled runtimes, the last 12 used


def cache_dir() -> Path:
    """The user's cache folder for lesrcnn: ``LESRCNN_CACHE``, else ``$XDG_CACHE_HOME/lesrcnn`` or
    ``~/.cache/lesrcnn`` on every platform (torch.hub's convention)."""
    if os.environ.get("LESRCNN_CACHE"):
        return Path(os.environ["LESRCNN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lesrcnn"


def digest(model: LESRCNN) -> str:
    """sha256 of what the network computes: variant, scales, mean and every weight's bytes."""
    h = hashlib.sha256(f"{type(model).__name__}|{model.variant}|{model.scales}".encode())
    h.update(model.mean.detach().float().cpu().numpy().tobytes())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def installed(name: str) -> str | None:
    """None if ``name``'s runtime imports, else why not (one line)."""
    for mod in {"torch": (), "onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}[name]:
        try:
            __import__(mod)
        except Exception as e:  # ImportError, or a broken install raising anything
            return f"{mod} not importable ({type(e).__name__}); pip install 'lesrcnn[{name}]'"
    return None


def auto_order(precision: str, device: torch.device) -> tuple[str, ...]:
    return AUTO_ORDER["int8" if precision == "int8" else "fp32"] if device.type == "cpu" else ("torch",)


def auto_report(precision: str = "fp32", device: str | torch.device = "cpu") -> list[tuple[str, str]]:
    """(backend, status) in ``auto``'s order: 'picked', 'not installed: ...' or 'fallback ...'."""
    report = [(name, installed(name)) for name in auto_order(precision, torch.device(device))]
    first = next((name for name, why in report if why is None), None)
    return [(name, f"not installed: {why}" if why else "picked" if name == first else
             "fallback if the one above fails to load") for name, why in report]


class Engine(nn.Module):
    """``engine(x, scale)``: NCHW float32 RGB in [0, 1] -> NCHW float32 SR, unclamped, on the CPU (torch: its
    device); a module holding the model, so ``scales`` and ``receptive_margin()`` answer as for it."""

    def __init__(self, model: LESRCNN | None, precision: str, scales: tuple[int, ...] | None = None):
        super().__init__()
        self.model, self.precision, self.dtype = model, precision, PRECISIONS[precision]
        self.scales = tuple(scales or model.scales)

    def receptive_margin(self) -> int:
        return (self.model or LESRCNN(self.scales)).receptive_margin()


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: LESRCNN, device: torch.device, precision: str = "fp32"):
        super().__init__(model, precision)
        self.device = device
        cpu32 = device.type == "cpu" and precision == "fp32" and accel.available()
        self.net = accel.CpuAccelerator(model) if cpu32 else prepare(fuse_rb(model), device, self.dtype)
        self.fp32 = None if precision == "fp32" else prepare(fuse_rb(model), device, torch.float32)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:  # the network checks the scale
        y = self.net(x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last), scale)
        if self.fp32 is not None and not bool(torch.isfinite(y).all()):
            warnings.warn(f"{self.precision} output overflowed (NaN/Inf); recomputing in fp32", stacklevel=3)
            y = self.fp32(x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last), scale)
        return y.float()


class RuntimeEngine(Engine):
    """ONNX Runtime or OpenVINO on the exported graph of each scale (built on first use, then shared)."""

    def __init__(self, name: str, model: LESRCNN | None, precision: str = "fp32", threads: int | None = None,
                 onnx_file: str | os.PathLike | None = None, progress: bool = True):
        super().__init__(model, precision, None if onnx_file is None else (_onnx_file_scale(onnx_file),))
        self.name, self.threads, self.onnx_file, self.progress = name, threads, onnx_file, progress
        self._key = digest(model) if onnx_file is None else str(Path(onnx_file).resolve())

    def runner(self, scale: int) -> Callable[[np.ndarray], np.ndarray]:
        key = (self.name, self._key, scale, self.precision, self.threads)
        if key not in _RUNNERS:
            if self.onnx_file is not None:
                src = Path(self.onnx_file).read_bytes()
            elif self.precision == "int8":
                src = int8_onnx(self.model, scale, progress=self.progress, key=self._key)
            else:
                src = to_onnx(self.model, scale).SerializeToString()
            try:
                _RUNNERS[key] = (ort_runner if self.name == "onnx" else openvino_runner)(src, self.threads)
            except LesrcnnError as e:  # a damaged cached INT8 model would fail every run: drop it
                stale = cache_dir() / "int8" / int8_name(self._key, scale)
                if self.precision != "int8" or self.onnx_file is not None or not stale.is_file():
                    raise
                stale.unlink()
                raise LesrcnnError(f"{e}; removed the cached INT8 model {stale}, the next run calibrates "
                                   f"it again") from None
            if len(_RUNNERS) > 12:
                _RUNNERS.popitem(last=False)
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise LesrcnnError(f"the engine takes an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
        run = self.runner(check_scale(scale, self.scales))
        xn = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.ascontiguousarray(run(xn), dtype=np.float32))


def _onnx_file_scale(path: str | os.PathLike) -> int:
    import onnx

    if not Path(path).is_file():
        raise LesrcnnError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise LesrcnnError(f"{path}: not a readable ONNX model ({first_line(e)[:160]})") from None
    s = {p.key: p.value for p in proto.metadata_props}.get("scale", "")
    if not s.isdigit():
        raise LesrcnnError(f"{path}: no 'scale' in the model's metadata (export it with `lesrcnn export`)")
    return int(s)


def ort_runner(src: bytes, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX Runtime on the CPU (all graph optimisations: the default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads or torch.get_num_threads()
    try:
        sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise LesrcnnError(f"ONNX Runtime cannot load the model: {first_line(e)[:240]}") from None
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def openvino_runner(src: bytes, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO on the CPU, dynamic shapes, latency mode, f32 inference precision (no silent bf16)."""
    import openvino as ov  # callers check installed("openvino") first

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    try:
        request = core.compile_model(core.read_model(src, b""), "CPU", config).create_infer_request()
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
        raise LesrcnnError(f"OpenVINO cannot load the model: {first_line(e)[:240]}") from None
    return lambda x: request.infer({0: x}, share_inputs=True)[0]  # outputs copied (share_outputs=False)


def int8_name(key: str, scale: int) -> str:
    """The INT8 model's file name: the weights' content hash, the scale and the recipe."""
    return f"{key[:24]}_x{scale}_{INT8_RECIPE}.onnx"


def int8_onnx(model: LESRCNN, scale: int, progress: bool = True, key: str | None = None, cache: bool = True) -> bytes:
    """The INT8 ONNX model (:func:`lesrcnn.export.int8_model`) of ``model`` at ``scale``: shipped
    in the package, cached, or calibrated now (with a progress bar) and cached."""
    name = int8_name(key or digest(model), scale)
    cached = cache_dir() / "int8" / name
    for path in (Path(__file__).parent / "pretrained" / "int8" / name, cached) if cache else ():
        if path.is_file():
            return path.read_bytes()
    bar = functools.partial(tqdm, desc=f"INT8 calibration x{scale} (once, cached)", unit="patch",
                            file=sys.stderr, dynamic_ncols=True, disable=None if progress else True)
    data = int8_model(model, scale, progress=bar,
                      metadata={"calibration": f"lesrcnn {__version__} built-in set"}).SerializeToString()
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached, data)
        except OSError as e:  # a read-only home: still works, calibrates again next time
            warnings.warn(f"cannot cache the INT8 model in {cache_dir()}: {e}", stacklevel=2)
    return data


def create(model: LESRCNN | None, backend: str = "auto", precision: str = "fp32",
           device: torch.device | str = "cpu", threads: int | None = None, scales: tuple[int, ...] = (),
           onnx_file: str | os.PathLike | None = None, progress: bool = True) -> Engine:
    """The engine for ``backend`` (``auto``: the first of :data:`AUTO_ORDER` that is installed and
    loads, with a warning for each one that fails); ``scales`` are built now. fp16/bf16 run on CUDA
    only (fp32 elsewhere, with a warning; a batch whose output overflows is redone in fp32), int8 on
    the CPU; ``engine.precision`` is what runs. ``threads``: CPU threads of the onnx/openvino runtimes."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise LesrcnnError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise LesrcnnError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in ("fp16", "bf16") and device.type != "cuda":
        warnings.warn(f"--precision {precision} is a CUDA path; running fp32 on {device.type}", ImageWarning,
                      stacklevel=3)
        precision = "fp32"
    elif precision == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16; using fp16", ImageWarning, stacklevel=3)
        precision = "fp16"
    if device.type == "cpu":
        tune_cpu_allocator()
    if precision == "int8" and device.type != "cpu":
        raise LesrcnnError("--precision int8 runs on the CPU (--device cpu)")
    if onnx_file is not None and backend == "torch":
        raise LesrcnnError("an .onnx file runs with --backend onnx or openvino")
    names = auto_order(precision, device) if backend == "auto" else (backend,)
    names = tuple(n for n in names if onnx_file is None or n != "torch")
    errors = []
    for name in names:
        try:
            if why := installed(name):
                raise LesrcnnError(why)
            if name == "torch":
                if precision == "int8":
                    raise LesrcnnError("the torch backend has no INT8 path: use --backend openvino or onnx")
                return TorchEngine(model, device, precision)
            if device.type != "cpu":  # (fp16/bf16 only reach here on CUDA)
                raise LesrcnnError(f"--backend {name} runs on the CPU (--device cpu)")
            engine = RuntimeEngine(name, model, precision, threads, onnx_file, progress)
            for s in scales:  # compiled now, so that a runtime that fails to load falls back here
                engine.runner(s)
            return engine
        except LesrcnnError as e:
            why = str(e)
        if backend != "auto":
            raise LesrcnnError(f"--backend {name}: {why}")
        errors.append(f"{name}: {why}")
        if len(errors) < len(names):
            warnings.warn(f"backend {name} unavailable ({why}); trying the next", stacklevel=2)
    raise LesrcnnError(f"no backend can run {precision}: " + "; ".join(errors))
