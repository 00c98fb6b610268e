"""Deployment: ONNX export (fp32, fp16), INT8 post-training quantisation, ONNX Runtime inference.

The ONNX graph is written node by node from the network's structure (no tracing): every
ablation variant and every scale of a multi-scale model gets an exact graph, with dynamic
batch, height and width and the scale baked in (one file per scale). Two exact rewrites
make it cheaper than a literal transcription, as in the PyTorch fast path:

- RB: ``U(g) + U(h0)`` is written ``U_linear(g + h0) + 2 b`` (U is affine), one upsampler pass;
- the ReLU after the RB is applied before the last PixelShuffle (it is elementwise), and the
  mean added back at the end is the bias of the last convolution.

``onnx_runner`` turns a checkpoint (or an ``.onnx`` file) into a numpy -> numpy function
for ``lesrcnn upscale --backend onnx``; ``quantize_int8`` makes the INT8 model (QDQ, per-channel
weights, static activation ranges calibrated on LR patches cut from a folder of images).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import LesrcnnError

DEFAULT_OPSET = 17
MIN_OPSET = 11  # DepthToSpace with mode="CRD" (PixelShuffle)
VERIFY_TOL = 1e-4  # max abs difference ONNX Runtime vs PyTorch, fp32 (the bound)
VERIFY_TOL_FP16 = 5e-2
INPUT, OUTPUT = "input", "output"


def _need_onnx():
    try:
        import onnx  # noqa: F401
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError:
        raise LesrcnnError("ONNX export needs the 'onnx' package: pip install 'lesrcnn[onnx]'") from None
    return onnx


def _need_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise LesrcnnError("ONNX Runtime is not installed: pip install 'lesrcnn[onnx]'") from None
    return ort


# --- graph ---------------------------------------------------------------------------------------

def build_onnx(model, scale: int, opset: int = DEFAULT_OPSET, fp16: bool = False, metadata: dict | None = None):
    """An ``onnx.ModelProto`` computing ``model`` at ``scale``: float32 NCHW RGB in [0, 1] ->
    float32 NCHW (sH, sW), unclamped. With ``fp16`` the weights and arithmetic are float16 and
    Cast nodes keep the float32 interface."""
    onnx = _need_onnx()
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from . import __version__
    from .model import check_scale

    if opset < MIN_OPSET:
        raise LesrcnnError(f"--opset {opset}: LESRCNN needs opset {MIN_OPSET} or later (DepthToSpace CRD)")
    if opset > onnx.defs.onnx_opset_version():
        raise LesrcnnError(f"--opset {opset}: this onnx package supports at most {onnx.defs.onnx_opset_version()}")
    try:
        check_scale(int(scale), model.scales)
    except ValueError as e:
        raise LesrcnnError(str(e)) from None
    v = model.v
    wdt = np.float16 if fp16 else np.float32
    nodes: list = []
    inits: list = []
    names: set[str] = set()

    def const(name: str, t) -> str:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        inits.append(numpy_helper.from_array(a.astype(wdt), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        assert name not in names, name
        names.add(name)
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(x: str, w, name: str, bias=None) -> str:
        k = int(w.shape[-1])
        ins = [x, const(f"{name}.weight", w)] + ([const(f"{name}.bias", bias)] if bias is not None else [])
        return node("Conv", ins, name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1], dilations=[1, 1],
                    group=1)

    mean = model.mean.detach().float().cpu().view(1, 3, 1, 1)
    x = INPUT
    if fp16:
        x = node("Cast", [x], "input_fp16", to=TensorProto.FLOAT16)
    x = node("Sub", [x, const("mean", mean)], "sub_mean")
    h0 = node("Relu", [conv(x, model.head.weight, "head")], "head_relu")
    h = h0
    for i, (c3, c1) in enumerate(zip(model.body3, model.body1)):
        t = node("Relu", [conv(h, c3.weight, f"body3.{i}")], f"body3.{i}.relu")
        t = conv(t, c1.weight, f"body1.{i}")
        if v.residual:
            t = node("Add", [h, t], f"unit{i}.add")
        h = node("Relu", [t], f"unit{i}.relu")
    up = model.upsample[f"x{scale}"]
    convs = [m for m in up if isinstance(m, torch.nn.Conv2d)]
    stages = [2, 2] if scale == 4 else [scale]
    r = node("Add", [h, h0], "rb.sum") if v.local_fusion else h
    for j, (c, s) in enumerate(zip(convs, stages)):
        b = 2 * c.bias if v.local_fusion else c.bias
        r = conv(r, c.weight, f"upsample.x{scale}.{2 * j}", bias=b)
        if j == len(convs) - 1:
            r = node("Relu", [r], "rb.relu")  # commutes with the PixelShuffle that follows
        r = node("DepthToSpace", [r], f"upsample.x{scale}.{2 * j + 1}", blocksize=s, mode="CRD")
    for i, c in enumerate(model.irb):
        r = node("Relu", [conv(r, c.weight, f"irb.{i}")], f"irb.{i}.relu")
    y = conv(r, model.tail.weight, "tail", bias=mean.flatten())
    if fp16:
        y = node("Cast", [y], "output_fp32", to=TensorProto.FLOAT)
    nodes.append(helper.make_node("Identity", [y], [OUTPUT], name="output"))
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, "height", "width"])
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 3, "out_height", "out_width"])
    graph = helper.make_graph(nodes, f"LESRCNN_x{scale}", [inp], [out], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lesrcnn",
                          producer_version=__version__)
    m.ir_version = helper.find_min_ir_version_for(list(m.opset_import))  # readable by older runtimes
    meta = {"architecture": "LESRCNN", "variant": model.variant, "scale": str(scale),
            "scales_of_source": ",".join(map(str, model.scales)), "precision": "fp16" if fp16 else "fp32",
            "input": "float32 NCHW RGB in [0,1], any height/width", "output": "float32 NCHW, unclamped",
            "code_version": __version__, **{k: str(val) for k, val in (metadata or {}).items()}}
    helper.set_model_props(m, meta)
    onnx.checker.check_model(m, full_check=True)
    return m


def model_scale(proto) -> int | None:
    for p in proto.metadata_props:
        if p.key == "scale":
            try:
                return int(p.value)
            except ValueError:
                return None
    return None


# --- ONNX Runtime --------------------------------------------------------------------------------

def default_providers() -> list[str]:
    ort = _need_ort()
    avail = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in avail else []) + ["CPUExecutionProvider"]


def session(model, providers: list[str] | None = None, threads: int = 0, spin: bool = True):
    """An InferenceSession on a ModelProto, serialized bytes or a path; all graph optimisations on
    (they add the Conv+ReLU/Add fusions and the NCHWc layout on CPU)."""
    ort = _need_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not spin:  # idle pool threads sleep at once instead of spinning (fair when sharing the CPU)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, (bytes, str, os.PathLike)) else model.SerializeToString()
    if isinstance(src, os.PathLike):
        src = str(src)
    providers = providers or default_providers()
    try:
        return ort.InferenceSession(src, sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LesrcnnError(f"ONNX Runtime cannot load the model: {msg[:240]}") from None


def _wrap(sess) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise LesrcnnError(f"the ONNX model takes an N x 3 x H x W array, got shape {tuple(x.shape)}")
        return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    run.session = sess  # type: ignore[attr-defined]
    return run


_RUNNERS: dict = {}


def onnx_runner(checkpoint, scale: int, providers: list[str] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """numpy NCHW float32 in [0, 1] -> numpy NCHW float32 SR output, through ONNX Runtime.

    ``checkpoint``: a ``weights.Checkpoint`` (exported in memory, cached per model and scale) or
    the path of an ``.onnx`` file (its baked-in scale must be ``scale``). CPU execution provider
    by default, CUDA first when onnxruntime has it.
    """
    onnx = _need_onnx()
    providers = list(providers) if providers else default_providers()
    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if not path.is_file():
            raise LesrcnnError(f"ONNX model not found: {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise LesrcnnError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:160] if str(e) else ''})") \
                from None
        s = model_scale(proto)
        if s is not None and s != scale:
            raise LesrcnnError(f"{path} is a x{s} model; it cannot upscale x{scale}")
        return _wrap(session(str(path), providers))
    model = checkpoint.model
    if scale not in model.scales:
        raise LesrcnnError(f"{checkpoint.source} is a x{'/x'.join(map(str, model.scales))} model; "
                           f"it cannot upscale x{scale}")
    key = (id(model), scale, tuple(providers), sum(p._version for p in model.parameters()))
    if key not in _RUNNERS:
        if len(_RUNNERS) > 8:
            _RUNNERS.clear()
        proto = build_onnx(model, scale, metadata={"source": Path(str(checkpoint.source)).name})
        _RUNNERS[key] = _wrap(session(proto, providers))
    return _RUNNERS[key]


# --- verification --------------------------------------------------------------------------------

def torch_reference(model, x: np.ndarray, scale: int) -> np.ndarray:
    """The plain eager PyTorch output (unfused, NCHW, float32) for verification."""
    import copy

    import torch

    ref = copy.deepcopy(model).float().eval().cpu()
    ref.fuse_rb = False
    ref.fast_cpu = False
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y = ref(t, scale) if ref.multiscale else ref(t)
    return y.numpy()


def verify(proto, model, scale: int, size: tuple[int, int] = (37, 29), seed: int = 0,
           providers: list[str] | None = None) -> float:
    """Run ONNX Runtime and PyTorch on one random image; returns the max abs difference."""
    rng = np.random.default_rng(seed)
    x = rng.random((1, 3, *size), dtype=np.float32)
    sess = session(proto, providers or ["CPUExecutionProvider"])
    y = sess.run(None, {INPUT: x})[0]
    ref = torch_reference(model, x, scale)
    if y.shape != ref.shape:
        raise LesrcnnError(f"ONNX output shape {y.shape} differs from PyTorch {ref.shape}")
    return float(np.abs(y - ref).max())


# --- INT8 ----------------------------------------------------------------------------------------

def calibration_patches(folder: str | os.PathLike, scale: int, count: int = 48, lr_patch: int = 64,
                        seed: int = 0) -> list[np.ndarray]:
    """``count`` LR patches (1 x 3 x p x p float32 in [0, 1]) made like the test data: random HR
    crops of p*s pixels of the images in ``folder``, MATLAB-bicubic downscaled by ``scale``."""
    from .data import list_images, read_rgb
    from .resize import imresize

    folder = Path(folder)
    if not folder.is_dir():
        raise LesrcnnError(f"--calib: not a folder: {folder}")
    files = list_images(folder)
    if not files:
        raise LesrcnnError(f"--calib: no images in {folder}")
    rng = np.random.default_rng(seed)
    images = [read_rgb(f) for f in files[:4096]]
    side = min(lr_patch * scale, max(min(im.shape[:2]) for im in images))
    side -= side % scale
    if side < 8 * scale:
        raise LesrcnnError(f"--calib: no image in {folder} is large enough for x{scale} patches")
    images = [im for im in images if min(im.shape[:2]) >= side]  # equal patch sizes (histogram calibrators)
    out: list[np.ndarray] = []
    order = rng.permutation(len(images))
    for i in range(count):
        img = images[order[i % len(images)]]
        h, w = img.shape[:2]
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        lr = imresize(img[y0:y0 + side, x0:x0 + side], 1.0 / scale)
        out.append(np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255))
    return out


def synthetic_patches(count: int = 16, lr_patch: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Smooth images with edges, when no calibration folder is given (benchmarks: speed only)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:lr_patch, 0:lr_patch].astype(np.float32)
    out = []
    for _ in range(count):
        img = np.empty((1, 3, lr_patch, lr_patch), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.05, 0.5, 3)
            img[0, c] = 0.5 + 0.35 * np.sin(fx * xx + ph) * np.cos(fy * yy - c)
        img[:, :, (xx // 7 + yy // 5) % 2 == 0] *= 0.6
        out.append(np.clip(img + rng.normal(0, 0.01, img.shape).astype(np.float32), 0, 1))
    return out


def equalize(model, patches: Iterable[np.ndarray], scale: int, beta: float = 1.0, q: float = 0.9999,
             max_gain: float = 4.0):
    """A copy of ``model`` computing the same function (exactly, up to float rounding) whose
    ReLU-separated channels have balanced activation ranges, for per-tensor INT8 activations.

    Cross-layer equalisation (Nagel et al., ICCV 2019): ReLU is positively homogeneous, so output
    channel c of a convolution may be multiplied by s_c > 0 and the next convolution's input
    channel c divided by s_c. Here s_c = min((M / m_c) ** beta, max_gain), m_c the channel's
    calibrated range (quantile ``q`` of its activations on ``patches``) and M the largest: weak
    channels get more of the 256 activation levels, and the cap keeps the next layer's
    per-channel weight quantisation from losing them. Applied to the IEEB's 3x3 -> 1x1 pairs and
    to the HR chain RB -> IRB -> last conv (through the PixelShuffle)."""
    import copy

    import torch

    m = copy.deepcopy(model).float().eval().cpu()
    m.fast_cpu, m.fuse_rb = False, False
    up = m.upsample[f"x{scale}"]
    up_last = [c for c in up if isinstance(c, torch.nn.Conv2d)][-1]
    r = (scale if scale != 4 else 2) ** 2
    # (producer conv, consumer conv, sub-channels per channel of the producer)
    pairs = [(c3, c1, 1) for c3, c1 in zip(m.body3, m.body1)]
    chain = [up_last] + list(m.irb) + [m.tail]
    pairs += [(a, b, r if a is up_last else 1) for a, b in zip(chain[:-1], chain[1:])]
    stats: dict = {id(b): [] for _, b, _ in pairs}

    def channel_range(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().transpose(0, 1).flatten(1).float()
        return v.amax(1) if q >= 1 else torch.quantile(v[:, ::7], q, dim=1)

    hooks = [b.register_forward_pre_hook(lambda mod, inp: stats[id(mod)].append(channel_range(inp[0])))
             for _, b, _ in pairs]
    with torch.no_grad():
        for x in patches:
            t = torch.from_numpy(x)
            m(t, scale) if m.multiscale else m(t)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for a, b, sub in pairs:
            rng = torch.stack(stats[id(b)]).amax(0).double()
            ok = rng > rng.max() * 1e-4
            s = torch.ones_like(rng)
            s[ok] = ((rng.max() / rng[ok]) ** beta).clamp(max=max_gain)
            s_out = s.repeat_interleave(sub) if sub > 1 else s  # PixelShuffle: channel c <- c*r^2 .. c*r^2+r^2-1
            a.weight.mul_(s_out.view(-1, 1, 1, 1).to(a.weight.dtype))
            if a.bias is not None:
                a.bias.mul_(s_out.to(a.bias.dtype))
            b.weight.div_(s.view(1, -1, 1, 1).to(b.weight.dtype))
    m.fast_cpu, m.fuse_rb = True, True
    return m


def quantize_int8(proto, patches: Iterable[np.ndarray], per_channel: bool = True, method: str = "percentile",
                  exclude_io: bool = True, exclude: Iterable[str] = (), percentile: float = 99.99):
    """Static post-training INT8 (QDQ: uint8 activations, int8 per-channel weights) with ONNX
    Runtime's tooling; activation ranges from ``patches``. The first and last convolutions (3
    channels in / out) stay float: they cost ~0.5% of the MACs and hold most of the error."""
    onnx = _need_onnx()
    _need_ort()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    patches = list(patches)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(patches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT: x}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise LesrcnnError(f"unknown calibration method {method!r}")
    exclude = (["head", "tail"] if exclude_io else []) + list(exclude)
    with tempfile.TemporaryDirectory(prefix="lesrcnn-int8-") as d:
        src, pre, dst = Path(d, "fp32.onnx"), Path(d, "pre.onnx"), Path(d, "int8.onnx")
        onnx.save(proto, str(src))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:
            pre = src
        extra = {"CalibTensorRangeSymmetric": False, "CalibPercentile": percentile}
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # calibrators print on stdout
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=exclude, extra_options=extra)
        q = onnx.load(str(dst))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(precision="int8", quantization=f"static QDQ, u8 activations, s8 {'per-channel' if per_channel else 'per-tensor'} "
                                              f"weights, {method} calibration on {len(patches)} patches")
    del q.metadata_props[:]
    onnx.helper.set_model_props(q, props)
    return q


def int8_model(model, scale: int, patches: list[np.ndarray], method: str = "percentile", equalise: bool = True,
               opset: int = DEFAULT_OPSET, metadata: dict | None = None):
    """What ``lesrcnn export --int8`` writes: (optionally) channel-equalised copy of the network,
    exported to ONNX, then statically quantised with ranges calibrated on ``patches``."""
    src = equalize(model, patches, scale) if equalise else model
    proto = build_onnx(src, scale, opset=opset, metadata=metadata)
    q = quantize_int8(proto, patches, method=method)
    if equalise:
        props = {p.key: p.value for p in q.metadata_props}
        props["quantization"] += ", cross-layer channel equalisation"
        del q.metadata_props[:]
        _need_onnx().helper.set_model_props(q, props)
    return q


# --- files and the command -----------------------------------------------------------------------

def save_onnx(proto, path: str | os.PathLike) -> Path:
    """Atomic write (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a normal file's mode instead
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def output_paths(out: str, scales: list[int]) -> dict[int, Path]:
    """One file per scale: ``-o model.onnx`` for one scale; for several, ``{scale}`` in the name is
    replaced, otherwise ``_x{s}`` is added before the suffix."""
    if len(scales) == 1 and "{scale}" not in out:
        return {scales[0]: Path(out)}
    p = Path(out)
    if "{scale}" in out:
        return {s: Path(out.replace("{scale}", str(s))) for s in scales}
    suffix = p.suffix or ".onnx"
    return {s: p.with_name(f"{p.stem}_x{s}{suffix}") for s in scales}


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export to ONNX (fp32, fp16 or INT8), verified with ONNX Runtime")
    p.add_argument("--weights", help="checkpoint (ours or an official .pth); default: the embedded weights")
    p.add_argument("--scale", "-s", type=int, action="append", choices=[2, 3, 4],
                   help="scale to bake in (repeatable; default: every scale of the checkpoint, one file each)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("-o", "--output", required=True,
                   help="output file; with several scales '{scale}' in the name is replaced (else _xS is added)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="float16 weights and arithmetic (float32 input/output)")
    prec.add_argument("--int8", action="store_true", help="static INT8 quantisation (needs --calib)")
    p.add_argument("--calib", help="folder of images: LR calibration patches for --int8 (e.g. T91)")
    p.add_argument("--calib-patches", type=int, default=48, help="number of calibration patches (default 48)")
    p.add_argument("--calib-method", choices=["minmax", "percentile", "entropy"], default="percentile",
                   help="activation ranges: percentile (99.99%%, default), minmax or entropy")
    p.add_argument("--no-equalise", action="store_true",
                   help="INT8 without cross-layer channel equalisation (on by default: exact in fp32, "
                        "less INT8 error)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.set_defaults(func=cmd_export)


def cmd_export(a) -> int:
    from . import weights as W

    if a.int8 and not a.calib:
        raise LesrcnnError("--int8 needs --calib DIR (a folder of images for calibration patches)")
    if a.calib and not a.int8:
        raise LesrcnnError("--calib is only used with --int8")
    if a.calib_patches < 1:
        raise LesrcnnError("--calib-patches must be at least 1")
    ck = W.load(a.weights)
    scales = sorted(set(a.scale)) if a.scale else list(ck.scales)
    for s in scales:
        ck.require_scale(s)
    paths = output_paths(a.output, scales)
    for s, path in paths.items():
        if path.exists() and not a.overwrite:
            raise LesrcnnError(f"{path} exists; pass --overwrite to replace it")
        if path.is_dir():
            raise LesrcnnError(f"{path} is a folder")
    if a.int8:
        Path(a.calib)  # checked in calibration_patches
    src_name = Path(str(ck.source)).name
    for s, path in paths.items():
        proto = build_onnx(ck.model, s, opset=a.opset, fp16=a.fp16, metadata={"source": src_name})
        note = ""
        if not a.no_verify:
            diff = verify(proto, ck.model, s)
            tol = VERIFY_TOL_FP16 if a.fp16 else VERIFY_TOL
            if not diff < tol:
                raise LesrcnnError(f"x{s}: ONNX Runtime differs from PyTorch by {diff:.3g} (limit {tol:g}); "
                                   "nothing written")
            note = f", max |ORT - PyTorch| = {diff:.2e}"
        if a.int8:
            print(f"x{s}: calibrating INT8 on {a.calib_patches} patches from {a.calib} (a minute or two) ...",
                  file=sys.stderr)
            patches = calibration_patches(a.calib, s, a.calib_patches)
            proto = int8_model(ck.model, s, patches, method=a.calib_method, equalise=not a.no_equalise,
                               opset=a.opset, metadata={"source": src_name})
            import onnx
            onnx.checker.check_model(proto)
            if not a.no_verify:
                x = patches[0]
                y = session(proto, ["CPUExecutionProvider"]).run(None, {INPUT: x})[0]
                ref = torch_reference(ck.model, x, s)
                d = float(np.abs(np.clip(y, 0, 1) - np.clip(ref, 0, 1)).mean())
                note = f", INT8 mean |error| on a calibration patch = {d * 255:.2f}/255"
        save_onnx(proto, path)
        kind = "INT8" if a.int8 else ("fp16" if a.fp16 else "fp32")
        print(f"wrote {path} (x{s}, {kind}, opset {a.opset}, dynamic height/width{note})")
    return 0
