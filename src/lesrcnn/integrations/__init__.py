"""Glue for the places users already are: spandrel (ComfyUI, chaiNNer), torch.hub, the web
server (:mod:`lesrcnn.serve`) and Ray (:mod:`lesrcnn.ray`).

The helpers here are shared by all of them: which embedded weight sets exist ("default", and
"real" once the real-photo weights ship), and how a multi-scale LESRCNN-S becomes a plain
single-scale module (``model(x)``, no scale argument) for hosts that expect one scale per model.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import LesrcnnError

#: The weight sets offered by name: "default" (the embedded LESRCNN-S trained on bicubic LR)
#: and "real" (LESRCNN-S trained on real-photo degradations; present only where it is shipped).
REAL_FILE = "lesrcnn_s_real.safetensors"
WEIGHT_SETS = ("default", "real")


def _pretrained_dir() -> Path:
    return Path(str(resources.files("lesrcnn") / "pretrained"))


def resolve_weights(name: str):
    """A weight-set name ("default", "real") -> what :func:`lesrcnn.weights.load` takes.

    Other strings pass through unchanged (a registry name or a file path)."""
    from .. import weights as W

    if name in (None, "default"):
        return W.DEFAULT_WEIGHTS
    if name == "real":
        for reg, info in W.PRETRAINED.items():
            if info.get("file") == REAL_FILE:
                return reg  # registered: loaded with its sha256 check
        path = _pretrained_dir() / REAL_FILE
        if path.is_file():
            return str(path)
        raise LesrcnnError(f"the real-photo weights ({REAL_FILE}) are not in this copy of lesrcnn; "
                           f"use the 'default' weights or pass a checkpoint file")
    return name


def available_weight_sets() -> list[str]:
    """The named sets that load here (always "default"; "real" where it ships)."""
    out = []
    for name in WEIGHT_SETS:
        try:
            resolve_weights(name)
            out.append(name)
        except LesrcnnError:
            pass
    return out


def single_scale(model, scale: int):
    """The x``scale`` network of a (multi-scale) LESRCNN as its own single-scale module: same
    weights (the shared body and that scale's upsampler), called as ``model(x)``."""
    from ..model import LESRCNN, check_scale

    scale = check_scale(scale, tuple(model.scales))
    if tuple(model.scales) == (scale,):
        return model
    mean = tuple(float(m) for m in model.mean.flatten().tolist())
    one = LESRCNN(scales=(scale,), variant=model.variant, mean=mean, features=model.features)
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("upsample.") or k.startswith(f"upsample.x{scale}.")}
    one.load_state_dict(sd)
    return one.to(next(model.parameters()).device).train(model.training)
