"""The LESRCNN network (Tian et al., KBS 2020), as published and as released.

Structure (see docs/LESRCNN.md of the project spec):
  mean shift -> IEEB (c1 + 8 heterogeneous residual units) -> RB (one sub-pixel
  upsampler shared by the global features g and the local features h0) -> IRB
  (4 x conv3x3+ReLU at HR, conv3x3 64->3) -> mean shift back.

The ablation variants of the paper are options of the same class (``variant=``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (2, 3, 4)
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
FEATURES = 64
UNITS = 8


@dataclass(frozen=True)
class Variant:
    """Switches that distinguish the paper's ablation networks (Tables 1-3)."""

    hetero: bool = True  # 3x3 + 1x1 pairs (False: every 1x1 is a 3x3, the 'SN' network)
    residual: bool = True  # units add their input (IEEB) instead of a plain stack (HN/SN)
    local_fusion: bool = True  # RB: upsample h0 too and add it (IEEB+RB, full)
    irb: bool = True  # the four HR 3x3 layers before the output conv


VARIANTS: dict[str, Variant] = {
    "full": Variant(),
    "ieeb+rb": Variant(irb=False),
    "ieeb": Variant(local_fusion=False, irb=False),
    "hn": Variant(residual=False, local_fusion=False, irb=False),
    "sn": Variant(hetero=False, residual=False, local_fusion=False, irb=False),
}


