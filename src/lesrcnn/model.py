"""The LESRCNN network (Tian et al., KBS 2020) as released, defined once; the paper's ablation
networks are options of the same class (``variant=``). Spec: docs/LESRCNN.md of the project."""
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
    """Switches of the paper's ablation networks (Tables 1-3)."""

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
    """The one scale check: an integer (4.0 too, not "4") in ``allowed``, else a LesrcnnError."""
    if scale not in allowed:
        raise LesrcnnError(f"unsupported scale {scale!r}: this model serves x{', x'.join(map(str, allowed))}")
    return int(scale)


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler with bias and no activation: x2/x3 one stage, x4 two x2 stages."""

    def __init__(self, scale: int, features: int = FEATURES):
        layers: list[nn.Module] = []
        for r in stages(scale):
            layers += [nn.Conv2d(features, features * r * r, 3, padding=1, bias=True), nn.PixelShuffle(r)]
        super().__init__(*layers)
        self.scale = scale

    def pair(self, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """The RB as released: U(g) + U(h0)."""
        return self(g) + self(h0)


class FusedUpsampler(Upsampler):
    """U is affine, so U(g) + U(h0) = U'(g + h0) with U' = U with doubled biases: one pass
    instead of two. Built by :func:`fuse_rb` (its biases are 2b), for inference and export."""

    def pair(self, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        return self(g + h0)


def stages(scale: int) -> list[int]:
    """The sub-pixel stages of an upsampler: x4 is two x2 stages."""
    return [2, 2] if scale == 4 else [scale]


def _conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)


class LESRCNN(nn.Module):
    """LESRCNN for one scale (``scales=s``) or the multi-scale LESRCNN-S (``scales=(2, 3, 4)``):
    ``model(x, scale)`` (a single-scale model also takes ``model(x)``), RGB in [0, 1], NCHW or
    channels-last (faster on CPU). :func:`fuse_rb` gives the cheaper exact form."""

    def __init__(
        self,
        scales: tuple[int, ...] | int = 2,
        variant: str = "full",
        mean: tuple[float, float, float] = DIV2K_MEAN,
        features: int = FEATURES,
    ):
        super().__init__()
        scales = (scales,) if isinstance(scales, int) else sorted(set(scales))
        if variant not in VARIANTS:
            raise LesrcnnError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
        self.scales, self.variant, self.features = tuple(check_scale(s) for s in scales), variant, features
        self.v = v = VARIANTS[variant]
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        f = features
        self.head = _conv(3, f, 3)
        self.body3 = nn.ModuleList(_conv(f, f, 3) for _ in range(UNITS))
        self.body1 = nn.ModuleList(_conv(f, f, 1 if v.hetero else 3) for _ in range(UNITS))
        self.upsample = nn.ModuleDict({f"x{s}": Upsampler(s, f) for s in self.scales})
        self.irb = nn.ModuleList(_conv(f, f, 3) for _ in range(4 if v.irb else 0))
        self.tail = _conv(f, 3, 3)

    def resolve_scale(self, scale: int | None) -> int:
        """``scale`` checked against the model's; None is allowed for a single-scale model."""
        if scale is None:
            if len(self.scales) > 1:
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
    if not model.v.local_fusion:  # no RB sum to fuse
        return fused
    for key, up in list(fused.upsample.items()):
        if not isinstance(up, FusedUpsampler):
            new = fused.upsample[key] = FusedUpsampler(up.scale, model.features).to(up[0].weight)
            new.load_state_dict(up.state_dict())
            with torch.no_grad():
                for conv in list(new)[::2]:  # the convolutions (between them: PixelShuffle)
                    conv.bias.mul_(2)
    return fused


def conv_calls(model: LESRCNN, scale: int) -> list[tuple[nn.Conv2d, int]]:
    """Every convolution ``model(x, scale)`` runs, in order, with its input resolution as a
    multiple of the LR input's (1, 2, 3 or 4): found by running the module on a meta tensor
    (shapes only, no arithmetic), so it follows the module, not a copy of its structure."""
    meta = copy.deepcopy(model).to("meta")
    calls: list[tuple[nn.Conv2d, int]] = []
    lr = 8
    by_meta = {id(m): orig for m, orig in zip(meta.modules(), model.modules())}

    def record(conv: nn.Module, inputs: tuple) -> None:
        calls.append((by_meta[id(conv)], inputs[0].shape[-1] // lr))

    hooks = [m.register_forward_pre_hook(record) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta(torch.empty(1, 3, lr, lr, device="meta"), scale)
    finally:
        for h in hooks:
            h.remove()
    return calls


def build(scale: int | str | tuple[int, ...], variant: str = "full") -> LESRCNN:
    """``build(2)``, ``build("multi")`` or ``build((2, 3, 4))``."""
    return LESRCNN(scales=SCALES if scale == "multi" else scale, variant=variant)


# --- initialisation that makes an untrained LESRCNN already interpolate ---------------------

def _subpixel_taps(r: int) -> torch.Tensor:
    """(r * r, 3, 3) kernels: HR sub-position (i, j) reads LR taps -1, 0, +1 around its pixel
    with cubic weights (a = -0.5), renormalised."""
    offsets = torch.tensor([(i + 0.5) / r - 0.5 for i in range(r)])
    d = (torch.tensor([-1.0, 0.0, 1.0]) - offsets[:, None]).abs()
    w = torch.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1,
                    torch.where(d <= 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, torch.zeros_like(d)))
    w = w / w.sum(1, keepdim=True)
    return (w[:, None, :, None] * w[None, :, None, :]).reshape(r * r, 3, 3)


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
    centre = [conv for pair in zip(model.body3, model.body1) for conv in pair] if not model.v.residual else []
    for conv in centre + list(model.irb):  # identity on the carried channels
        conv.weight[:C] = 0
        k = conv.weight.shape[-1] // 2
        conv.weight[range(C), range(C), k, k] = 1.0
    if model.v.residual:
        for c1 in model.body1:
            c1.weight[:C] = 0  # adds nothing to the carried channels
    model.head.weight[:C] = 0
    model.tail.weight.zero_()
    for c in range(carry):
        model.head.weight[2 * c, c, 1, 1], model.head.weight[2 * c + 1, c, 1, 1] = 1.0, -1.0
        model.tail.weight[c, 2 * c, 1, 1], model.tail.weight[c, 2 * c + 1, 1, 1] = 1.0, -1.0
    half = 0.5 if model.v.local_fusion else 1.0  # the RB applies the upsampler twice and adds
    for up in model.upsample.values():
        convs = [m for m in up if isinstance(m, nn.Conv2d)]
        for si, (conv, r) in enumerate(zip(convs, stages(up.scale))):
            first, last = si == 0, si == len(convs) - 1
            taps = _subpixel_taps(r)
            for hc in range(C if last else carry):  # the last stage writes +x_c/-x_c, an inner one x_c
                rows = slice(hc * r * r, (hc + 1) * r * r)
                c, sign = (hc // 2, -1.0 if hc % 2 else 1.0) if last else (hc, 1.0)
                conv.weight[rows], conv.bias[rows] = 0, 0
                k2 = taps * sign * (half if first else 1.0)
                if first:  # reads the +x_c and -x_c channels
                    conv.weight[rows, 2 * c], conv.weight[rows, 2 * c + 1] = k2, -k2
                else:  # reads the signed channel c of the stage before
                    conv.weight[rows, c] = k2
    return model
