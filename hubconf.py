"""torch.hub entry points for LESRCNN.

    import torch
    model = torch.hub.load("OWNER/lesrcnn", "lesrcnn", scale=2)          # from GitHub
    model = torch.hub.load("/path/to/lesrcnn", "lesrcnn", source="local", scale=4)
    with torch.no_grad():
        y = model(x)        # x: (N, 3, H, W) RGB in [0, 1] -> (N, 3, 4H, 4W)

The weights are the ones embedded in the package (no download). ``scale="multi"`` returns the
multi-scale LESRCNN-S itself, called as ``model(x, scale)``.
"""
import sys
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors"]

_SRC = Path(__file__).resolve().parent / "src"
if "lesrcnn" not in sys.modules and (_SRC / "lesrcnn").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # this checkout's package (its code and its embedded weights)


def lesrcnn(scale=2, weights="default", pretrained=True):
    """LESRCNN in eval mode on the CPU.

    scale: 2, 3 or 4 (a single-scale module, ``model(x)``), or "multi" (``model(x, scale)``).
    weights: "default" (LESRCNN-S trained on bicubic LR), "real" (trained on real-photo
    degradations, where this copy ships it), or a checkpoint file (ours or the authors' .pth).
    pretrained: False gives the untrained network (random init).
    """
    from lesrcnn import weights as W
    from lesrcnn.integrations import resolve_weights, single_scale
    from lesrcnn.model import SCALES, build, check_scale

    multi = scale == "multi"
    if not multi:
        scale = check_scale(scale)
    if not pretrained:
        return build(SCALES if multi else scale).eval()
    ck = W.load(resolve_weights(weights))
    if multi:
        return ck.model.eval()
    ck.require_scale(scale)
    return single_scale(ck.model, scale).eval()
