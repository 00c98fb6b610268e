"""Deployment: ONNX export (fp32, fp16), INT8 post-training quantisation, ``lesrcnn export``.

The ONNX graph is ``torch.onnx.export`` of the network itself (the TorchScript exporter,
``dynamo=False``: it needs no onnxscript), after the exact RB rewrite
:func:`lesrcnn.model.fuse_rb`, so the graph computes ``U'(g + h0)``, one upsampler pass. Every
ablation variant and every scale of a multi-scale model exports; batch, height and width are
dynamic and the scale is baked in (one file per scale). Inference on these graphs (ONNX
Runtime, OpenVINO) lives in :mod:`lesrcnn.backends`.

``quantize_int8`` makes the INT8 model (QDQ, per-channel weights, static activation ranges
calibrated on LR patches), after cross-layer channel equalisation (``equalize``).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .errors import LesrcnnError

DEFAULT_OPSET = 17
MIN_OPSET = 11  # DepthToSpace with mode="CRD" (PixelShuffle)
VERIFY_TOL = 1e-4  # max abs difference ONNX Runtime vs PyTorch, fp32 (the bound)
VERIFY_TOL_FP16 = 5e-2
INPUT, OUTPUT = "input", "output"


def _need_onnx():
    try:
        import onnx  # noqa: F401
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

class AtScale(nn.Module):
    """``model`` at a fixed scale, float32 in and out (``dtype`` inside): what an export holds."""

    def __init__(self, model, scale: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.scale, self.dtype = model, scale, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            return self.model(x, self.scale)
        return self.model(x.to(self.dtype), self.scale).to(torch.float32)


def to_onnx(model, scale: int, opset: int = DEFAULT_OPSET, fp16: bool = False, metadata: dict | None = None):
    """An ``onnx.ModelProto`` computing ``model`` at ``scale``: float32 NCHW RGB in [0, 1] ->
    float32 NCHW (sH, sW), unclamped. With ``fp16`` the weights and arithmetic are float16 and
    Cast nodes keep the float32 interface."""
    onnx = _need_onnx()
    from . import __version__
    from .model import check_scale, fuse_rb

    if opset < MIN_OPSET:
        raise LesrcnnError(f"--opset {opset}: LESRCNN needs opset {MIN_OPSET} or later (DepthToSpace CRD)")
    if opset > min(onnx.defs.onnx_opset_version(), 20):
        raise LesrcnnError(f"--opset {opset}: the exporter supports at most {min(onnx.defs.onnx_opset_version(), 20)}")
    scale = check_scale(scale, model.scales)
    dtype = torch.float16 if fp16 else torch.float32
    net = AtScale(fuse_rb(model).to(device="cpu", dtype=dtype, memory_format=torch.contiguous_format).eval(),
                  scale, dtype)
    buf = io.BytesIO()
    dyn = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=dyn, do_constant_folding=True)
    m = onnx.load_from_string(buf.getvalue())
    m.graph.name = f"LESRCNN_x{scale}"
    m.producer_name, m.producer_version = "lesrcnn", __version__
    meta = {"architecture": "LESRCNN", "variant": model.variant, "scale": str(scale),
            "scales_of_source": ",".join(map(str, model.scales)), "precision": "fp16" if fp16 else "fp32",
            "input": "float32 NCHW RGB in [0,1], any height/width", "output": "float32 NCHW, unclamped",
            "code_version": __version__, **{k: str(val) for k, val in (metadata or {}).items()}}
    onnx.helper.set_model_props(m, meta)
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


def hr_modules(model, scale: int) -> list[str]:
    """ONNX node scopes of the RB and of every convolution that runs above LR resolution."""
    from .model import conv_calls, fuse_rb

    fused = fuse_rb(model)
    names = {id(m): n for n, m in fused.named_modules()}
    out = [f"x{scale}"]  # the RB's upsampler: torch.onnx names its scope by the ModuleDict key
    out += [names[id(c)] for c, ratio in conv_calls(fused, scale) if ratio > 1 and not
            names[id(c)].startswith("upsample.")]
    return out


def conv_nodes(proto, *modules: str) -> list[str]:
    """Names of the Conv nodes of the given top-level modules (e.g. "head", "tail")."""
    return [n.name for n in proto.graph.node if n.op_type == "Conv"
            and any(f"/{m}/" in n.name + "/" for m in modules)]


# --- verification --------------------------------------------------------------------------------

def torch_reference(model, x: np.ndarray, scale: int) -> np.ndarray:
    """The plain module's output (unfused RB, NCHW, float32 on CPU) for verification."""
    ref = model.float().eval().cpu()
    with torch.no_grad():
        return ref(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), scale).numpy()


