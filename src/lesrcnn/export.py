"""Deployment: ONNX export (fp32, fp16), the INT8 recipe, ``lesrcnn export``.

The graph is ``torch.onnx.export`` (TorchScript exporter: no onnxscript needed) of the fused-RB
network (one upsampler pass), batch/height/width dynamic, the scale baked in (one file per scale).
:func:`int8_model` is the one INT8 recipe: ``export --int8`` writes it, ``--precision int8`` runs it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import LesrcnnError
from .io import atomic_write_bytes, check_output
from .model import check_scale, fuse_rb, stages

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 11, 20  # DepthToSpace mode="CRD" (PixelShuffle); the TorchScript exporter's last
VERIFY_TOL = 1e-4  # max abs difference ONNX Runtime vs PyTorch, fp32 (the bound)
VERIFY_TOL_FP16 = 5e-2
INPUT, OUTPUT = "input", "output"
# The INT8 recipe (benchmarks/results/int8_psnr.txt), named in the INT8 file names: percentile ranges on
# INT8_PATCHES synthetic LR patches, cross-layer equalisation, static QDQ of the IEEB: its convolutions
# (INT8_MODULES) and the Adds/ReLUs between them (ONNX Runtime's default op set; convolution inputs alone
# lost 0.099 dB against 0.058 with the official x2 on Set5). The HR side stays float (0.35 dB per layer).
INT8_RECIPE = "pct-cle-ieeb-ops"
INT8_PATCHES = 32
INT8_MODULES = ("body3", "body1")


class AtScale(nn.Module):
    """``model`` at a fixed scale, float32 in and out (``dtype`` inside): what an export holds."""

    def __init__(self, model, scale: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.scale, self.dtype = model, scale, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype), self.scale).to(torch.float32)


def to_onnx(model, scale: int, opset: int = DEFAULT_OPSET, fp16: bool = False, metadata: dict | None = None):
    """An ``onnx.ModelProto`` computing ``model`` at ``scale``: float32 NCHW RGB in [0, 1] ->
    float32 NCHW (sH, sW), unclamped; with ``fp16``, float16 inside behind Cast nodes."""
    import onnx  # the 'onnx' extra (a missing extra: cli.main names it)

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LesrcnnError(f"--opset {opset}: LESRCNN needs opset {MIN_OPSET} to {MAX_OPSET} "
                           "(DepthToSpace CRD)")
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
            "code_version": __version__}
    onnx.helper.set_model_props(m, {k: str(v) for k, v in {**meta, **(metadata or {})}.items()})
    onnx.checker.check_model(m, full_check=True)
    return m


def torch_reference(model, x: np.ndarray, scale: int) -> np.ndarray:
    """The plain module's output (unfused RB, NCHW, float32 on CPU) for verification."""
    with torch.no_grad():
        return model.float().eval().cpu()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), scale).numpy()


def verify(proto, model, scale: int) -> float:
    """Run ONNX Runtime and PyTorch on one random image; returns the max abs difference."""
    from .backends import ort_runner

    x = np.random.default_rng(0).random((1, 3, 37, 29), dtype=np.float32)
    return float(np.abs(ort_runner(proto.SerializeToString())(x) - torch_reference(model, x, scale)).max())


def synthetic_patches(count: int = INT8_PATCHES, lr_patch: int = 48, scale: int = 2) -> list[np.ndarray]:
    """The built-in calibration set (no data set needed): synthetic "dead leaves" images (discs with power-law
    radii, colour gradients, noise: natural images' scale-invariant statistics), downscaled like the test data."""
    from .resize import imresize

    rng = np.random.default_rng(scale)
    side = lr_patch * scale
    out = []
    for _ in range(count):
        img = np.full((side, side, 3), rng.uniform(0.1, 0.9, 3), np.float32)
        radii = (side / 24) * (1 - rng.random(160)) ** (-1 / 2)  # density ~ r^-3, clipped below
        for r in np.sort(np.minimum(radii, side / 2))[::-1]:  # large discs first, small ones on top
            cy, cx = rng.uniform(-r / 2, side + r / 2, 2)
            y0, y1 = max(0, int(cy - r - 1)), min(side, int(cy + r + 2))
            x0, x1 = max(0, int(cx - r - 1)), min(side, int(cx + r + 2))  # never empty: cy, cx near the image
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            mask = np.clip(r - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2), 0, 1)[..., None]  # soft 1-px edge
            base, grad = rng.uniform(0.0, 1.0, 3), rng.normal(0, 0.3 / side, (2, 3))
            colour = base + (yy - cy)[..., None] * grad[0] + (xx - cx)[..., None] * grad[1]
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - mask) + colour * mask
        img += rng.normal(0, rng.uniform(0.005, 0.03), img.shape).astype(np.float32)  # sensor-like texture
        lr = imresize(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), 1.0 / scale)
        out.append(np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255))
    return out


