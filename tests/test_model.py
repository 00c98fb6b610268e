import pytest
import torch

from lesrcnn.errors import LesrcnnError
from lesrcnn.model import LESRCNN, VARIANTS, build, check_scale, fuse_rb, init_interpolation


@pytest.mark.parametrize("scale,params", [(2, 626_304), (3, 810_944), (4, 774_016)])
def test_parameter_counts_match_released_code(scale, params):
    assert build(scale).num_parameters() == params


def test_multiscale_shares_everything_but_the_upsamplers():
    m = build("multi")
    ups = sum(p.numel() for p in m.upsample.parameters())
    assert m.num_parameters() - ups == 626_304 - sum(p.numel() for p in build(2).upsample.parameters())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_and_multiscale_call(scale):
    x = torch.rand(1, 3, 11, 13)
    assert build(scale)(x).shape == (1, 3, 11 * scale, 13 * scale)
    assert build("multi")(x, scale).shape == (1, 3, 11 * scale, 13 * scale)


def test_unsupported_scales_are_refused():
    with pytest.raises(LesrcnnError, match="unsupported scale 5"):
        build(5)
    with pytest.raises(LesrcnnError, match="x2"):
        build(2)(torch.rand(1, 3, 8, 8), 3)
    with pytest.raises(LesrcnnError, match="needs the scale"):
        build("multi")(torch.rand(1, 3, 8, 8))
    with pytest.raises(LesrcnnError, match="unknown variant"):
        LESRCNN(2, variant="big")
    for bad in (2.5, "2", None, 8):
        with pytest.raises(LesrcnnError, match="scale"):
            check_scale(bad)
    assert check_scale(3) == 3 and check_scale(4.0) == 4


def test_every_model_takes_the_scale():
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        m = init_interpolation(build(3), seed=0).eval()
        assert torch.equal(m(x), m(x, 3))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_ablation_variant_runs(variant):
    m = build(4, variant)
    assert m(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    if variant == "sn":
        assert all(c.kernel_size == (3, 3) for c in m.body1)
    else:
        assert all(c.kernel_size == (1, 1) for c in m.body1)
    assert len(m.irb) == (4 if variant == "full" else 0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fused_reconstruction_block_equals_two_upsampler_passes(scale):
    torch.manual_seed(0)
    m = build(scale).eval()
    for p in m.upsample.parameters():
        p.data.normal_(0, 0.05)
    x = torch.rand(1, 3, 16, 16)
    fused = fuse_rb(m)
    assert type(fused.upsample[f"x{scale}"]).__name__ == "FusedUpsampler"
    assert type(m.upsample[f"x{scale}"]).__name__ == "Upsampler"  # the original is untouched
    with torch.no_grad():
        a, b = fused(x), m(x)
    assert (a - b).abs().max() < 1e-5


def test_channels_last_matches_nchw():
    torch.manual_seed(0)
    m = build(2).eval()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        a = m(x)
        b = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("scale", ["multi", 2, 3, 4])
def test_interpolation_init_starts_as_an_interpolator(scale):
    torch.manual_seed(0)
    m = init_interpolation(build(scale)).eval()
    x = torch.full((1, 3, 12, 12), 0.3)
    x[..., 6:, :] = 0.7
    with torch.no_grad():
        for s in ((2, 3, 4) if scale == "multi" else (scale,)):
            y = m(x, s) if scale == "multi" else m(x)
            # constant regions are reproduced exactly (away from the zero-padded image border),
            # the edge is interpolated
            top, bottom = y[..., 2 * s: 4 * s, 2 * s:-2 * s], y[..., -4 * s:-2 * s, 2 * s:-2 * s]
            assert torch.allclose(top, torch.full_like(top, 0.3), atol=1e-5)
            assert torch.allclose(bottom, torch.full_like(bottom, 0.7), atol=1e-5)
            inner = y[..., 2 * s:-2 * s, 2 * s:-2 * s]
            assert inner.min() > 0.25 and inner.max() < 0.75


def test_receptive_margin_covers_the_network():
    torch.manual_seed(0)
    m = build(4).eval()
    margin = m.receptive_margin()
    x = torch.rand(1, 3, 2 * margin + 1, 2 * margin + 1)
    x2 = x.clone()
    x2[..., 0, 0] += 1.0  # a change at the corner must not reach the centre pixel's output
    with torch.no_grad():
        a, b = m(x), m(x2)
    c = margin * 4
    assert torch.equal(a[..., c:c + 4, c:c + 4], b[..., c:c + 4, c:c + 4])
