"""MAC/parameter counting (issue 4): the spec's figures, a hook-based cross-check, the report, the CLI."""
import pytest
import torch
from torch import nn

from lesrcnn import weights as W
from lesrcnn.complexity import complexity_report, count, format_complexity, macs, parse_size
from lesrcnn.errors import LesrcnnError
from lesrcnn.model import VARIANTS, build

from conftest import assert_one_line_error, run_cli

# The spec (Complexity): MACs per LR input pixel of the released network, and parameter counts.
MACS_PER_LR_PIXEL = {2: 1_221_056, 3: 2_335_616, 4: 4_190_912}
PARAMS = {2: 626_304, 3: 810_944, 4: 774_016}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_macs_per_lr_pixel_match_the_spec(scale):
    assert macs(scale, 1, 1) == MACS_PER_LR_PIXEL[scale]
    assert round(macs(scale, 1, 1) / 1e6, 3) == {2: 1.221, 3: 2.336, 4: 4.191}[scale]
    assert macs(scale, 37, 53) == MACS_PER_LR_PIXEL[scale] * 37 * 53


def test_720p_output_gmacs_match_the_spec():
    # 1280x720 output: 281 / 239 / 241 GMACs
    got = [round(macs(s, 720 // s, 1280 // s) / 1e9) for s in (2, 4)]
    assert got == [281, 241]
    assert round(MACS_PER_LR_PIXEL[3] * (1280 / 3) * (720 / 3) / 1e9) == 239


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_and_blocks(scale):
    c = count(build(scale), scale, 16, 16)
    assert c["parameters"] == PARAMS[scale] == build(scale).num_parameters()
    blocks = {b["block"]: b for b in c["blocks"]}
    assert [b["block"] for b in c["blocks"]] == ["IEEB", "RB", "IRB"]
    assert blocks["IEEB"]["layers"] == 17 and blocks["IRB"]["layers"] == 5
    assert sum(b["macs"] for b in c["blocks"]) == c["macs"] and c["flops"] == 2 * c["macs"]
    assert abs(sum(b["share"] for b in c["blocks"]) - 1) < 1e-9


def _hook_count(model: nn.Module, x: torch.Tensor, scale: int) -> int:
    """MACs seen by forward hooks on every Conv2d call of the plain (unfused) module path."""
    total = [0]

    def hook(m, inp, out):
        total[0] += m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out.shape[2] * out.shape[3]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x, scale)
    for h in hs:
        h.remove()
    return total[0]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_counts_equal_what_the_network_executes(scale, variant):
    m = build(scale, variant).eval()
    assert count(m, scale, 9, 7)["macs"] == _hook_count(m, torch.rand(1, 3, 9, 7), scale)


def test_multiscale_and_fused_counts():
    m = build("multi")
    for s in (2, 3, 4):
        assert count(m, s, 8, 8)["macs"] == macs(s, 8, 8)
        one_up = count(m, s, 8, 8)["blocks"][1]["macs"] // 2
        assert count(m, s, 8, 8, fused=True)["macs"] == macs(s, 8, 8) - one_up
    with pytest.raises(LesrcnnError):
        count(build(2), 3, 8, 8)


def test_parse_size():
    assert parse_size("256x128") == (256, 128)
    assert parse_size("64") == (64, 64)
    assert parse_size(" 3X5 ") == (3, 5)
    for bad in ("", "axb", "0x5", "12x", "-3x4"):
        with pytest.raises(LesrcnnError, match="size"):
            parse_size(bad)


def test_report_lists_every_variant_and_the_paper():
    d = complexity_report(build("multi"), "32x48")
    assert d["input"] == [32, 48] and [c["scale"] for c in d["scales"]] == [2, 3, 4]
    x4 = d["scales"][2]
    assert x4["output"] == [128, 192]
    assert {v["variant"] for v in x4["variants"]} == set(VARIANTS)
    full = next(v for v in x4["variants"] if v["variant"] == "full")
    assert full["macs"] == macs(4, 32, 48) and full["paper"]["flops"] == "3.08G"
    sn = next(v for v in x4["variants"] if v["variant"] == "sn")
    assert sn["paper"]["parameters"] == "630K" and sn["macs"] > next(
        v for v in x4["variants"] if v["variant"] == "hn")["macs"]
    text = format_complexity(d)
    for word in ("IEEB", "RB", "IRB", "SN", "HN", "IEEB+RB", "LESRCNN", "3.08G", "x4 (output 128x192)"):
        assert word in text


def test_info_flops_cli(tmp_path):
    p = W.save(build(3), tmp_path / "m.safetensors")
    r = run_cli("info", p, "--flops", "--size", "10x20", check=True)
    assert "x3 (output 30x60)" in r.stdout and "IRB" in r.stdout and "MACs" in r.stdout
    r = run_cli("info", p, "--flops", "--size", "10x20", "--json", check=True)
    import json

    d = json.loads(r.stdout)
    assert d["complexity"]["scales"][0]["macs"] == MACS_PER_LR_PIXEL[3] * 200
    assert_one_line_error(run_cli("info", p, "--flops", "--size", "big"), contains="size")