def check_scale(scale: int, allowed: tuple[int, ...] = SCALES) -> int:
    if scale not in allowed:
        raise ValueError(f"unsupported scale {scale!r}: this model serves x{', x'.join(map(str, allowed))}")
    return int(scale)


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler with bias and no activation: x2/x3 one stage, x4 two x2 stages."""

    def __init__(self, scale: int, features: int = FEATURES):
        check_scale(scale)
        stages = [2, 2] if scale == 4 else [scale]
        layers: list[nn.Module] = []
        for r in stages:
            layers += [nn.Conv2d(features, features * r * r, 3, padding=1, bias=True), nn.PixelShuffle(r)]
        super().__init__(*layers)
        self.scale = scale

    def forward_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """U(a) + U(b) computed as one pass: U is affine, so U(a)+U(b) = U_linear(a+b) + 2*bias path."""
        x = a + b
        for m in self:
            x = F.conv2d(x, m.weight, 2 * m.bias, padding=1) if isinstance(m, nn.Conv2d) else m(x)
        return x


class LESRCNN(nn.Module):
    """LESRCNN for one scale (``scales=(s,)``) or the multi-scale LESRCNN-S (``scales=(2, 3, 4)``).

    A single-scale model is called as ``model(x)``; a multi-scale one as ``model(x, scale)``.
    Input and output are RGB in [0, 1], NCHW (channels-last tensors work and are faster on CPU).
    """

    def __init__(
        self,
        scales: tuple[int, ...] | int = 2,
        variant: str = "full",
        mean: tuple[float, float, float] = DIV2K_MEAN,
        features: int = FEATURES,
    ):
        super().__init__()
        scales = (scales,) if isinstance(scales, int) else tuple(sorted(set(scales)))
        for s in scales:
            check_scale(s)
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
        self.scales = scales
        self.variant = variant
        self.features = features
        v = self.v = VARIANTS[variant]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Conv2d(3, features, 3, padding=1, bias=False)
        k = 1 if v.hetero else 3
        self.body3 = nn.ModuleList(nn.Conv2d(features, features, 3, padding=1, bias=False) for _ in range(UNITS))
        self.body1 = nn.ModuleList(nn.Conv2d(features, features, k, padding=k // 2, bias=False) for _ in range(UNITS))
        self.upsample = nn.ModuleDict({f"x{s}": Upsampler(s, features) for s in scales})
        n_irb = 4 if v.irb else 0
        self.irb = nn.ModuleList(nn.Conv2d(features, features, 3, padding=1, bias=False) for _ in range(n_irb))
        self.tail = nn.Conv2d(features, 3, 3, padding=1, bias=False)
        self.fuse_rb = True  # U(g)+U(h0) in one upsampler pass: exact algebra, ~15% fewer FLOPs
        # Inference on channels-last float32 CPU tensors without autograd runs the fused oneDNN path
        # below (same function, ~1.3x faster than plain channels-last); False forces the module path.
        self.fast_cpu = True

    @property
    def multiscale(self) -> bool:
        return len(self.scales) > 1

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if scale is None:
            if self.multiscale:
                raise ValueError("a multi-scale model needs the scale: model(x, scale)")
            scale = self.scales[0]
        up = self.upsample[f"x{check_scale(int(scale), self.scales)}"]
        if self.fast_cpu and _fast_cpu_applies(x, self.head.weight):
            y = _fast_cpu_forward(self, x, up)
            if y is not None:
                return y
        mean = self.mean.to(x.dtype)
        # In-place ReLUs act on fresh conv/sum outputs only (never on h or h0 themselves, which
        # are reused): same function, less memory traffic in training.
        h0 = F.relu(self.head(x - mean), inplace=True)
        h = h0
        for c3, c1 in zip(self.body3, self.body1):
            t = c1(F.relu(c3(h), inplace=True))
            h = F.relu(h + t, inplace=True) if self.v.residual else F.relu(t, inplace=True)
        if self.v.local_fusion:
            r = up.forward_sum(h, h0) if self.fuse_rb else up(h) + up(h0)
        else:
            r = up(h)
        r = F.relu(r, inplace=True)
        for c in self.irb:
            r = F.relu(c(r), inplace=True)
        return self.tail(r) + mean

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def receptive_margin(self) -> int:
        """LR pixels of context one side needs so that tiled inference equals untiled."""
        lr_layers = 1 + 2 * UNITS if not self.v.hetero else 1 + UNITS
        lr_layers += 1  # first upsampler conv
        hr_layers = len(self.irb) + 1 + (1 if 4 in self.scales else 0)
        return lr_layers + -(-hr_layers // min(self.scales))


# --- the fast CPU inference path ------------------------------------------------------------
#
# Every convolution goes to oneDNN directly (torch.ops.mkldnn._convolution_pointwise, the op that
# torch.compile's CPU backend emits) on channels-last tensors, with weights pre-packed in oneDNN's
# blocked layout for the input shape, and with the elementwise work fused into the convolution:
# ReLU after each 3x3 conv, "add the unit's input then ReLU" after each 1x1 conv (accumulated in
# place), the mean added back as the bias of the last conv, and the ReLU after the RB applied
# before the last PixelShuffle (elementwise ops commute with it). Same arithmetic as the module
# path up to float rounding order (max abs difference ~1e-6 on [0, 1] images).

_FAST_STATE = {"ok": None}  # None: not tried yet; False: unavailable in this torch build
_PACKED: "weakref.WeakKeyDictionary[LESRCNN, dict]" = weakref.WeakKeyDictionary()
_PACKED_SHAPES = 8  # input shapes kept per model (tiles and batches repeat a few shapes)


def _fast_cpu_applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        _FAST_STATE["ok"] is not False
        and x.device.type == "cpu" and w.device.type == "cpu"
        and x.dtype == torch.float32 and w.dtype == torch.float32
        and x.dim() == 4 and x.shape[2] > 1 and x.shape[3] > 1
        and not torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.backends.mkldnn.is_available()
        and not _compiling()
    )


def _compiling() -> bool:
    """Under torch.compile the module path is traced instead (inductor makes its own fusions)."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:
        return False


