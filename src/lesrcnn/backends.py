"""Inference backends behind one interface: ``engine(x, scale) -> y`` on float32 NCHW tensors.

``torch`` (on CPU in fp32 the fused oneDNN runner of :mod:`lesrcnn.accel`; on CUDA/MPS the module
in fp32/fp16/bf16), ``onnx`` (ONNX Runtime) and ``openvino`` on the exported graph, fp32 or INT8,
and ``auto``: the first of :data:`AUTO_ORDER` that is installed and loads. Compiled runtimes are
cached per (backend, weights content hash, scale, precision, threads) with dynamic height/width,
so a folder of images compiles once. INT8 models are built once per (weights hash, scale, recipe)
and kept in the user's cache folder, or shipped in the package for the embedded weights.
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

from .errors import LesrcnnError, first_line
from .model import LESRCNN, check_scale, fuse_rb

BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The rule behind ``auto`` on a CPU, from `lesrcnn bench` side by side on one machine (x2,
# 256x256 -> 512x512, 2 threads; benchmarks/results/bench_cpu.txt): OpenVINO fp32 is the fastest
# fp32 runtime and OpenVINO INT8 the fastest INT8 one; ONNX Runtime is next; our fused oneDNN
# PyTorch path last. On a GPU (CUDA/MPS) the torch backend is the only one.
AUTO_ORDER = {"fp32": ("openvino", "onnx", "torch"), "int8": ("openvino", "onnx")}
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
    out = []
    for name in auto_order(precision, torch.device(device)):
        why = installed(name)
        picked = any(st == "picked" for _, st in out)
        out.append((name, f"not installed: {why}" if why else
                    "fallback if the one above fails to load" if picked else "picked"))
    return out


class Engine(nn.Module):
    """``engine(x, scale)``: NCHW float32 RGB in [0, 1] -> NCHW float32 SR, unclamped, on the CPU (torch:
    on its device); a module holding the model, so ``scales`` and ``receptive_margin()`` answer as for it."""

    name = "?"

    def __init__(self, model: LESRCNN | None, precision: str, scales: tuple[int, ...] | None = None):
        super().__init__()
        self.model, self.precision = model, precision
        self.scales = tuple(scales or model.scales)

    def receptive_margin(self) -> int:
        return (self.model or LESRCNN(self.scales)).receptive_margin()

    def prepare(self, scale: int) -> None:
        """Build (compile) what ``scale`` needs now, so that load failures show up here."""

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if scale is None:
            if len(self.scales) > 1:
                raise LesrcnnError("a multi-scale model needs the scale: engine(x, scale)")
            scale = self.scales[0]
        return self.run(x, check_scale(scale, self.scales))

    def run(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: LESRCNN, device: torch.device, precision: str = "fp32"):
        from . import accel
        from .upscale import prepare

        super().__init__(model, precision)
        self.device = device
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        cpu32 = device.type == "cpu" and precision == "fp32" and accel.available()
        self.fast = accel.CpuAccelerator(model) if cpu32 else None
        self.net = None if cpu32 else prepare(fuse_rb(model), device, dtype)
        self.fp32 = None if precision == "fp32" else prepare(fuse_rb(model), device, torch.float32)

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


class RuntimeEngine(Engine):
    """ONNX Runtime or OpenVINO on the exported graph of each scale (built on first use)."""

    def __init__(self, name: str, model: LESRCNN | None, precision: str = "fp32", threads: int | None = None,
                 onnx_file: str | os.PathLike | None = None, progress: bool = True):
        super().__init__(model, precision, None if onnx_file is None else (_onnx_file_scale(onnx_file),))
        self.name, self.threads, self.onnx_file, self.progress = name, threads, onnx_file, progress
        self.device = torch.device("cpu")
        self._key = digest(model) if onnx_file is None else str(Path(onnx_file).resolve())

    def _runner(self, scale: int) -> Callable[[np.ndarray], np.ndarray]:
        key = (self.name, self._key, scale, self.precision, self.threads)
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
        _RUNNERS[key] = ort_runner(src, self.threads) if self.name == "onnx" else openvino_runner(src, self.threads)
        if len(_RUNNERS) > _CACHE_KEPT:
            _RUNNERS.popitem(last=False)
        return _RUNNERS[key]

    def prepare(self, scale: int) -> None:
        self._runner(scale)

    def run(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise LesrcnnError(f"the engine takes an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
        xn = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.ascontiguousarray(self._runner(scale)(xn), dtype=np.float32))


def _onnx_file_scale(path: str | os.PathLike) -> int:
    from .export import model_scale, need

    onnx = need("onnx")
    if not Path(path).is_file():
        raise LesrcnnError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise LesrcnnError(f"{path}: not a readable ONNX model ({first_line(e)[:160]})") from None
    s = model_scale(proto)
    if s is None:
        raise LesrcnnError(f"{path}: no 'scale' in the model's metadata (export it with `lesrcnn export`)")
    return s


def ort_session(model, threads: int | None = None, spin: bool = True):
    """An ONNX Runtime CPU session (all graph optimisations) on a ModelProto, bytes or a path;
    ``spin=False``: idle pool threads sleep at once (fair when sharing the CPU)."""
    from .export import need

    ort = need("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = threads or 0
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else os.fspath(model) \
        if isinstance(model, os.PathLike) else model
    try:
        return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise LesrcnnError(f"ONNX Runtime cannot load the model: {first_line(e)[:240]}") from None


def ort_runner(src: bytes, threads: int | None = None, spin: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    sess = ort_session(src, threads or torch.get_num_threads(), spin)
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

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()
    return run


def int8_name(key: str, scale: int) -> str:
    """The INT8 model's file name: the weights' content hash, the scale and the recipe."""
    from .export import INT8_RECIPE

    return f"{key[:24]}_x{scale}_{INT8_RECIPE}.onnx"


def int8_onnx(model: LESRCNN, scale: int, progress: bool = True, key: str | None = None, cache: bool = True) -> bytes:
    """The INT8 ONNX model (:func:`lesrcnn.export.int8_model`) of ``model`` at ``scale``: shipped
    in the package, cached, or calibrated now (with a progress bar) and cached."""
    from tqdm import tqdm

    from . import __version__
    from .export import INT8_PATCHES, int8_model
    from .io import atomic_write_bytes

    name = int8_name(key or digest(model), scale)
    for folder in (Path(__file__).parent / "pretrained" / "int8", cache_dir() / "int8") if cache else ():
        if (folder / name).is_file():
            return (folder / name).read_bytes()
    with tqdm(total=INT8_PATCHES, desc=f"INT8 calibration x{scale} (once, cached)", unit="patch", file=sys.stderr,
              dynamic_ncols=True, disable=None if progress else True) as bar:
        data = int8_model(model, scale, progress=bar.update,
                          metadata={"calibration": f"lesrcnn {__version__} built-in set"}).SerializeToString()
    if cache:
        try:
            (cache_dir() / "int8").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache_dir() / "int8" / name, data)
        except OSError as e:  # a read-only home: still works, calibrates again next time
            warnings.warn(f"cannot cache the INT8 model in {cache_dir()}: {e}", stacklevel=2)
    return data


def create(model: LESRCNN | None, backend: str = "auto", precision: str = "fp32",
           device: torch.device | str = "cpu", threads: int | None = None, scales: tuple[int, ...] = (),
           onnx_file: str | os.PathLike | None = None, progress: bool = True) -> Engine:
    """The engine for ``backend`` (``auto``: the first of :data:`AUTO_ORDER` that is installed and
    loads, with a warning for each one that fails); ``scales`` are built now."""
    device = torch.device(device)  # backend and precision: checked by the callers (Upscaler, argparse)
    if precision == "int8" and device.type != "cpu":
        raise LesrcnnError("--precision int8 runs on the CPU (--device cpu)")
    if onnx_file is not None and backend == "torch":
        raise LesrcnnError("an .onnx file runs with --backend onnx or openvino")
    names = auto_order(precision, device) if backend == "auto" else (backend,)
    names = tuple(n for n in names if onnx_file is None or n != "torch")
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
