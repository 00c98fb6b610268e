"""torch.hub: the real ``torch.hub.load`` on this checkout (source="local") against lesrcnn's own model."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO, natural_image

from lesrcnn import weights as W
from lesrcnn.errors import LesrcnnError


def _image(h: int = 24, w: int = 20) -> torch.Tensor:
    return torch.from_numpy(natural_image(h, w, seed=3)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_hub_model_equals_ours(scale):
    torch.set_num_threads(1)
    model = torch.hub.load(str(REPO), "lesrcnn", source="local", scale=scale)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.scales == (scale,)
    ours = W.load(None).model.eval()
    x = _image()
    with torch.no_grad():
        y, ref = model(x), ours(x, scale)
    assert y.shape == (1, 3, 24 * scale, 20 * scale)
    assert torch.equal(y, ref)  # the same weights and the same code path: bit for bit


def test_hub_multi_and_untrained():
    multi = torch.hub.load(str(REPO), "lesrcnn", source="local", scale="multi")
    assert multi.scales == (2, 3, 4) and not multi.training
    raw = torch.hub.load(str(REPO), "lesrcnn", source="local", scale=2, pretrained=False)
    x = _image(12, 12)
    with torch.no_grad():
        assert not torch.allclose(raw(x), multi(x, 2))


def test_hub_real_weights_or_clear_error(monkeypatch):
    if W.embedded_path("real").is_file():
        model = torch.hub.load(str(REPO), "lesrcnn", source="local", scale=4, weights="real")
        assert model.scales == (4,)
        with torch.no_grad():
            assert model(_image(8, 8)).shape == (1, 3, 32, 32)
    # a copy of lesrcnn without the real-photo file: one error that names it
    monkeypatch.setitem(W.PRETRAINED, "real", dict(W.PRETRAINED["real"], file="absent_real.safetensors"))
    with pytest.raises(LesrcnnError, match="absent_real.safetensors"):
        torch.hub.load(str(REPO), "lesrcnn", source="local", scale=2, weights="real")


def test_hub_bad_scale():
    with pytest.raises(LesrcnnError, match="scale"):
        torch.hub.load(str(REPO), "lesrcnn", source="local", scale=5)
