"""Finding and reading image pairs: benchmark layouts for evaluation, HR folders for training."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import LesrcnnError
from .resize import crop_to_multiple, imresize

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8. Grayscale is replicated to RGB, as the paper's code evaluates it."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(a[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LesrcnnError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


@dataclass
class Pair:
    name: str
    hr: Path
    lr: Path | None  # None: make the LR with our MATLAB-exact resize


@dataclass
class Dataset:
    name: str
    layout: str
    pairs: list[Pair]


def _strip_scale_suffix(stem: str, scale: int) -> str:
    return re.sub(rf"(x{scale}|_LR|_lr|_HR|_hr)$", "", stem, flags=re.IGNORECASE)


def find_dataset(root: str | Path, scale: int) -> Dataset:
    """Recognise a benchmark folder for ``scale``.

    - SelfExSR: ``ROOT/image_SRF_s/*_HR.png`` + ``*_LR.png`` (or ROOT is that folder);
    - BasicSR/DIV2K: ``ROOT/HR/`` + ``ROOT/LR_bicubic/Xs/`` (LR names may end in ``xs``);
    - otherwise every image under ROOT is an HR image; LR is made with MATLAB bicubic.
    """
    root = Path(root)
    if not root.exists():
        raise LesrcnnError(f"data folder not found: {root}")
    if not root.is_dir():
        raise LesrcnnError(f"not a folder: {root}")
    name = root.name
    srf = root / f"image_SRF_{scale}"
    if re.fullmatch(r"image_SRF_\d", root.name):
        if root.name != f"image_SRF_{scale}":
            raise LesrcnnError(f"{root} holds x{root.name[-1]} pairs, not x{scale}")
        srf, name = root, root.parent.name
    if srf.is_dir():
        pairs = []
        for hr in sorted(srf.glob("*_HR.*")):
            lr = hr.with_name(hr.name.replace("_HR.", "_LR."))
            if not lr.exists():
                raise LesrcnnError(f"no LR image for {hr}")
            pairs.append(Pair(hr.name.replace("_HR", "").rsplit(".", 1)[0], hr, lr))
        if not pairs:
            raise LesrcnnError(f"no *_HR images in {srf}")
        return Dataset(name, "selfexsr", pairs)
    if any(root.glob("image_SRF_*")):
        raise LesrcnnError(f"{root} has no image_SRF_{scale} folder for x{scale}")
    hr_dir = next((d for d in (root / "HR", root / f"{name}_HR") if d.is_dir()), None)
    lr_dir = next((d for d in (root / "LR_bicubic" / f"X{scale}", root / f"{name}_LR_bicubic" / f"X{scale}")
                   if d.is_dir()), None)
    if hr_dir is not None:
        hrs = list_images(hr_dir)
        if not hrs:
            raise LesrcnnError(f"no images in {hr_dir}")
        if lr_dir is None:
            return Dataset(name, "hr-only", [Pair(p.stem, p, None) for p in hrs])
        lrs = {_strip_scale_suffix(p.stem, scale): p for p in list_images(lr_dir)}
        pairs = []
        for p in hrs:
            key = _strip_scale_suffix(p.stem, scale)
            if key not in lrs:
                raise LesrcnnError(f"no LR image for {p} in {lr_dir}")
            pairs.append(Pair(p.stem, p, lrs[key]))
        return Dataset(name, "basicsr", pairs)
    hrs = list_images(root)
    if not hrs:
        raise LesrcnnError(f"no images in {root}")
    return Dataset(name, "hr-only", [Pair(str(p.relative_to(root).with_suffix("")), p, None) for p in hrs])


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of scale, LR) as HxWx3 uint8, sizes checked."""
    hr = read_rgb(pair.hr)
    if pair.lr is None:
        hr = crop_to_multiple(hr, scale)
        if hr.shape[0] == 0 or hr.shape[1] == 0:
            raise LesrcnnError(f"{pair.hr} is smaller than the scale x{scale}")
        return hr, imresize(hr, 1.0 / scale)
    lr = read_rgb(pair.lr)
    want = (lr.shape[0] * scale, lr.shape[1] * scale)
    if hr.shape[:2] != want:
        cropped = crop_to_multiple(hr, scale)
        if cropped.shape[:2] != want:
            raise LesrcnnError(
                f"HR/LR size mismatch for {pair.hr.name}: HR {hr.shape[1]}x{hr.shape[0]}, "
                f"LR {lr.shape[1]}x{lr.shape[0]} at x{scale}")
        hr = cropped
    return hr, lr
