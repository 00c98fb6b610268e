"""torch.hub entry points: ``torch.hub.load("OWNER/lesrcnn", "lesrcnn", scale=2)`` (or a checkout
with ``source="local"``) gives the embedded weights, nothing downloaded, in eval mode on the CPU."""
import sys
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors"]

_SRC = Path(__file__).resolve().parent / "src"
if "lesrcnn" not in sys.modules and (_SRC / "lesrcnn").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # this checkout's package (its code and its embedded weights)


def lesrcnn(scale=2, weights="default", pretrained=True):
    """LESRCNN. scale: 2, 3 or 4 (a single-scale module, ``model(x)``), or "multi" (LESRCNN-S,
    ``model(x, scale)``). weights: "default", "real" (trained on real-photo degradations) or a
    checkpoint file (ours or the authors' .pth). pretrained=False: the untrained network."""
    from lesrcnn import weights as W
    from lesrcnn.integrations import single_scale
    from lesrcnn.model import build

    if not pretrained:
        return build(scale).eval()
    model = W.load(None if weights == "default" else weights).model
    return (model if scale == "multi" else single_scale(model, scale)).eval()
