"""LESRCNN as a spandrel architecture (ComfyUI, chaiNNer): our checkpoints and the authors' ``.pth``
files, single- or multi-scale. Registration is explicit (:func:`install`), so ``import lesrcnn``
never imports spandrel. spandrel hands over the tensors only: detection goes by keys, our files
load with the DIV2K mean every shipped LESRCNN uses, the ablation variants that share the full
network's keys are refused, and a multi-scale file loads at one scale (x2 unless
``install(multi_scale=S)``). :func:`load` reads our metadata; :func:`split` writes one file per scale.
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
_OFFICIAL_MULTI = re.compile(r"upsample\.up([234])\.body\.(\d)\.(weight|bias)")


def to_ours(sd: dict) -> tuple[dict, tuple[int, ...], str, tuple[float, float, float]]:
    """A detected state dict -> (our keys, scales, variant, channel mean)."""
    from ..weights import official_to_ours

    mean = DIV2K_MEAN
    if "head.weight" not in sd:  # the authors' layout; their multi-scale one has upsample.up2/up3/up4
        ups = {m: v for k, v in sd.items() if (m := _OFFICIAL_MULTI.fullmatch(k))}
        sd = {k: v for k, v in sd.items() if not _OFFICIAL_MULTI.fullmatch(k)}
        first = min((m[1] for m in ups), default=None)
        sd.update({f"upsample.up.body.{m[2]}.{m[3]}": v for m, v in ups.items() if m[1] == first})
        sd, _, mean = official_to_ours(sd)
        sd.update({f"upsample.x{m[1]}.{m[2]}.{m[3]}": v for m, v in ups.items()})
    scales = tuple(sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"upsample\.x(\d)\.0\.weight", k))))
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

    (scale,) = model.scales
    return ImageModelDescriptor(
        model, model.state_dict(), architecture=architecture, purpose="SR",
        tags=[f"{model.features}nf", *(tags or [])],
        supports_half=True, supports_bfloat16=True,  # plain convolutions; tested against fp32
        scale=scale, input_channels=3, output_channels=3,
        size_requirements=SizeRequirements(),  # fully convolutional: any size from 1x1 up
        tiling=ModelTiling.SUPPORTED,  # local receptive field (see LESRCNN.receptive_margin)
    )


def _multi_tag(scales: tuple[int, ...], loaded: int) -> list[str]:
    return [f"LESRCNN-S x{'/x'.join(map(str, scales))} (x{loaded} loaded)"] if len(scales) > 1 else []


def architecture(multi_scale: int = 2):
    """A new LESRCNN spandrel Architecture; multi-scale files load at ``multi_scale``."""
    from spandrel import Architecture, UnsupportedModelError
    from spandrel.util import KeyCondition as K

    ours = K.has_all("head.weight", "body3.0.weight", "body1.0.weight", "tail.weight",
                     K.has_any(*(f"upsample.x{s}.0.weight" for s in (2, 3, 4))))
    official = K.has_all("conv1.0.weight", "conv2.0.weight", "conv3.0.weight", "conv18.0.weight",
                         K.has_any(*(f"upsample.up{s}.body.0.weight" for s in ("", 2, 3, 4))))

    class LesrcnnArch(Architecture[LESRCNN]):
        def load(self, state_dict):
            try:
                sd, scales, variant, mean = to_ours(state_dict)
                model = LESRCNN(scales=scales, variant=variant, mean=mean)
                model.load_state_dict(sd)
            except (LesrcnnError, RuntimeError, KeyError) as e:
                raise UnsupportedModelError(f"LESRCNN: {str(e).splitlines()[0]}") from None
            scale = multi_scale if multi_scale in scales else scales[0]
            tags = _multi_tag(scales, scale) + ([variant] if variant != "full" else [])
            return descriptor(single_scale(model, scale).eval(), self, tags)

    return LesrcnnArch(id=ARCH_ID, name="LESRCNN", detect=K.has_any(ours, official))


def install(registry=None, ignore_duplicates: bool = True, multi_scale: int = 2) -> list:
    """Register LESRCNN with spandrel's ``MAIN_REGISTRY`` (or ``registry``); returns what was
    added, so a second call, like spandrel_extra_arches.install's, adds nothing."""
    try:
        from spandrel import MAIN_REGISTRY, ArchSupport
    except ImportError:
        raise LesrcnnError("the spandrel integration needs `pip install lesrcnn[spandrel]`") from None
    registry = MAIN_REGISTRY if registry is None else registry
    arch = ArchSupport.from_architecture(architecture(multi_scale))
    return registry.add(arch, ignore_duplicates=ignore_duplicates)


def load(path, scale: int | None = None):
    """Any LESRCNN checkpoint (ours with its metadata, or the authors' .pth) as a spandrel
    descriptor at ``scale`` (default: the file's only scale, or x2 for a multi-scale file)."""
    from .. import weights as W

    ck = W.load(path)
    scale = scale if scale is not None else (ck.scales[0] if len(ck.scales) == 1 else 2)
    ck.require_scale(scale)
    return descriptor(single_scale(ck.model, scale).eval(), architecture(scale), _multi_tag(ck.scales, scale))


def split(src, out_dir) -> list[Path]:
    """Each scale of a multi-scale checkpoint as its own file, NAME_x2/_x3/_x4.safetensors, for
    hosts that load by content (ComfyUI, chaiNNer) and so cannot pick the scale."""
    from .. import weights as W

    ck = W.load(src)
    stem = Path(str(src)).stem if Path(str(src)).suffix else str(src).replace("-", "_")
    paths = [Path(out_dir) / f"{stem}_x{s}.safetensors" for s in ck.scales]
    for s, dst in zip(ck.scales, paths):
        W.save(single_scale(ck.model, s), dst, {"split_from": Path(str(ck.source)).name, "scale": s})
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lesrcnn.integrations.spandrel",
                                description="Helpers for spandrel hosts (ComfyUI, chaiNNer).")
    sp = p.add_subparsers(dest="cmd", required=True).add_parser(
        "split", help="one single-scale .safetensors per scale of a multi-scale checkpoint")
    sp.add_argument("src", help="checkpoint file, or lesrcnn-s for the embedded weights")
    sp.add_argument("out_dir", help="folder for NAME_x2/_x3/_x4.safetensors")
    a = p.parse_args(argv)
    try:
        print(*split(a.src, a.out_dir), sep="\n")
    except LesrcnnError as e:
        print(f"lesrcnn: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ARCH_ID", "architecture", "descriptor", "install", "load", "split"]
