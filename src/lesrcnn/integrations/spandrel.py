"""LESRCNN as a spandrel architecture, so ComfyUI, chaiNNer and anything else that loads models
with ``spandrel.ModelLoader`` can run our checkpoints.

    import spandrel
    from lesrcnn.integrations import spandrel as lesrcnn_spandrel

    lesrcnn_spandrel.install()            # like spandrel_extra_arches.install(); idempotent
    desc = spandrel.ModelLoader().load_from_file("lesrcnn_s.safetensors")
    y = desc(x)                           # (1, 3, H, W) in [0, 1] -> (1, 3, 2H, 2W)

``import lesrcnn`` does NOT register anything: registration is explicit, through
:func:`install`, so importing the package never imports spandrel (or torchvision).

What is detected (by state-dict keys; spandrel hands architectures the tensors only, never the
file name or the safetensors metadata):

- our ``.safetensors`` files (keys ``head.weight``, ``body3.N``, ``upsample.xS.*`` ...), single-
  or multi-scale, the full network and the paper's SN ablation (the other ablation variants
  share their keys with each other and are refused with a message);
- the authors' released ``.pth`` files (keys ``conv1.0.weight`` ... ``upsample.up.body.*``), and
  their multi-scale layout (``upsample.up2/up3/up4.body.*``).

A spandrel descriptor has ONE scale. A multi-scale file (LESRCNN-S) therefore loads as its x2
network by default (``install(multi_scale=3)`` changes that for the whole registry); to get each
scale as its own file that any host loads at the right scale, run
``python -m lesrcnn.integrations.spandrel split lesrcnn_s.safetensors OUT_DIR``. In Python,
:func:`load` picks the scale directly and also reads our file's metadata (channel mean, variant).

The mean shift cannot be read from our safetensors tensors (it is metadata); spandrel loading
assumes the DIV2K mean every released and shipped LESRCNN uses. The authors' ``.pth`` carries it.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import LesrcnnError
from ..model import DIV2K_MEAN, LESRCNN
from . import single_scale

ARCH_ID = "LESRCNN"
_OURS = ("head.weight", "body3.0.weight", "body1.0.weight", "tail.weight")
_OFFICIAL = ("conv1.0.weight", "conv2.0.weight", "conv3.0.weight", "conv18.0.weight")
_OFFICIAL_MULTI = re.compile(r"upsample\.up([234])\.body\.(\d)\.(weight|bias)")


def is_ours(sd: dict) -> bool:
    return all(k in sd for k in _OURS) and any(re.match(r"upsample\.x[234]\.0\.weight$", k) for k in sd)


def is_official(sd: dict) -> bool:
    return all(k in sd for k in _OFFICIAL) and (
        "upsample.up.body.0.weight" in sd or any(_OFFICIAL_MULTI.fullmatch(k) for k in sd))


def detect(sd: dict) -> bool:
    return is_ours(sd) or is_official(sd)


def _official_multi(sd: dict) -> tuple[dict, tuple[float, float, float]]:
    """The authors' multi-scale layout (upsample.up2/up3/up4) -> our keys, one scale at a time."""
    from ..weights import official_to_ours

    common = {k: v for k, v in sd.items() if not k.startswith("upsample.")}
    out: dict = {}
    mean = DIV2K_MEAN
    for s in sorted({m.group(1) for k in sd if (m := _OFFICIAL_MULTI.fullmatch(k))}):
        ups = {f"upsample.up.body.{m.group(2)}.{m.group(3)}": v for k, v in sd.items()
               if (m := _OFFICIAL_MULTI.fullmatch(k)) and m.group(1) == s}
        part, _, mean = official_to_ours({**common, **ups})
        out.update(part)
    return out, mean


def to_ours(sd: dict) -> tuple[dict, tuple[int, ...], str, tuple[float, float, float]]:
    """Any detected state dict -> (our keys, scales, variant, channel mean)."""
    from ..weights import official_to_ours

    mean = DIV2K_MEAN
    if not is_ours(sd):
        if "upsample.up.body.0.weight" in sd:
            sd, _, mean = official_to_ours(dict(sd))
        else:
            sd, mean = _official_multi(sd)
    scales = tuple(sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"upsample\.x(\d)\.0\.weight", k))))
    if "irb.0.weight" in sd:
        variant = "full"
    elif sd["body1.0.weight"].shape[-1] == 3:
        variant = "sn"
    else:
        raise LesrcnnError("an LESRCNN ablation variant (IEEB, IEEB+RB or HN: the same keys, different "
                           "wiring); load it with lesrcnn.integrations.spandrel.load(path), which reads "
                           "the variant from the file's metadata")
    return dict(sd), scales, variant, mean