def verify(proto, model, scale: int, size: tuple[int, int] = (37, 29), seed: int = 0) -> float:
    """Run ONNX Runtime and PyTorch on one random image; returns the max abs difference."""
    from .backends import ort_session

    rng = np.random.default_rng(seed)
    x = rng.random((1, 3, *size), dtype=np.float32)
    y = ort_session(proto).run(None, {INPUT: x})[0]
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


def synthetic_patches(count: int = 16, lr_patch: int = 64, seed: int = 0, scale: int = 2) -> list[np.ndarray]:
    """LR patches made like the test data from synthetic "dead leaves" images (occluding discs
    with power-law radii, colour gradients and fine texture: the scale-invariant edge and
    colour statistics of natural images), MATLAB-bicubic downscaled by ``scale``. Needs no
    data set: the calibration set of ``--precision int8`` when no folder is given."""
    from .resize import imresize

    rng = np.random.default_rng(seed)
    side = lr_patch * scale
    out = []
    for _ in range(count):
        img = np.empty((side, side, 3), np.float32)
        img[:] = rng.uniform(0.1, 0.9, 3)
        radii = (side / 24) * (1 - rng.random(160)) ** (-1 / 2)  # density ~ r^-3, clipped below
        for r in np.sort(np.minimum(radii, side / 2))[::-1]:  # large discs first, small ones on top
            cy, cx = rng.uniform(-r / 2, side + r / 2, 2)
            y0, y1 = max(0, int(cy - r - 1)), min(side, int(cy + r + 2))
            x0, x1 = max(0, int(cx - r - 1)), min(side, int(cx + r + 2))
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            mask = np.clip(r - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2), 0, 1)[..., None]  # soft 1-px edge
            base, grad = rng.uniform(0.0, 1.0, 3), rng.normal(0, 0.3 / side, (2, 3))
            colour = base + (yy - cy)[..., None] * grad[0] + (xx - cx)[..., None] * grad[1]
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - mask) + colour * mask
        img += rng.normal(0, rng.uniform(0.005, 0.03), img.shape).astype(np.float32)  # sensor-like texture
        hr = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        lr = imresize(hr, 1.0 / scale)
        out.append(np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255))
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
    per-channel weight quantisation from losing them. Applied to every pair of :func:`relu_pairs`
    (for LESRCNN: the IEEB's 3x3 -> 1x1 pairs and the HR chain RB -> IRB -> last conv)."""
    from .model import fuse_rb

    m = fuse_rb(model).float().eval().cpu()
    pairs = relu_pairs(m, scale)
    stats: dict = {id(b): [] for _, b, _ in pairs}

    def channel_range(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().transpose(0, 1).flatten(1).float()
        return v.amax(1) if q >= 1 else torch.quantile(v[:, ::7], q, dim=1)

    hooks = [b.register_forward_pre_hook(lambda mod, inp: stats[id(mod)].append(channel_range(inp[0])))
             for _, b, _ in pairs]
    with torch.no_grad():
        for x in patches:
            t = torch.from_numpy(x)
            m(t, scale)
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
    return m


def relu_pairs(model, scale: int) -> list[tuple[nn.Conv2d, nn.Conv2d, int]]:
    """(producer, consumer, sub) for every conv whose output reaches exactly one other conv
    through a ReLU (and PixelShuffles, ``sub`` producer channels per consumer channel) and
    nothing else: the pairs where cross-layer equalisation is exact. Found by tracing the
    module (torch.fx), so it follows the network's definition."""
    import torch.fx as fx

    gm = fx.symbolic_trace(model, concrete_args={"scale": scale})
    mods = dict(gm.named_modules())

    def conv(n: fx.Node) -> nn.Conv2d | None:
        m = mods.get(n.target) if n.op == "call_module" else None
        return m if isinstance(m, nn.Conv2d) else None

    pairs = []
    for node in gm.graph.nodes:
        a = conv(node)
        if a is None:
            continue
        n, sub, relu = node, 1, False
        while len(n.users) == 1:
            n = next(iter(n.users))
            m = mods.get(n.target) if n.op == "call_module" else None
            if isinstance(m, nn.PixelShuffle):
                sub *= m.upscale_factor ** 2
            elif n.op == "call_function" and n.target in (torch.relu, torch.nn.functional.relu):
                relu = True
            else:
                break
        b = conv(n)
        if b is not None and relu:
            pairs.append((a, b, sub))
    return pairs


def quantize_int8(proto, patches: Iterable[np.ndarray], per_channel: bool = True, method: str = "percentile",
                  exclude_io: bool = True, exclude: Iterable[str] = (), percentile: float = 99.99, progress=None):
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
            if x is not None and progress is not None:
                progress(1)
            return None if x is None else {INPUT: x}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise LesrcnnError(f"unknown calibration method {method!r}")
    exclude = (conv_nodes(proto, "head", "tail") if exclude_io else []) + list(exclude)
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
               opset: int = DEFAULT_OPSET, metadata: dict | None = None, progress=None, float_hr: int = 0):
    """What ``lesrcnn export --int8`` writes and ``--precision int8`` runs: (optionally) a
    channel-equalised copy of the network, exported to ONNX, then statically quantised with
    ranges calibrated on ``patches``. ``progress(n)`` is called per calibration patch.
    ``float_hr``: how many layers from the RB on (the upsampler, then the IRB's) stay float
    (measured: nearly all of LESRCNN's INT8 error comes from quantising the RB and what follows)."""
    src = equalize(model, patches, scale) if equalise else model
    proto = to_onnx(src, scale, opset=opset, metadata=metadata)
    hr = hr_modules(model, scale)[:float_hr]
    q = quantize_int8(proto, patches, method=method, progress=progress, exclude=conv_nodes(proto, *hr))
    if equalise or float_hr:
        props = {p.key: p.value for p in q.metadata_props}
        props["quantization"] += (", cross-layer channel equalisation" if equalise else "") + \
            (f", float {'+'.join(hr)}" if hr else "")
        del q.metadata_props[:]
        _need_onnx().helper.set_model_props(q, props)
    return q


# --- files and the command -----------------------------------------------------------------------

def save_onnx(proto, path: str | os.PathLike) -> Path:
    from .io import atomic_write_bytes

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, proto.SerializeToString())


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
    p.add_argument("--format", choices=["onnx"], default="onnx", help="output format")
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
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
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
        proto = to_onnx(ck.model, s, opset=a.opset, fp16=a.fp16, metadata={"source": src_name})
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
                from .backends import ort_session

                y = ort_session(proto).run(None, {INPUT: x})[0]
                ref = torch_reference(ck.model, x, s)
                d = float(np.abs(np.clip(y, 0, 1) - np.clip(ref, 0, 1)).mean())
                note = f", INT8 mean |error| on a calibration patch = {d * 255:.2f}/255"
        save_onnx(proto, path)
        kind = "INT8" if a.int8 else ("fp16" if a.fp16 else "fp32")
        print(f"wrote {path} (x{s}, {kind}, opset {a.opset}, dynamic height/width{note})")
    return 0