def _packed_weights(model: LESRCNN, up: nn.Module, n: int, h: int, w: int) -> dict:
    """oneDNN-layout weights for an input of n x 3 x h x w, cached per shape and weight version."""
    params = list(model.parameters())
    version = tuple((p.data_ptr(), p._version) for p in params)
    per_model = _PACKED.setdefault(model, {})
    if per_model.get("version") != version:
        per_model.clear()
        per_model["version"] = version
    key = (id(up), n, h, w)
    if key in per_model:
        per_model[key] = per_model.pop(key)  # LRU order
        return per_model[key]
    reorder = torch._C._nn.mkldnn_reorder_conv2d_weight

    def pack(conv: nn.Conv2d, hh: int, ww: int) -> torch.Tensor:
        pad = conv.padding[0]
        return reorder(conv.weight.detach().contiguous().to_mkldnn(), [pad, pad], [1, 1], [1, 1], 1,
                       [n, conv.in_channels, hh, ww])

    packs: dict = {"head": pack(model.head, h, w),
                   "body3": [pack(c, h, w) for c in model.body3], "body1": [pack(c, h, w) for c in model.body1]}
    ups, hh, ww = [], h, w
    for m in up:
        if isinstance(m, nn.Conv2d):
            bias = m.bias.detach() * (2 if model.v.local_fusion else 1)
            ups.append(("conv", pack(m, hh, ww), bias))
        else:
            ups.append(("shuffle", m.upscale_factor, None))
            hh, ww = hh * m.upscale_factor, ww * m.upscale_factor
    packs["up"] = ups
    packs["irb"] = [pack(c, hh, ww) for c in model.irb]
    packs["tail"] = pack(model.tail, hh, ww)
    packs["mean"] = model.mean.detach().reshape(3).contiguous()
    if sum(1 for k in per_model if k != "version") >= _PACKED_SHAPES:
        per_model.pop(next(k for k in per_model if k != "version"))
    per_model[key] = packs
    return packs


def _fast_cpu_forward(model: LESRCNN, x: torch.Tensor, up: nn.Module) -> torch.Tensor | None:
    try:
        conv = torch.ops.mkldnn._convolution_pointwise
        conv_add_ = torch.ops.mkldnn._convolution_pointwise_.binary
        conv_add = torch.ops.mkldnn._convolution_pointwise.binary
        n, _, h, w = x.shape
        P = _packed_weights(model, up, n, h, w)
        one, pad1 = [1, 1], [1, 1]
        h0 = conv(x - model.mean, P["head"], None, pad1, one, one, 1, "relu", [], "")
        t_pad = [model.body1[0].padding[0]] * 2 if len(model.body1) else pad1
        g = t = h0
        for i, (w3, w1) in enumerate(zip(P["body3"], P["body1"])):
            t = conv(g, w3, None, pad1, one, one, 1, "relu", [], "")
            if not model.v.residual:
                g = conv(t, w1, None, t_pad, one, one, 1, "relu", [], "")
            elif i == 0:  # h0 is needed again by the RB: not in place
                g = conv_add(t, g, w1, None, t_pad, one, one, 1, "add", 1.0, "relu", [], "")
            else:  # g <- relu(g + conv1x1(t)), accumulated into g
                g = conv_add_(g, t, w1, None, t_pad, one, one, 1, "add", 1.0, "relu", [], "")
        r = g + h0 if model.v.local_fusion else g
        del g, h0, t  # free the LR maps before the HR ones are allocated (peak memory)
        convs = [i for i, (kind, _, _) in enumerate(P["up"]) if kind == "conv"]
        for i, (kind, a, b) in enumerate(P["up"]):
            if kind == "conv":
                r = conv(r, a, b, pad1, one, one, 1, "relu" if i == convs[-1] else "none", [], "")
            else:
                r = F.pixel_shuffle(r, a)
        for wi in P["irb"]:
            r = conv(r, wi, None, pad1, one, one, 1, "relu", [], "")
        y = conv(r, P["tail"], P["mean"], pad1, one, one, 1, "none", [], "")
        _FAST_STATE["ok"] = True
        return y
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        if _FAST_STATE["ok"]:  # it worked before: a real error (e.g. out of memory), not a missing op
            raise
        _FAST_STATE["ok"] = False
        return None