def descriptor(model: LESRCNN, architecture, tags: list[str] | None = None):
    """A spandrel ImageModelDescriptor for a single-scale LESRCNN module."""
    from spandrel import ImageModelDescriptor, ModelTiling, SizeRequirements

    if model.multiscale:
        raise LesrcnnError("descriptor() takes a single-scale model; use single_scale(model, s) first")
    (scale,) = model.scales
    return ImageModelDescriptor(
        model, model.state_dict(), architecture=architecture, purpose="SR",
        tags=[f"{model.features}nf", *(tags or [])],
        supports_half=True, supports_bfloat16=True,  # plain convolutions; tested against fp32
        scale=scale, input_channels=3, output_channels=3,
        size_requirements=SizeRequirements(),  # fully convolutional: any size from 1x1 up
        tiling=ModelTiling.SUPPORTED,  # local receptive field (see LESRCNN.receptive_margin)
    )


def _arch_class():
    from spandrel import Architecture, UnsupportedModelError

    class LesrcnnArch(Architecture[LESRCNN]):
        """spandrel's view of LESRCNN: detection by keys, loading into lesrcnn.model.LESRCNN."""

        def __init__(self, multi_scale: int = 2) -> None:
            super().__init__(id=ARCH_ID, name="LESRCNN", detect=detect)
            self.multi_scale = multi_scale

        def load(self, state_dict):
            try:
                sd, scales, variant, mean = to_ours(state_dict)
                model = LESRCNN(scales=scales, variant=variant, mean=mean)
                model.load_state_dict(sd)
            except (LesrcnnError, RuntimeError, KeyError) as e:
                raise UnsupportedModelError(f"LESRCNN: {str(e).splitlines()[0]}") from None
            tags = []
            if len(scales) > 1:
                want = self.multi_scale if self.multi_scale in scales else scales[0]
                tags = [f"LESRCNN-S x{'/x'.join(map(str, scales))} (x{want} loaded)"]
                model = single_scale(model, want)
            return descriptor(model.eval(), self, tags + ([variant] if variant != "full" else []))

    return LesrcnnArch


def architecture(multi_scale: int = 2):
    """A new LESRCNN spandrel Architecture; multi-scale files load at ``multi_scale``."""
    return _arch_class()(multi_scale=multi_scale)


def install(registry=None, ignore_duplicates: bool = True, multi_scale: int = 2) -> list:
    """Register LESRCNN with spandrel's ``MAIN_REGISTRY`` (or ``registry``); returns what was
    added. Safe to call twice (a second call adds nothing), as spandrel_extra_arches.install."""
    try:
        from spandrel import MAIN_REGISTRY, ArchSupport
    except ImportError:
        raise LesrcnnError("the spandrel integration needs `pip install lesrcnn[spandrel]`") from None
    registry = MAIN_REGISTRY if registry is None else registry
    return registry.add(ArchSupport.from_architecture(architecture(multi_scale)), ignore_duplicates=ignore_duplicates)


def load(path, scale: int | None = None):
    """Load any LESRCNN checkpoint (ours with its metadata, or the authors' .pth) as a spandrel
    descriptor at ``scale`` (default: the file's only scale, or x2 for a multi-scale file)."""
    from .. import weights as W

    ck = W.load(path)
    scale = scale if scale is not None else (ck.scales[0] if len(ck.scales) == 1 else 2)
    ck.require_scale(scale)
    model = single_scale(ck.model, scale).eval()
    tags = [f"LESRCNN-S x{'/x'.join(map(str, ck.scales))} (x{scale} loaded)"] if len(ck.scales) > 1 else []
    return descriptor(model, architecture(scale), tags)


def split(src, out_dir) -> list[Path]:
    """Write each scale of a multi-scale checkpoint as its own single-scale file, so hosts that
    load by content (ComfyUI, chaiNNer) get the right scale: NAME_x2/_x3/_x4.safetensors."""
    from .. import weights as W

    ck = W.load(src)
    out_dir = Path(out_dir)
    stem = Path(str(src)).stem if Path(str(src)).suffix else str(src).replace("-", "_")
    paths = []
    for s in ck.scales:
        dst = out_dir / f"{stem}_x{s}.safetensors"
        W.save(single_scale(ck.model, s), dst, {"split_from": Path(str(ck.source)).name, "scale": s})
        paths.append(dst)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lesrcnn.integrations.spandrel",
                                description="Helpers for spandrel hosts (ComfyUI, chaiNNer).")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split", help="one single-scale .safetensors per scale of a multi-scale checkpoint")
    sp.add_argument("src", help="checkpoint file, or lesrcnn-s for the embedded weights")
    sp.add_argument("out_dir", help="folder for NAME_x2/_x3/_x4.safetensors")
    a = p.parse_args(argv)
    try:
        for path in split(a.src, a.out_dir):
            print(path)
    except LesrcnnError as e:
        print(f"lesrcnn: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ARCH_ID", "architecture", "descriptor", "detect", "install", "load", "split"]
