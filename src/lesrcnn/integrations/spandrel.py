"""LESRCNN as a spandrel architecture (ComfyUI, chaiNNer), registered by :func:`install`: our files
and the authors' ``.pth``, single- or multi-scale (loaded at one scale). spandrel sees tensors only, so
our files get the DIV2K mean; :func:`load` reads our metadata; :func:`split` writes one file per scale."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import LesrcnnError, first_line, one_line
from ..model import DIV2K_MEAN, LESRCNN
from . import single_scale

def to_ours(sd: dict) -> tuple[dict, tuple[int, ...], str, tuple[float, float, float]]:
    """A detected state dict -> (our keys, scales, variant, channel mean)."""
    from ..weights import official_to_ours

    mean = DIV2K_MEAN
    if "head.weight" not in sd:  # the authors' layout (LESRCNN, or LESRCNN-S: upsample.up2/up3/up4)
        sd, _, mean = official_to_ours(sd)
    scales = tuple(sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"upsample\.x(\d)\.0\.weight", k))))
    if "irb.0.weight" not in sd and sd["body1.0.weight"].shape[-1] != 3:  # neither full nor SN
        raise LesrcnnError("an LESRCNN ablation variant (IEEB, IEEB+RB or HN: the same keys, different "
                           "wiring); load it with lesrcnn.integrations.spandrel.load(path), which reads "
                           "the variant from the file's metadata")
    return dict(sd), scales, "full" if "irb.0.weight" in sd else "sn", mean


def descriptor(model: LESRCNN, scale: int, architecture):
    """A spandrel ImageModelDescriptor of the x``scale`` network of a (multi-scale) LESRCNN."""
    from spandrel import ImageModelDescriptor, ModelTiling, SizeRequirements

    one = single_scale(model, scale).eval()
    tags = [f"{model.features}nf"] + ([model.variant] if model.variant != "full" else [])
    if len(model.scales) > 1:
        tags.append(f"LESRCNN-S x{'/x'.join(map(str, model.scales))} (x{scale} loaded)")
    return ImageModelDescriptor(
        one, one.state_dict(), architecture=architecture, purpose="SR", tags=tags,
        supports_half=True, supports_bfloat16=True,  # plain convolutions; tested against fp32
        scale=scale, input_channels=3, output_channels=3,
        size_requirements=SizeRequirements(),  # fully convolutional: any size from 1x1 up
        tiling=ModelTiling.SUPPORTED,  # local receptive field (see LESRCNN.receptive_margin)
    )


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
                raise UnsupportedModelError(f"LESRCNN: {first_line(e)}") from None
            return descriptor(model, multi_scale if multi_scale in scales else scales[0], self)

    return LesrcnnArch(id="LESRCNN", name="LESRCNN", detect=K.has_any(ours, official))


def install(multi_scale: int = 2) -> list:
    """Register LESRCNN with spandrel's ``MAIN_REGISTRY``; returns what was added, so a second
    call, like spandrel_extra_arches.install's, adds nothing."""
    from spandrel import MAIN_REGISTRY, ArchSupport

    return MAIN_REGISTRY.add(ArchSupport.from_architecture(architecture(multi_scale)), ignore_duplicates=True)


def load(path, scale: int | None = None):
    """Any LESRCNN checkpoint (ours with its metadata, or the authors' .pth) as a spandrel
    descriptor at ``scale`` (default: the file's smallest, x2 for LESRCNN-S)."""
    from .. import weights as W

    ck = W.load(path)
    scale = ck.scales[0] if scale is None else scale
    return descriptor(ck.model, scale, architecture(scale))


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
                                description="For spandrel hosts (ComfyUI, chaiNNer): `split` writes one "
                                            "single-scale file per scale of a multi-scale checkpoint.")
    p.add_argument("command", choices=["split"])
    p.add_argument("src", help="checkpoint file, or lesrcnn-s for the embedded weights")
    p.add_argument("out_dir", help="folder for NAME_x2/_x3/_x4.safetensors")
    a = p.parse_args(argv)
    try:
        print(*split(a.src, a.out_dir), sep="\n")
    except LesrcnnError as e:
        print(f"lesrcnn: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
