"""Finding and reading image pairs: benchmark layouts for evaluation, HR folders for training.

Every image goes through :func:`lesrcnn.io.read_picture`, so evaluation and training get the same
decoding, the same one-line errors and the same decompression-bomb guard as ``upscale``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LesrcnnError
from .io import DEFAULT_MAX_PIXELS, READ_EXTS, read_picture, to_8bit
from .resize import crop_to_multiple, imresize

# a folder of low-resolution images: LR, LR_bicubic, DIV2K_train_LR_bicubic, lr-x2...
_LR_FOLDER = re.compile(r"(^|[_\-. ])LR([_\-. ]|$)", re.IGNORECASE)


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (hidden names skipped: our temp files among them), sorted.
    Symlinked folders are not followed, so a link loop cannot make the walk endless."""
    folder = Path(folder)
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_image(p))
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [p for p in (Path(top) / f for f in files) if _is_image(p)]
    return sorted(found)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in READ_EXTS and not p.name.startswith(".") and p.is_file()


def read_rgb(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 for the paper's metrics and for training: gray is replicated to RGB (as the
    paper's code evaluates it), 16 bits are rounded to 8, alpha is dropped."""
    pic = read_picture(path, max_pixels)
    rgb = np.repeat(pic.color, 3, axis=2) if pic.gray else pic.color
    return np.ascontiguousarray(to_8bit(rgb))


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


def _is_lr_folder(p: Path) -> bool:
    return bool(_LR_FOLDER.search(p.name)) or (re.fullmatch(r"[xX]\d", p.name) is not None
                                               and bool(_LR_FOLDER.search(p.parent.name)))


def _is_hr_name(name: str) -> bool:
    return name.upper() == "HR" or name.upper().endswith("_HR")


def _hr_folder(root: Path) -> tuple[Path, Path | None]:
    """(the dataset folder, its HR folder or None): ``ROOT/HR``, ``ROOT/*_HR``, or ROOT itself
    when it is named ``HR``/``*_HR`` (``Set14/HR`` is the dataset ``Set14``)."""
    if _is_hr_name(root.name):
        return root.parent, root
    subs = sorted(d for d in root.iterdir() if d.is_dir() and _is_hr_name(d.name))
    return root, (subs[0] if subs else None)


def _refuse_lr(root: Path) -> None:
    """LR images must never be scored (or trained on) as HR: refuse a folder that holds only them."""
    hint = "give the folder with the HR images (HR/, or *_HR.png files in image_SRF_N/)"
    if _is_lr_folder(root):
        raise LesrcnnError(f"{root} holds low-resolution (LR) images; {hint}")
    lr = sorted(d.name for d in root.iterdir() if d.is_dir() and _is_lr_folder(d))
    if lr:
        raise LesrcnnError(f"{root} has LR images ({lr[0]}/) but no HR folder; {hint}")


def hr_images(folder: str | Path) -> list[Path]:
    """The HR images of a training or evaluation folder (``HR/``, ``*_HR/`` or every image in it)."""
    root = _existing_folder(folder)
    base, hr_dir = _hr_folder(root)
    if hr_dir is None:
        _refuse_lr(root)
        hr_dir = root
    found = list_images(hr_dir)
    if not found:
        raise LesrcnnError(f"no images in {hr_dir}")
    lr = next((d for p in found for d in p.relative_to(hr_dir).parts[:-1] if _LR_FOLDER.search(d)), None)
    if lr is not None:
        raise LesrcnnError(f"{hr_dir} mixes LR images ({lr}/) with the HR images; give the HR folder alone")
    return found


def _existing_folder(folder: str | Path) -> Path:
    root = Path(folder)
    if not root.exists():
        raise LesrcnnError(f"data folder not found: {root}")
    if not root.is_dir():
        raise LesrcnnError(f"not a folder: {root}")
    return root


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
    """Recognise a benchmark folder for ``scale``.

    - SelfExSR: ``ROOT/image_SRF_s/*_HR.png`` + ``*_LR.png`` (or ROOT is that folder);
    - BasicSR/DIV2K: ``ROOT/HR/`` + ``ROOT/LR_bicubic/Xs/`` (or ``*_HR`` + ``*_LR_bicubic``; LR
      names may end in ``xs``); ROOT may be the HR folder itself;
    - otherwise every image under ROOT is an HR image; LR is made with MATLAB bicubic.
    A folder of LR images only is refused: its images would be scored as if they were HR.
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
    base, hr_dir = _hr_folder(root)
    hrs = hr_images(root)
    if hr_dir is None:
        return Dataset(root.name, "hr-only", [Pair(str(p.relative_to(root).with_suffix("")), p, None) for p in hrs])
    prefix = hr_dir.name[:-2]  # "" for HR, "DIV2K_train_" for DIV2K_train_HR
    lr_dir = base / f"{prefix}LR_bicubic" / f"X{scale}"
    if not lr_dir.is_dir():
        return Dataset(base.name, "hr-only", [Pair(p.stem, p, None) for p in hrs])
    lrs = {_strip_scale_suffix(p.stem, scale): p for p in list_images(lr_dir)}
    pairs = []
    for p in hrs:
        key = _strip_scale_suffix(p.stem, scale)
        if key not in lrs:
            raise LesrcnnError(f"no LR image for {p} in {lr_dir}")
        pairs.append(Pair(p.stem, p, lrs[key]))
    return Dataset(base.name, "basicsr", pairs)


def load_pair(pair: Pair, scale: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of scale, LR) as HxWx3 uint8, sizes checked."""
    hr = read_rgb(pair.hr, max_pixels)
    if pair.lr is None:
        hr = crop_to_multiple(hr, scale)
        if hr.shape[0] == 0 or hr.shape[1] == 0:
            raise LesrcnnError(f"{pair.hr} is smaller than the scale x{scale}")
        return hr, imresize(hr, 1.0 / scale)
    lr = read_rgb(pair.lr, max_pixels)
    want = (lr.shape[0] * scale, lr.shape[1] * scale)
    if hr.shape[:2] != want:
        cropped = crop_to_multiple(hr, scale)
        if cropped.shape[:2] != want:
            raise LesrcnnError(
                f"HR/LR size mismatch for {pair.hr.name}: HR {hr.shape[1]}x{hr.shape[0]}, "
                f"LR {lr.shape[1]}x{lr.shape[0]} at x{scale}")
        hr = cropped
    return hr, lr
