"""Finding and reading image pairs: benchmark layouts for evaluation, HR folders for training. Images
go through :func:`lesrcnn.io.read_picture`: the decoding, errors and bomb guard of ``upscale``."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LesrcnnError
from .io import READ_EXTS, files_under, read_picture, to_8bit
from .resize import crop_to_multiple, degrade

# a folder of low-resolution images: LR, LR_bicubic, DIV2K_train_LR_bicubic, lr-x2...
_LR_FOLDER = re.compile(r"(^|[_\-. ])LR([_\-. ]|bic|$)", re.IGNORECASE)  # LR, LR_bicubic, LRbicx2
_HR_FOLDER = re.compile(r"(.*_)?HR|GT(mod\d+)?", re.IGNORECASE)  # fullmatch: HR, DIV2K_train_HR, GTmod12
_HINT = "give the folder with the HR images (HR/, or *_HR.png files in image_SRF_N/)"


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


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (:func:`lesrcnn.io.files_under`: hidden names, our temp files
    among them, skipped; link loops end), sorted."""
    return [p for p in files_under(folder) if p.suffix.lower() in READ_EXTS and p.is_file()]


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 for the paper's metrics and for training: gray is replicated to RGB (as the
    paper's code evaluates it), 16 bits are rounded to 8, alpha is dropped."""
    pic = read_picture(path)
    return np.ascontiguousarray(to_8bit(np.repeat(pic.color, 3, axis=2) if pic.gray else pic.color))


def _existing_folder(folder: str | Path) -> Path:
    root = Path(folder)
    if not root.is_dir():
        raise LesrcnnError(f"not a folder: {root}" if root.exists() else f"data folder not found: {root}")
    return root


def _hr_set(root: Path) -> tuple[Path, Path, list[Path]]:
    """(the dataset folder, the folder of its HR images, the HR images). The HR folder is ``ROOT/HR``,
    ``ROOT/*_HR`` or ROOT itself when so named (``Set14/HR`` is the dataset ``Set14``); without one (the
    two folders are then one) every image is HR, but LR images must never be scored (or trained on) as HR."""
    if _HR_FOLDER.fullmatch(root.name):
        base, hr_dir = root.parent, root
    else:
        hr_dirs = (d for d in root.iterdir() if d.is_dir() and _HR_FOLDER.fullmatch(d.name))
        base, hr_dir = root, min(hr_dirs, default=None)
    scale_dir = re.fullmatch(r"[xX]\d", root.name) and _LR_FOLDER.search(root.parent.name)  # LR_bicubic/X2
    if hr_dir is None and (_LR_FOLDER.search(root.name) or scale_dir):
        raise LesrcnnError(f"{root} holds low-resolution (LR) images; {_HINT}")
    folder = hr_dir or root
    found = list_images(folder)
    if not found:
        raise LesrcnnError(f"no images in {folder}")
    lr = next((d for p in found for d in p.relative_to(folder).parts[:-1] if _LR_FOLDER.search(d)), None)
    if lr is not None:
        raise LesrcnnError(f"{folder} mixes LR images ({lr}/) with the HR images; {_HINT}")
    return base, folder, found


def hr_images(folder: str | Path) -> list[Path]:
    """The HR images of a training or evaluation folder (``HR/``, ``*_HR/`` or every image in it)."""
    return _hr_set(_existing_folder(folder))[2]


def _selfexsr(srf: Path, name: str) -> Dataset:
    pairs = []
    for hr in sorted(srf.glob("*_HR.*")):
        lr = hr.with_name(hr.name.replace("_HR.", "_LR."))
        if not lr.exists():
            raise LesrcnnError(f"no LR image for {hr}")
        pairs.append(Pair(hr.name.replace("_HR", "").rsplit(".", 1)[0], hr, lr))
    if not pairs:
        raise LesrcnnError(f"no *_HR images in {srf}")
    return Dataset(name, "selfexsr", pairs)


def find_dataset(root: str | Path, scale: int) -> Dataset:
    """Recognise a benchmark folder for ``scale``:

    - SelfExSR: ``ROOT/image_SRF_s/*_HR.png`` + ``*_LR.png`` (or ROOT is that folder);
    - BasicSR/DIV2K: ``ROOT/HR/`` + ``ROOT/LR_bicubic/Xs/`` (or ``*_HR`` + ``*_LR_bicubic``, or
      ``GTmod12`` + ``LRbicxs``; LR names may end in ``xs``); ROOT may be the HR folder itself;
    - otherwise every image under ROOT is an HR image; LR is made with MATLAB bicubic.
    """
    root = _existing_folder(root)
    if re.fullmatch(r"image_SRF_\d", root.name):
        if root.name != f"image_SRF_{scale}":
            raise LesrcnnError(f"{root} holds x{root.name[-1]} pairs, not x{scale}")
        return _selfexsr(root, root.parent.name)
    if (root / f"image_SRF_{scale}").is_dir():
        return _selfexsr(root / f"image_SRF_{scale}", root.name)
    if any(root.glob("image_SRF_*")):
        raise LesrcnnError(f"{root} has no image_SRF_{scale} folder for x{scale}")
    base, folder, hrs = _hr_set(root)
    lr_dirs = (base / f"{folder.name[:-2]}LR_bicubic" / f"X{scale}",  # DIV2K_train_HR: DIV2K_train_LR_bicubic
               base / f"LRbicx{scale}")  # BasicSR's benchmark sets: GTmod12 + LRbicx2
    lr_dir = next((d for d in lr_dirs if d.is_dir()), None)
    if folder == base or lr_dir is None:
        return Dataset(base.name, "hr-only", [Pair(str(p.relative_to(folder).with_suffix("")), p, None)
                                              for p in hrs])
    strip = re.compile(rf"(x{scale}|_LR|_lr|_HR|_hr)$", re.IGNORECASE)
    lrs = {strip.sub("", p.stem): p for p in list_images(lr_dir)}
    missing = next((p for p in hrs if strip.sub("", p.stem) not in lrs), None)
    if missing is not None:
        raise LesrcnnError(f"no LR image for {missing} in {lr_dir}")
    return Dataset(base.name, "basicsr", [Pair(p.stem, p, lrs[strip.sub("", p.stem)]) for p in hrs])


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of scale, LR) as HxWx3 uint8, sizes checked."""
    hr = read_rgb(pair.hr)
    if pair.lr is None:
        if min(hr.shape[:2]) < scale:
            raise LesrcnnError(f"{pair.hr} is smaller than the scale x{scale}")
        return degrade(hr, scale)
    lr = read_rgb(pair.lr)
    if crop_to_multiple(hr, scale).shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
        raise LesrcnnError(f"HR/LR size mismatch for {pair.hr.name}: HR {hr.shape[1]}x{hr.shape[0]}, "
                           f"LR {lr.shape[1]}x{lr.shape[0]} at x{scale}")
    return crop_to_multiple(hr, scale), lr
