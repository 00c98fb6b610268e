"""Inference backends behind one interface: ``engine(x, scale) -> y`` on float32 NCHW tensors.

- ``torch``: PyTorch; on CPU in float32 the fused oneDNN runner (:mod:`lesrcnn.accel`), on
  CUDA/MPS the module (RB fused, channels-last) in fp32/fp16/bf16.
- ``onnx``: ONNX Runtime on the exported graph (:func:`lesrcnn.export.to_onnx`), fp32 or INT8.
- ``openvino``: OpenVINO on the same ONNX graph, fp32 or INT8 (the same QDQ model).
- ``auto``: the first of :data:`AUTO_ORDER` that is installed and loads (see :func:`auto_report`).

Compiled runtimes are cached per (backend, weights content hash, scale, precision, threads),
never per object id, with dynamic height/width, so a folder of images compiles once. INT8
models are built once per (weights hash, scale, calibration method) and kept in the user's
cache directory (or shipped inside the package for the embedded weights).
"""
from __future__ import annotations

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

from .errors import LesrcnnError
from .model import LESRCNN, check_scale, fuse_rb

BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The rule behind ``auto`` on a CPU, from `lesrcnn bench` side by side on one machine (x2,
# 256x256 -> 512x512, 2 threads; benchmarks/results/bench_cpu.txt): OpenVINO fp32 is the fastest
# fp32 runtime and OpenVINO INT8 the fastest INT8 one; ONNX Runtime is next; our fused oneDNN
# PyTorch path last. On a GPU (CUDA/MPS) the torch backend is the only one.
AUTO_ORDER = {"fp32": ("openvino", "onnx", "torch"), "int8": ("openvino", "onnx")}
EXTRA = {"onnx": "onnx", "openvino": "openvino"}
INT8_METHOD = "percentile"
INT8_PATCHES = 32
# Layers from the RB on kept in float (upsampler, IRB, last conv): all of them, so INT8 covers the
# LR feature extractor (IEEB). Measured on Set5 x2 (benchmarks/int8_psnr.py): INT8 everywhere
# loses 0.38 dB with the embedded weights, RB + first IRB layer in float still 0.65 dB, only the
# IEEB in INT8 0.013 dB (official weights: 0.05 / 0.04 / 0.05 dB).
INT8_FLOAT_HR = 99
_CACHE_KEPT = 12
_RUNNERS: OrderedDict = OrderedDict()


def cache_dir() -> Path:
    """The user's cache folder for lesrcnn (``LESRCNN_CACHE``, else XDG / ~/.cache / ~/Library/Caches)."""
    if os.environ.get("LESRCNN_CACHE"):
        return Path(os.environ["LESRCNN_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lesrcnn"
    base = os.environ.get("XDG_CACHE_HOME") or (os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
    return Path(base or Path.home() / ".cache") / "lesrcnn"


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
    if name == "torch":
        return None
    modules = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}[name]
    for mod in modules:
        try:
            __import__(mod)
        except Exception as e:  # ImportError, or a broken install raising anything
            return f"{mod} not importable ({type(e).__name__}); pip install 'lesrcnn[{EXTRA[name]}]'"
    return None


def auto_order(precision: str, device: torch.device) -> tuple[str, ...]:
    if device.type != "cpu":
        return ("torch",)
    return AUTO_ORDER["int8" if precision == "int8" else "fp32"]


def auto_report(precision: str = "fp32", device: str | torch.device = "cpu") -> list[tuple[str, str]]:
    """(backend, status) in ``auto``'s order: 'picked', 'not installed: ...' or 'fallback'."""
    out, picked = [], False
    for name in auto_order(precision, torch.device(device)):
        why = installed(name)
        if why:
            out.append((name, f"not installed: {why}"))
        elif not picked:
            out.append((name, "picked"))
            picked = True
        else:
            out.append((name, "fallback if the one above fails to load"))
    return out


# --- engines -------------------------------------------------------------------------------------

class Engine(nn.Module):
    """``engine(x, scale)``: NCHW float32 RGB in [0, 1] -> NCHW float32 SR, unclamped, on CPU
    (torch on a GPU: on that device). An ``nn.Module`` holding the model, so ``parameters()``,
    ``scales`` and ``receptive_margin()`` answer as for the network."""

    name = "?"

    def __init__(self, model: LESRCNN | None, precision: str, scales: tuple[int, ...] | None = None):
        super().__init__()
        self.model = model
        self.precision = precision
        self.scales = tuple(scales or model.scales)

    @property
    def multiscale(self) -> bool:
        return len(self.scales) > 1

    def receptive_margin(self) -> int:
        return (self.model or LESRCNN(self.scales)).receptive_margin()

    def prepare(self, scale: int) -> None:
        """Build (compile) what ``scale`` needs now, so that load failures show up here."""

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if scale is None:
            if self.multiscale:
                raise LesrcnnError("a multi-scale model needs the scale: engine(x, scale)")
            scale = self.scales[0]
        return self.run(x, check_scale(scale, self.scales))

    def run(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: LESRCNN, device: torch.device, precision: str = "fp32"):
        super().__init__(model, precision)
        self.device = device
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.fast = None
        if device.type == "cpu" and precision == "fp32":
            from . import accel

            if accel.available():
                self.fast = accel.CpuAccelerator(model)
        self.net = None if self.fast is not None else _prepare(fuse_rb(model), device, dtype)
        self.fp32 = None if precision == "fp32" else _prepare(fuse_rb(model), device, torch.float32)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if self.fast is not None:
            return self.fast(x.to(torch.float32), scale)
        dtype = next(self.net.parameters()).dtype
        y = self.net(x.to(self.device, dtype).contiguous(memory_format=torch.channels_last), scale)
        if self.fp32 is not None and not bool(torch.isfinite(y).all()):
            warnings.warn(f"{self.precision} output overflowed (NaN/Inf); recomputing in fp32", stacklevel=3)
            y = self.fp32(x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last), scale)
        return y.float()


def _prepare(model: LESRCNN, device: torch.device, dtype: torch.dtype) -> LESRCNN:
    from .upscale import prepare

    return prepare(model, device, dtype)


class RuntimeEngine(Engine):
    """ONNX Runtime or OpenVINO on the exported graph of each scale (built on first use)."""

    def __init__(self, name: str, model: LESRCNN | None, precision: str = "fp32", threads: int | None = None,
                 onnx_file: str | os.PathLike | None = None, progress: bool = True):
        scales = None
        if onnx_file is not None:
            scales = (_onnx_file_scale(onnx_file),)
        super().__init__(model, precision, scales)
        self.name, self.threads, self.onnx_file, self.progress = name, threads, onnx_file, progress
        self.device = torch.device("cpu")
        self._key = None if model is None else digest(model)

    def _runner(self, scale: int) -> Callable[[np.ndarray], np.ndarray]:
        key = (self.name, self._key or str(Path(self.onnx_file).resolve()), scale, self.precision, self.threads)
        if key in _RUNNERS:
            _RUNNERS.move_to_end(key)
            return _RUNNERS[key]
        if self.onnx_file is not None:
            src = Path(self.onnx_file).read_bytes()
        elif self.precision == "int8":
            src = int8_onnx(self.model, scale, progress=self.progress, key=self._key)
        else:
            from .export import to_onnx

            src = to_onnx(self.model, scale).SerializeToString()
        run = ort_runner(src, self.threads) if self.name == "onnx" else openvino_runner(src, self.threads)
        _RUNNERS[key] = run
        if len(_RUNNERS) > _CACHE_KEPT:
            _RUNNERS.popitem(last=False)
        return run

    def prepare(self, scale: int) -> None:
        self._runner(scale)

    def run(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise LesrcnnError(f"the engine takes an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
        xn = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.ascontiguousarray(self._runner(scale)(xn), dtype=np.float32))


def _onnx_file_scale(path: str | os.PathLike) -> int:
    from .export import _need_onnx, model_scale

    onnx = _need_onnx()
    p = Path(path)
    if not p.is_file():
        raise LesrcnnError(f"ONNX model not found: {p}")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise LesrcnnError(f"{p}: not a readable ONNX model ({_first_line(e)[:160]})") from None
    s = model_scale(proto)
    if s is None:
        raise LesrcnnError(f"{p}: no 'scale' in the model's metadata (export it with `lesrcnn export`)")
    return s


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def ort_session(model, threads: int | None = None, spin: bool = True):
    """An ONNX Runtime CPU session on a ModelProto, serialized bytes or a path, all graph
    optimisations on (Conv+ReLU/Add fusions, NCHWc layout)."""
    from .export import _need_ort

    ort = _need_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not spin:  # idle pool threads sleep at once instead of spinning (fair when sharing the CPU)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, (bytes, str)) else (str(model) if isinstance(model, os.PathLike)
                                                          else model.SerializeToString())
    try:
        return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise LesrcnnError(f"ONNX Runtime cannot load the model: {_first_line(e)[:240]}") from None


def ort_runner(src: bytes, threads: int | None = None, spin: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    sess = ort_session(src, threads or torch.get_num_threads(), spin)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def openvino_runner(src: bytes, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO on the CPU, dynamic batch/height/width, latency mode, f32 inference precision
    (no silent bf16 on CPUs that have it), ``threads`` streams' worth of threads."""
    try:
        import openvino as ov
    except ImportError:
        raise LesrcnnError("OpenVINO is not installed: pip install 'lesrcnn[openvino]'") from None
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    try:
        compiled = core.compile_model(core.read_model(src, b""), "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
        raise LesrcnnError(f"OpenVINO cannot load the model: {_first_line(e)[:240]}") from None
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()
    return run


# --- INT8 -----------------------------------------------------------------------------------------

def int8_onnx(model: LESRCNN, scale: int, method: str = INT8_METHOD, progress: bool = True,
              key: str | None = None, cache: bool = True) -> bytes:
    """The INT8 ONNX model of ``model`` at ``scale``: shipped in the package, cached, or built
    now (calibrated on :func:`calibration_set`, with a progress bar) and cached."""
    from . import __version__
    from .io import atomic_write_bytes

    name = f"{(key or digest(model))[:24]}_x{scale}_{method}_ieeb.onnx"
    for folder in (Path(__file__).parent / "pretrained" / "int8", cache_dir() / "int8") if cache else ():
        if (folder / name).is_file():
            return (folder / name).read_bytes()
    from tqdm import tqdm

    from .export import int8_model

    patches = calibration_set(scale)
    with tqdm(total=len(patches), desc=f"INT8 calibration x{scale} (once, cached)", unit="patch", file=sys.stderr,
              dynamic_ncols=True, disable=None if progress else True) as bar:
        proto = int8_model(model, scale, patches, method=method, progress=bar.update, float_hr=INT8_FLOAT_HR,
                           metadata={"calibration": f"lesrcnn {__version__} built-in set"})
    data = proto.SerializeToString()
    if not cache:
        return data
    try:
        (cache_dir() / "int8").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_dir() / "int8" / name, data)
    except OSError as e:  # a read-only home: still works, calibrates again next time
        warnings.warn(f"cannot cache the INT8 model in {cache_dir()}: {e}", stacklevel=2)
    return data


def calibration_set(scale: int, count: int = INT8_PATCHES, lr_patch: int = 48) -> list[np.ndarray]:
    """LR calibration patches that need no data set: synthetic dead-leaves images downscaled like
    the test data (see benchmarks/int8_psnr.py for the INT8 PSNR it gives on Set5/Set14)."""
    from .export import synthetic_patches

    return synthetic_patches(count, lr_patch, seed=scale, scale=scale)


# --- choosing ----------------------------------------------------------------------------------

def create(model: LESRCNN | None, backend: str = "auto", precision: str = "fp32",
           device: torch.device | str = "cpu", threads: int | None = None, scales: tuple[int, ...] = (),
           onnx_file: str | os.PathLike | None = None, progress: bool = True) -> Engine:
    """The engine for ``backend`` (``auto``: the first of :data:`AUTO_ORDER` that is installed and
    loads, with a warning for each one that fails); ``scales`` are built now."""
    if backend not in BACKENDS:
        raise LesrcnnError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise LesrcnnError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "int8" and device.type != "cpu":
        raise LesrcnnError("--precision int8 runs on the CPU (--device cpu)")
    if onnx_file is not None and backend == "torch":
        raise LesrcnnError("an .onnx file runs with --backend onnx or openvino")
    names = auto_order(precision, device) if backend == "auto" else (backend,)
    if onnx_file is not None:
        names = tuple(n for n in names if n != "torch")
    errors = []
    for name in names:
        why = installed(name)
        if why is None:
            try:
                return _build(name, model, precision, device, threads, scales, onnx_file, progress)
            except LesrcnnError as e:
                why = str(e)
        if backend != "auto":
            raise LesrcnnError(f"--backend {name}: {why}")
        errors.append(f"{name}: {why}")
        if len(errors) < len(names):
            warnings.warn(f"backend {name} unavailable ({why}); trying the next", stacklevel=2)
    raise LesrcnnError(f"no backend can run {precision}: " + "; ".join(errors))


def _build(name: str, model, precision: str, device: torch.device, threads, scales, onnx_file, progress) -> Engine:
    if name == "torch":
        if precision == "int8":
            raise LesrcnnError("the torch backend has no INT8 path: use --backend openvino or onnx")
        return TorchEngine(model, device, precision)
    if device.type != "cpu":
        raise LesrcnnError(f"--backend {name} runs on the CPU (--device cpu)")
    if precision in ("fp16", "bf16"):
        raise LesrcnnError(f"--backend {name} runs fp32 or int8, not {precision}")
    engine = RuntimeEngine(name, model, precision, threads, onnx_file, progress)
    for s in scales:
        engine.prepare(s)
    return engine
