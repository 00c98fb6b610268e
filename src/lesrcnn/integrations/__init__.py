"""What the host integrations share (spandrel, torch.hub): a multi-scale LESRCNN-S cut to one
scale, for hosts that expect one scale per model."""
from __future__ import annotations


def single_scale(model, scale: int):
    """The x``scale`` network of a (multi-scale) LESRCNN as its own module, called as ``model(x)``:
    the shared body and that scale's upsampler."""
    from ..model import LESRCNN, check_scale

    scale = check_scale(scale, model.scales)
    one = LESRCNN(scales=(scale,), variant=model.variant, mean=tuple(model.mean.flatten().tolist()),
                  features=model.features)
    one.load_state_dict({k: v for k, v in model.state_dict().items()
                         if not k.startswith("upsample.") or k.startswith(f"upsample.x{scale}.")})
    return one.to(model.mean.device).train(model.training)
