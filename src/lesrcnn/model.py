"""The LESRCNN network (Tian et al., KBS 2020), as published and as released.

Structure (see docs/LESRCNN.md of the project spec):
  mean shift -> IEEB (c1 + 8 heterogeneous residual units) -> RB (one sub-pixel
  upsampler shared by the global features g and the local features h0) -> IRB
  (4 x conv3x3+ReLU at HR, conv3x3 64->3) -> mean shift back.

The ablation variants of the paper are options of the same class (``variant=``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LesrcnnError

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


def check_scale(scale, allowed: tuple[int, ...] = SCALES) -> int:
    """The one scale check: an int in ``allowed`` (2, 3, 4 by default), else a LesrcnnError."""
    try:
        s = int(scale)
    except (TypeError, ValueError):
        s = None
    if s is None or s != scale or s not in allowed:
        raise LesrcnnError(f"unsupported scale {scale!r}: this model serves x{', x'.join(map(str, allowed))}")
    return s


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler with bias and no activation: x2/x3 one stage, x4 two x2 stages."""

    def __init__(self, scale: int, features: int = FEATURES):
        check_scale(scale)
        layers: list[nn.Module] = []
        for r in stages(scale):
            layers += [nn.Conv2d(features, features * r * r, 3, padding=1, bias=True), nn.PixelShuffle(r)]
        super().__init__(*layers)
        self.scale = scale

    def pair(self, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """The RB as released: U(g) + U(h0)."""
        return self(g) + self(h0)


class FusedUpsampler(Upsampler):
    """The RB rewritten exactly: U is affine, so U(g) + U(h0) = U'(g + h0) where U' is U with
    every bias doubled (no nonlinearity between the stages). One upsampler pass instead of two.
    Built by :func:`fuse_rb` only; its biases are 2b, so it is for inference and export."""

    def pair(self, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        return self(g + h0)


def stages(scale: int) -> list[int]:
    """The sub-pixel stages of an upsampler: x4 is two x2 stages."""
    return [2, 2] if scale == 4 else [scale]


class LESRCNN(nn.Module):
    """LESRCNN for one scale (``scales=(s,)``) or the multi-scale LESRCNN-S (``scales=(2, 3, 4)``).

    Called as ``model(x, scale)`` (a single-scale model also takes ``model(x)``).
    Input and output are RGB in [0, 1], NCHW (channels-last tensors work and are faster on CPU).
    ``forward`` is the plain module computation; :func:`fuse_rb` gives the cheaper exact form and
    :mod:`lesrcnn.accel` a fused oneDNN CPU runner built from a model.
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
            raise LesrcnnError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
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

    @property
    def multiscale(self) -> bool:
        return len(self.scales) > 1

    def resolve_scale(self, scale: int | None) -> int:
        """``scale`` checked against the model's; None is allowed for a single-scale model."""
        if scale is None:
            if self.multiscale:
                raise LesrcnnError("a multi-scale model needs the scale: model(x, scale)")
            return self.scales[0]
        return check_scale(scale, self.scales)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        up = self.upsample[f"x{self.resolve_scale(scale)}"]
        mean = self.mean.to(x.dtype)
        # In-place ReLUs act on fresh conv/sum outputs only (never on h or h0 themselves, which
        # are reused): same function, less memory traffic in training.
        h0 = F.relu(self.head(x - mean), inplace=True)
        h = h0
        for c3, c1 in zip(self.body3, self.body1):
            t = c1(F.relu(c3(h), inplace=True))
            h = F.relu(h + t, inplace=True) if self.v.residual else F.relu(t, inplace=True)
        r = up.pair(h, h0) if self.v.local_fusion else up(h)
        r = F.relu(r, inplace=True)
        for c in self.irb:
            r = F.relu(c(r), inplace=True)
        return self.tail(r) + mean

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def receptive_margin(self) -> int:
        """LR pixels of context one side needs so that tiled inference equals untiled: walked
        back from the output through the convolutions the module runs (see :func:`conv_calls`)."""
        margin = 0
        for s in self.scales:
            need, res = 0, None
            for conv, ratio in reversed(conv_calls(fuse_rb(self), s)):
                if res is not None and ratio < res:  # through a PixelShuffle: fewer, larger pixels
                    need = -(-need * ratio // res)
                res = ratio
                need += conv.padding[0]
            margin = max(margin, -(-need // res) if res else need)
        return margin


def fuse_rb(model: LESRCNN) -> LESRCNN:
    """A copy of ``model`` whose RB runs one upsampler pass on g + h0 (doubled biases): the same
    function up to float rounding, ~12-18% fewer MACs. For inference and ONNX export."""
    fused = copy.deepcopy(model)
    if not model.v.local_fusion:
        return fused
    for key, up in list(fused.upsample.items()):
        if isinstance(up, FusedUpsampler):
            continue
        new = FusedUpsampler(up.scale, model.features)
        new.load_state_dict(up.state_dict())
        with torch.no_grad():
            for m in new:
                if isinstance(m, nn.Conv2d):
                    m.bias.mul_(2)
        fused.upsample[key] = new.to(device=up[0].weight.device, dtype=up[0].weight.dtype)
    return fused


def conv_calls(model: LESRCNN, scale: int) -> list[tuple[nn.Conv2d, int]]:
    """Every convolution ``model(x, scale)`` runs, in order, with its input resolution as a
    multiple of the LR input's (1, 2, 3 or 4): found by running the module on a meta tensor
    (shapes only, no arithmetic), so it follows the module, not a copy of its structure."""
    meta = copy.deepcopy(model).to("meta")
    calls: list[tuple[nn.Conv2d, int]] = []
    lr = 8
    by_meta = {id(m): orig for m, orig in zip(meta.modules(), model.modules())}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: calls.append((by_meta[id(mod)], inp[0].shape[-1] // lr)))
             for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta(torch.empty(1, 3, lr, lr, device="meta"), scale)
    finally:
        for h in hooks:
            h.remove()
    return calls


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
    C, v = 2 * carry, model.v  # carried channels: 2c -> +x_c, 2c+1 -> -x_c

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
        for si, (conv, r) in enumerate(zip(convs, stages(up.scale))):
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