def equalize(model, patches: Iterable[np.ndarray], scale: int, q: float = 0.9999, max_gain: float = 4.0):
    """The fused ``model``, cross-layer equalised (Nagel et al. ICCV 2019) over each pair of convolutions
    joined by a ReLU alone (or PixelShuffles: ``sub`` producer channels per consumer channel); exact as
    ReLU(s x) = s ReLU(x), s > 0. Weak channels get more INT8 levels; ``max_gain`` bounds the consumer's
    loss of them."""
    m = fuse_rb(model).float().eval().cpu()
    hr = [[c for c in m.upsample[f"x{scale}"] if isinstance(c, nn.Conv2d)][-1], *m.irb, m.tail]
    pairs = ([(a, b, 1) for a, b in zip(m.body3, m.body1)] + [(hr[0], hr[1], stages(scale)[-1] ** 2)]
             + [(a, b, 1) for a, b in zip(hr[1:-1], hr[2:])])
    stats: dict = {id(b): [] for _, b, _ in pairs}

    def record(mod, inp):
        v = inp[0].detach().transpose(0, 1).flatten(1).float()
        stats[id(mod)].append(torch.quantile(v[:, ::7], q, dim=1))

    hooks = [b.register_forward_pre_hook(record) for _, b, _ in pairs]
    with torch.no_grad():
        for x in patches:
            m(torch.from_numpy(x), scale)
        for h in hooks:
            h.remove()
        for a, b, sub in pairs:
            rng = torch.stack(stats[id(b)]).amax(0).double()
            ok = rng > rng.max() * 1e-4
            s = torch.ones_like(rng)
            s[ok] = (rng.max() / rng[ok]).clamp(max=max_gain)
            s_out = s.repeat_interleave(sub)  # PixelShuffle: channel c <- c*r^2 .. c*r^2+r^2-1
            a.weight.mul_(s_out.view(-1, 1, 1, 1).to(a.weight.dtype))
            if a.bias is not None:
                a.bias.mul_(s_out.to(a.bias.dtype))
            b.weight.div_(s.view(1, -1, 1, 1).to(b.weight.dtype))
    return m


def int8_model(model, scale: int, patches: list[np.ndarray] | None = None, metadata: dict | None = None,
               progress=None):
    """THE INT8 recipe (``--precision int8``, ``export --int8``): the equalised network, its IEEB quantised by
    ONNX Runtime's tooling on ``patches`` (default: the built-in set), wrapped in ``progress`` (tqdm)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    patches = synthetic_patches(scale=scale) if patches is None else patches
    proto = to_onnx(equalize(model, patches, scale), scale, metadata=metadata)
    feed = ({INPUT: x} for x in (patches if progress is None else progress(patches)))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feed, None)

    g = proto.graph
    consts = {o for n in g.node if n.op_type == "Constant" for o in n.output} | {i.name for i in g.initializer}
    exclude = [n.name for n in g.node  # float: the convolutions but the IEEB's, the mean shift (OpenVINO fails)
               if n.op_type == "Conv" and not any(f"/{m}" in n.name for m in INT8_MODULES)
               or n.op_type == "Add" and consts.intersection(n.input)]
    with tempfile.TemporaryDirectory(prefix="lesrcnn-int8-") as d, open(os.devnull, "w") as null:
        onnx.save(proto, str(Path(d, "fp32.onnx")))
        logging.disable(logging.WARNING)  # the tool's advice to pre-process (root logger) ...
        try:
            with contextlib.redirect_stdout(null):  # ... and the calibrators' prints
                quantize_static(str(Path(d, "fp32.onnx")), str(Path(d, "int8.onnx")), Reader(),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=exclude,
                                extra_options={"CalibTensorRangeSymmetric": False, "CalibPercentile": 99.99})
        finally:
            logging.disable(logging.NOTSET)
        q = onnx.load(str(Path(d, "int8.onnx")))
    what = (f"{INT8_RECIPE}: static QDQ of {'+'.join(INT8_MODULES)} and the Adds/ReLUs between them (u8 "
            f"activations, s8 per-channel weights), percentile ranges on {len(patches)} patches")
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(q, {**props, "precision": "int8", "quantization": what})
    return q


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
    prec.add_argument("--int8", action="store_true", help="INT8: the model --precision int8 runs (shipped for "
                      "the embedded weights, else calibrated on the built-in synthetic set and cached)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.set_defaults(func=cmd_export)


def cmd_export(a) -> int:
    from . import weights as W
    from .backends import int8_onnx, ort_runner

    if a.int8 and a.opset != DEFAULT_OPSET:
        raise LesrcnnError(f"--int8 writes the model --precision int8 runs, opset {DEFAULT_OPSET}")
    ck = W.load(a.weights, *(a.scale or ()))
    scales = sorted(set(a.scale or ck.scales))
    out = a.output  # one file per scale: "{scale}" in the name replaced, else _xS added if several
    if "{scale}" not in out and len(scales) > 1:
        out = str(Path(out).with_name(f"{Path(out).stem}_x{{scale}}{Path(out).suffix or '.onnx'}"))
    paths = {s: Path(out.replace("{scale}", str(s))) for s in scales}
    for path in paths.values():
        check_output(path, a.overwrite)
    kind = "INT8" if a.int8 else ("fp16" if a.fp16 else "fp32")
    for s, path in paths.items():
        note = ""
        if a.int8:  # the very model --precision int8 runs: shipped, cached, or calibrated now and cached
            data = int8_onnx(ck.model, s)
            if not a.no_verify:
                x = synthetic_patches(1, scale=s)[0]
                y = ort_runner(data)(x)
                d = np.abs(np.clip(y, 0, 1) - np.clip(torch_reference(ck.model, x, s), 0, 1)).mean()
                note = f", INT8 mean |error| on a synthetic patch = {d * 255:.2f}/255"
        else:
            proto = to_onnx(ck.model, s, a.opset, a.fp16, metadata={"source": Path(str(ck.source)).name})
            data = proto.SerializeToString()
            if not a.no_verify:
                diff, tol = verify(proto, ck.model, s), VERIFY_TOL_FP16 if a.fp16 else VERIFY_TOL
                if not diff < tol:
                    raise LesrcnnError(f"x{s}: ONNX Runtime differs from PyTorch by {diff:.3g} "
                                       f"(limit {tol:g}); nothing written")
                note = f", max |ORT - PyTorch| = {diff:.2e}"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        print(f"wrote {path} (x{s}, {kind}, opset {a.opset}, dynamic height/width{note})")
    return 0