def build(scale: int | str | tuple[int, ...], variant: str = "full") -> LESRCNN:
    """``build(2)``, ``build("multi")`` or ``build((2, 3, 4))``."""
    scales = SCALES if scale == "multi" else scale
    return LESRCNN(scales=scales, variant=variant)


# --- initialisation that makes an untrained LESRCNN already interpolate ---------------------

def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return torch.where(a <= 1, 1.5 * a**3 - 2.5 * a**2 + 1,
                       torch.where(a <= 2, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2, torch.zeros_like(a)))


def _subpixel_taps(r: int) -> torch.Tensor:
    """(r, 3) weights: HR sub-position i reads LR taps y-1, y, y+1 (cubic kernel, renormalised)."""
    taps = torch.tensor([-1.0, 0.0, 1.0])
    rows = []
    for i in range(r):
        offset = (i + 0.5) / r - 0.5
        w = _cubic(taps - offset)
        rows.append(w / w.sum())
    return torch.stack(rows)


@torch.no_grad()
def init_interpolation(model: LESRCNN, carry: int = 3, seed: int | None = None) -> LESRCNN:
    """Initialise so that the untrained network outputs a cubic interpolation of its input.

    Six feature channels carry +x and -x (mean-subtracted RGB) through every ReLU: the 1x1
    convolutions add zero to them, the upsampler holds interpolation weights (halved, because
    RB applies it to g and h0 and adds), the IRB passes them on, and the last convolution
    recombines +x - (-x). All other weights keep their random init, so the network is still
    free to learn; the architecture and parameter set are exactly LESRCNN's.
    """
    if seed is not None:
        torch.manual_seed(seed)
    C = 2 * carry  # carried channels: 2c -> +x_c, 2c+1 -> -x_c
    v = model.v

    def identity_center(conv: nn.Conv2d, scale_in: float = 1.0) -> None:
        conv.weight[:C] = 0
        kc = conv.weight.shape[-1] // 2
        for j in range(C):
            conv.weight[j, j, kc, kc] = scale_in

    # head: +x, -x
    model.head.weight[:C] = 0
    for c in range(carry):
        model.head.weight[2 * c, c, 1, 1] = 1.0
        model.head.weight[2 * c + 1, c, 1, 1] = -1.0
    for c3, c1 in zip(model.body3, model.body1):
        if v.residual:
            c1.weight[:C] = 0  # adds nothing to the carried channels
        else:
            identity_center(c3)
            identity_center(c1)
    # upsamplers: carried channels -> signed interpolation (halved if applied twice), then +/- split
    half = 0.5 if v.local_fusion else 1.0
    for up in model.upsample.values():
        convs = [m for m in up if isinstance(m, nn.Conv2d)]
        stages = [2, 2] if up.scale == 4 else [up.scale]
        for si, (conv, r) in enumerate(zip(convs, stages)):
            w, b = conv.weight, conv.bias
            taps = _subpixel_taps(r)
            first, last = si == 0, si == len(convs) - 1
            n_out = C if last else carry  # HR channels written by this stage
            for hc in range(n_out):
                c = hc // 2 if last else hc
                sign = (1.0 if hc % 2 == 0 else -1.0) if last else 1.0
                for i in range(r):
                    for j in range(r):
                        oc = hc * r * r + i * r + j
                        w[oc] = 0
                        b[oc] = 0
                        k2 = torch.outer(taps[i], taps[j]) * sign * (half if first else 1.0)
                        if first:  # read +x_c and -x_c channels
                            w[oc, 2 * c] = k2
                            w[oc, 2 * c + 1] = -k2
                        else:  # read the signed intermediate channel c
                            w[oc, c] = k2
    for conv in model.irb:
        identity_center(conv)
    model.tail.weight.zero_()
    for c in range(carry):
        model.tail.weight[c, 2 * c, 1, 1] = 1.0
        model.tail.weight[c, 2 * c + 1, 1, 1] = -1.0
    return model
