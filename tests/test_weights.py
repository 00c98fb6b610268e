import pickle

import pytest
import torch

from conftest import assert_one_line_error, official, official_layout, run_cli
from lesrcnn import weights as W
from lesrcnn.io import TEMP_MARK
from lesrcnn.errors import LesrcnnError
from lesrcnn.model import build, fuse_rb


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_checkpoints_load_into_our_network(scale):
    ck = W.load(official(scale))
    assert ck.scales == (scale,) and ck.variant == "full"
    assert ck.num_parameters == {2: 626_304, 3: 810_944, 4: 774_016}[scale]
    assert ck.mean == pytest.approx((0.4488, 0.4371, 0.4040))


def test_the_authors_multi_scale_layout_loads_as_lesrcnn_s(tmp_path):
    """LESRCNN-S in the released code's keys (upsample.up2/up3/up4): every scale, same outputs."""
    ours = W.load(None)
    torch.save(official_layout(ours.model, multi=True), tmp_path / "authors_s.pth")
    ck = W.load(tmp_path / "authors_s.pth")
    assert ck.scales == (2, 3, 4) and ck.metadata == {"format": "official-pth"}
    x = torch.rand(1, 3, 9, 7)
    for s in (2, 3, 4):
        assert torch.equal(ck.model(x, s), ours.model(x, s))


def _released_forward(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """The released network written with the official key names (the spec's formula)."""
    F = torch.nn.functional
    conv = lambda t, k, b=None: F.conv2d(t, sd[k], b, padding=sd[k].shape[-1] // 2)  # noqa: E731
    x = conv(x, "sub_mean.shifter.weight", sd["sub_mean.shifter.bias"])
    h0 = F.relu(conv(x, "conv1.0.weight"))
    h = h0
    for k in range(1, 9):
        h = F.relu(h + conv(F.relu(conv(h, f"conv{2 * k}.0.weight")), f"conv{2 * k + 1}.0.weight"))

    def up(t):
        for i in ((0, 2) if scale == 4 else (0,)):
            t = conv(t, f"upsample.up.body.{i}.weight", sd[f"upsample.up.body.{i}.bias"])
            t = F.pixel_shuffle(t, 2 if scale == 4 else scale)
        return t

    r = F.relu(up(h) + up(h0))
    for i in range(1, 5):
        r = F.relu(conv(r, f"conv17_{i}.0.weight"))
    return conv(conv(r, "conv18.0.weight"), "add_mean.shifter.weight", sd["add_mean.shifter.bias"])


@pytest.mark.parametrize("scale", [2, 4])
def test_our_network_computes_what_the_released_one_does(scale):
    path = official(scale)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    ck = W.load(path)
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ck.model(x), _released_forward(sd, x, scale))
        assert (fuse_rb(ck.model)(x) - _released_forward(sd, x, scale)).abs().max() < 1e-5


def test_safetensors_roundtrip_with_metadata(tmp_path):
    m = build("multi")
    p = W.save(m, tmp_path / "m.safetensors", {"data": ["T91"], "steps": 3})
    ck = W.load(p)
    assert ck.scales == (2, 3, 4) and ck.metadata["provenance"]["steps"] == 3
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ck.model.state_dict().values()))
    with pytest.raises(LesrcnnError, match="cannot upscale x5|x2/x3/x4"):
        ck.require_scale(5)
    assert not [f for f in tmp_path.iterdir() if TEMP_MARK in f.name]


def test_variant_roundtrip(tmp_path):
    ck = W.load(W.save(build(3, "sn"), tmp_path / "sn.safetensors"))
    assert ck.variant == "sn" and ck.scales == (3,)


def test_bad_checkpoints_are_refused_with_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(LesrcnnError, match="not a readable PyTorch checkpoint"):
        W.load(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(LesrcnnError, match="not a state dict"):
        W.load(tmp_path / "list.pth")
    sd = {k.replace("head", "conv1.0"): v for k, v in build(2).state_dict().items()}
    torch.save({"upsample.up.body.0.weight": torch.zeros(256, 64, 3, 3), "conv1.0.weight": torch.zeros(64, 3, 5, 5)},
               tmp_path / "partial.pth")
    with pytest.raises(LesrcnnError, match="missing"):
        W.load(tmp_path / "partial.pth")
    with pytest.raises(LesrcnnError, match="not found"):
        W.load(tmp_path / "nope.pth")
    torch.save(build(2).state_dict(), tmp_path / "ours.pth")  # torch.save of our module: says how to save it
    with pytest.raises(LesrcnnError, match=r"bare state dict .* lesrcnn\.weights\.save"):
        W.load(tmp_path / "ours.pth")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(LesrcnnError):
        W.load(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_wrong_shape_is_refused(tmp_path):
    sd = torch.load(official(2), map_location="cpu", weights_only=True)
    sd["conv5.0.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(LesrcnnError, match="conv5|body1.1"):
        W.load(tmp_path / "bad.pth")


def test_convert_and_info_cli(tmp_path):
    out = tmp_path / "x3.safetensors"
    r = run_cli("convert", official(3), "-o", out, check=True)
    assert "810,944" in r.stdout
    r = run_cli("info", out, check=True)
    assert "x3" in r.stdout and "810,944" in r.stdout
    assert_one_line_error(run_cli("convert", official(3), "-o", out), contains="exists")
    assert_one_line_error(run_cli("info", tmp_path / "missing.safetensors"), contains="not found")


def test_embedded_weights_ship_with_the_package_and_are_verified(tmp_path, monkeypatch):
    ck = W.load(None)
    assert ck.scales == (2, 3, 4) and ck.num_parameters == 1_254_080
    prov = ck.metadata["provenance"]
    assert prov["trained_by"].startswith("lesrcnn") and prov["steps"] > 0 and prov["measured"]["results"]
    assert W.sha256(W.embedded_path("lesrcnn-s")) == W.PRETRAINED["lesrcnn-s"]["sha256"]
    monkeypatch.setitem(W.PRETRAINED, "lesrcnn-s", dict(W.PRETRAINED["lesrcnn-s"], sha256="0" * 64))
    with pytest.raises(LesrcnnError, match="corrupt"):
        W.load(None)
    monkeypatch.setitem(W.PRETRAINED, "lesrcnn-s", dict(W.PRETRAINED["lesrcnn-s"], file="missing.safetensors"))
    with pytest.raises(LesrcnnError, match="--weights"):
        W.load(None)
