"""Parameters and multiply-accumulates of LESRCNN per block, at a stated input size, counted
from the convolutions the module runs (:func:`lesrcnn.model.conv_calls`) as released: the RB
applies its upsampler to g and to h0 (``fused_macs``: after the exact one-pass rewrite).

The paper's 516K parameters and 3.08G FLOPs (Tables 3 and 9) state no input size and do not
match the released code (see the spec), so they are shown beside ours, never replaced by them.
"""
from __future__ import annotations

import re

from .errors import LesrcnnError
from .model import LESRCNN, VARIANTS, build, conv_calls, fuse_rb

BLOCKS = ("IEEB", "RB", "IRB")

# As printed in the paper (x4 for Tables 1-3; Table 9 states no scale and no input size).
PAPER = {
    "full": {"table": 9, "parameters": "516K", "flops": "3.08G"},
    "sn": {"table": 3, "parameters": "630K", "flops": "3.06G"},
    "hn": {"table": 3, "parameters": "368K", "flops": "1.38G"},
}


def parse_size(size: str) -> tuple[int, int]:
    """'HxW' or 'N' (square) -> (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", size)
    if not m:
        raise LesrcnnError(f"--size must be HxW (e.g. 256x256) or N, got {size!r}")
    h, w = int(m.group(1)), int(m.group(2) or m.group(1))
    if h < 1 or w < 1:
        raise LesrcnnError(f"--size must be positive, got {h}x{w}")
    return h, w


def count(model: LESRCNN, scale: int, height: int, width: int, fused: bool = False) -> dict:
    """Per-block parameters/MACs of ``model`` at ``scale`` for an LR input of height x width.
    One MAC is one multiply-add of a convolution; biases, ReLUs, additions and the frozen mean
    shift are not counted (< 0.01%). ``fused``: after :func:`lesrcnn.model.fuse_rb`."""
    net = fuse_rb(model) if fused else model
    names = {id(m): n for n, m in net.named_modules()}
    lr = height * width
    blocks = {b: {"block": b, "layers": 0, "parameters": 0, "macs": 0} for b in BLOCKS}
    seen: set[int] = set()
    for conv, ratio in conv_calls(net, scale):
        name = names[id(conv)]
        b = blocks["RB" if name.startswith("upsample.") else "IRB" if ratio > 1 else "IEEB"]
        k = conv.weight.shape[2] * conv.weight.shape[3]
        b["macs"] += conv.in_channels * conv.out_channels * k * lr * ratio * ratio
        if id(conv) not in seen:  # the RB runs its upsampler twice: its weights count once
            seen.add(id(conv))
            b["layers"] += 1
            b["parameters"] += sum(p.numel() for p in conv.parameters())
    total_m = sum(b["macs"] for b in blocks.values())
    for b in blocks.values():
        b["flops"] = 2 * b["macs"]
        b["share"] = b["macs"] / total_m if total_m else 0.0
    params = sum(b["parameters"] for b in blocks.values())
    return {"scale": scale, "variant": model.variant, "input": [height, width],
            "output": [height * scale, width * scale], "parameters": params, "macs": total_m,
            "flops": 2 * total_m, "macs_per_lr_pixel": total_m / lr, "blocks": list(blocks.values())}


def macs(scale: int, height: int, width: int) -> int:
    """MACs of the released network at an LR input of height x width."""
    return count(build(scale), scale, 1, 1)["macs"] * height * width


def complexity_report(model: LESRCNN, size: str = "256x256") -> dict:
    """``lesrcnn info --flops``: per scale of the model, parameters and MACs per block at the LR
    input ``size``, for its network and every ablation variant, beside the paper's figures."""
    h, w = parse_size(size)
    scales = []
    for s in model.scales:
        c = count(model, s, h, w)
        c["parameters_shared_model"] = sum(p.numel() for p in model.parameters())
        c["fused_macs"] = count(model, s, h, w, fused=True)["macs"]
        c["variants"] = [count(build(s, name), s, h, w) | {"paper": PAPER.get(name)} for name in VARIANTS]
        per_px = c["macs_per_lr_pixel"]
        c["paper_3.08G_equivalent"] = {
            "if_macs_lr_pixels": round(3.08e9 / per_px), "if_flops_lr_pixels": round(3.08e9 / 2 / per_px)}
        scales.append(c)
    convention = ("1 MAC = one conv multiply-add; FLOPs = 2 x MACs; mean shift, biases, ReLU and additions "
                  "not counted; RB counted as released (upsampler applied to g and h0)")
    return {"input": [h, w], "convention": convention, "scales": scales, "paper": PAPER}


def _g(x: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3f}{unit}"
    return f"{x:.0f}"


def format_complexity(d: dict) -> str:
    h, w = d["input"]
    lines = [f"complexity  LR input {h}x{w}; {d['convention']}"]
    for c in d["scales"]:
        s = c["scale"]
        oh, ow = c["output"]
        lines.append("")
        lines.append(f"x{s} (output {oh}x{ow}): {c['parameters']:,} parameters, {_g(c['macs'])} MACs = "
                     f"{_g(c['flops'])} FLOPs, {c['macs_per_lr_pixel'] / 1e6:.3f}M MACs per LR pixel; "
                     f"fused RB computes {_g(c['fused_macs'])} MACs")
        lines.append(f"  {'block':<6} {'layers':>6} {'params':>10} {'MACs':>10} {'FLOPs':>10} {'share':>6}")
        for b in c["blocks"]:
            lines.append(f"  {b['block']:<6} {b['layers']:>6} {b['parameters']:>10,} {_g(b['macs']):>10} "
                         f"{_g(b['flops']):>10} {b['share']:>6.1%}")
        lines.append(f"  ablation variants at x{s}, same input (paper: Tables 1-3 at x4, Table 9; printed "
                     "without an input size):")
        lines.append(f"  {'network':<9} {'params':>9} {'IEEB':>9} {'RB':>9} {'IRB':>9} {'FLOPs':>10}   paper")
        for v in c["variants"]:
            p = v["paper"]
            paper = f"{p['parameters']} / {p['flops']} FLOPs (Table {p['table']})" if p else "-"
            b = {x["block"]: _g(x["flops"]) for x in v["blocks"]}
            label = "LESRCNN" if v["variant"] == "full" else v["variant"].upper()
            lines.append(f"  {label:<9} {v['parameters']:>9,} {b['IEEB']:>9} {b['RB']:>9} {b['IRB']:>9} "
                         f"{_g(v['flops']):>10}   {paper}")
        e = c["paper_3.08G_equivalent"]
        lines.append(f"  the paper's '3.08G' would be {e['if_macs_lr_pixels']:,} LR pixels at x{s} if it "
                     f"counted MACs, {e['if_flops_lr_pixels']:,} if FLOPs: no natural input size")
    return "\n".join(lines)
