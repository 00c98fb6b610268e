"""What the integrations share (spandrel, torch.hub, :mod:`lesrcnn.serve`, :mod:`lesrcnn.ray`):
the weight sets offered by name, and a multi-scale LESRCNN-S cut to one scale for hosts that
expect one scale per model."""
from __future__ import annotations

from ..errors import LesrcnnError

REAL_FILE = "lesrcnn_s_real.safetensors"  # the "real" set: trained on real-photo degradations


def resolve_weights(name: str | None):
    """A weight-set name ("default", "real") -> what :func:`lesrcnn.weights.load` takes; other
    strings (a registry name, a file) pass through."""
    from .. import weights as W

    if name in (None, "default"):
        return W.DEFAULT_WEIGHTS
    if name == "real" and not W.embedded_path("real").is_file():
        raise LesrcnnError(f"the real-photo weights ({REAL_FILE}) are not in this copy of lesrcnn; "
                           f"use the 'default' weights or pass a checkpoint file")
    return name


def available_weight_sets() -> list[str]:
    """The named sets that load here: "default", and "real" where it ships."""
    from .. import weights as W

    return ["default", "real"] if W.embedded_path("real").is_file() else ["default"]


def single_scale(model, scale: int):
    """The x``scale`` network of a (multi-scale) LESRCNN as its own module, called as ``model(x)``:
    the shared body and that scale's upsampler."""
    from ..model import LESRCNN, check_scale

    scale = check_scale(scale, model.scales)
    if model.scales == (scale,):
        return model
    one = LESRCNN(scales=(scale,), variant=model.variant, mean=tuple(model.mean.flatten().tolist()),
                  features=model.features)
    one.load_state_dict({k: v for k, v in model.state_dict().items()
                         if not k.startswith("upsample.") or k.startswith(f"upsample.x{scale}.")})
    return one.to(model.mean.device).train(model.training)
