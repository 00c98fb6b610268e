"""Files: atomic writes, and images as users have them. Pillow identifies every file, checks its
pixel count from the header and decodes 8-bit images; 16-bit colour or alpha, which Pillow cuts to
8 bits, goes through OpenCV (PNG) and tifffile (TIFF)."""
from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import re
import secrets
import struct
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np

from .errors import LesrcnnError, first_line

# --- atomic writes: to ``.NAME.lesrcnn-tmp-XXXXXXXX`` beside the target, then renamed onto it ----

TEMP_MARK = ".lesrcnn-tmp-"
_TEMP_NAME = re.compile(r"\..*\.lesrcnn-tmp-[0-9a-f]{8}", re.DOTALL)


def _try_lock(fd: int) -> bool:
    """Exclusive advisory lock, no waiting: False only when another process holds one."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError) as e:  # other than BlockingIOError: no flock here (Windows...)
        return not isinstance(e, BlockingIOError)
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without an exception (SIGTERM's
    included: then ``path`` is untouched). ``overwrite=False``: FileExistsError if ``path`` exists by
    then. The temp file gets a normal file's mode and a lock (clean_stale_temps leaves it alone)."""
    path = Path(path)
    # named before open(): a signal that lands inside open(), after the file appeared, removes it. Two
    # writers of one output drawing one of 2**32 names would both fail; neither would be half-written.
    tmp = str(path.parent / f".{path.name[:200]}{TEMP_MARK}{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            _try_lock(f.fileno())
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:  # a hard link is atomic and never replaces: of two writers of one name, one wins
            try:
                os.link(tmp, path)
            except OSError as e:  # FileExistsError, or no hard links here (FAT, some shares): check, rename
                if isinstance(e, FileExistsError) or os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, "already exists (pass --overwrite to replace it)",
                                          str(path)) from None
                os.rename(tmp, path)
    except OSError as e:
        if e.errno is None or (e.filename is not None and TEMP_MARK not in str(e.filename)):
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable = ()) -> Path:
    """The one check before work starts: an output is refused if it is a folder, one of ``inputs``
    (paths; a path that does not exist is none of them), or an existing file without ``overwrite``."""
    out = Path(path)
    if out.is_dir():
        raise LesrcnnError(f"{out} is a folder; name a file")
    if out.exists() and any(os.path.exists(p) and os.path.samefile(p, out) for p in inputs):
        raise LesrcnnError(f"{out} is an input; choose another output name")
    if out.exists() and not overwrite:
        raise LesrcnnError(f"{out} exists; pass --overwrite to replace it")
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    with atomic_output(path, overwrite) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), overwrite)


def clean_stale_temps(folder: str | os.PathLike, older_than_s: float = 600.0) -> int:
    """Remove the temp files a killed run (kill -9, power loss) left in ``folder``: only our names,
    older than ``older_than_s``, that no live writer holds locked. Returns how many went."""
    removed, cutoff = 0, time.time() - older_than_s
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for e in [e for e in entries if _TEMP_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)]:
            with contextlib.suppress(OSError), open(e.path, "rb") as f:
                if e.stat(follow_symlinks=False).st_mtime <= cutoff and _try_lock(f.fileno()):
                    os.unlink(e.path)
                    removed += 1
    return removed


# --- folders -------------------------------------------------------------------------------------

def inode(p: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_dev, st.st_ino


def files_under(root: Path, exclude: Path | None = None, max_depth: int | None = None,
                onerror: Callable[[OSError], None] | None = None) -> list[Path]:
    """Non-hidden files below ``root``, sorted: regular ones and broken links (they fail alone,
    with their reason), never FIFOs or devices. Folder links are followed, but each real folder
    is entered once (by the first path met), so link loops end; ``exclude`` counts as entered."""
    seen, found = {inode(d) for d in (root, exclude) if d is not None}, []
    for d, dirs, files in os.walk(root, followlinks=True, onerror=onerror):
        if max_depth is not None and len(Path(d).relative_to(root).parts) >= max_depth:
            dirs.clear()
        for name in sorted(dirs):
            key = inode(Path(d, name))
            if name.startswith(".") or key in seen:
                dirs.remove(name)
            else:
                seen.add(key)
        found += [Path(d, f) for f in files if not f.startswith(".") and
                  (os.path.isfile(Path(d, f)) or not os.path.exists(Path(d, f)))]
    return sorted(found)


# --- images --------------------------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 100_000_000  # input pixels above which a file is refused (decompression bombs)
#: Extensions picked up when a folder is searched for images (the one list: upscale, eval, train).
READ_EXTS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp",
                       ".ppm", ".pgm", ".pnm"})
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF",
           "bmp": "BMP"}
EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
DEEP_FORMATS = frozenset({"PNG", "TIFF"})  # 16 bits per sample
ALPHA_FORMATS = frozenset({"PNG", "TIFF", "WEBP"})
_MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383, "PNG": 2**31 - 1, "TIFF": 2**32 - 1, "BMP": 2**31 - 1}


class ImageWarning(UserWarning):
    """An image was changed on the way (CMYK converted, alpha flattened...): written, but say so."""


def warn(message: str) -> None:
    warnings.warn(message, ImageWarning, stacklevel=3)


@dataclass
class Picture:
    """An image ready for the network, and what must travel with it to the output file: ``color``
    HxWx1 or HxWx3, uint8 or uint16 (float32 in [0, 1] in memory); ``alpha`` HxW or None."""

    color: np.ndarray
    alpha: np.ndarray | None = None
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None
    exif: bytes | None = None
    format: str | None = None  # the format the file was in (Pillow's name: PNG, JPEG...)
    source: str = "<memory>"

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        return int(self.color.shape[1])

    @property
    def gray(self) -> bool:
        return self.color.shape[2] == 1

    @property
    def bits(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.color.dtype, 32)

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def max_value(dtype: np.dtype) -> float:
    """What 1.0 is in an array of ``dtype``: 255, 65535 or 1."""
    return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(np.dtype(dtype), 1.0)


def format_for_path(path: str | os.PathLike) -> str | None:
    """The output format an extension means (``.jpg`` -> ``JPEG``), None if none."""
    return FORMATS.get(Path(path).suffix.lower().lstrip("."))


def normalize_format(name: str) -> str:
    if name.lower().lstrip(".") not in FORMATS:
        raise LesrcnnError(f"unknown image format {name!r}: choose png, jpg, webp, tiff or bmp")
    return FORMATS[name.lower().lstrip(".")]


def writable_format(fmt: str | None) -> str:
    """An input format as an output format: itself where we write it well, PNG otherwise."""
    return fmt if fmt in EXTENSION else "PNG"


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 -> HxWx1 float32 with the BT.601 luma weights."""
    return (rgb.astype(np.float32, copy=False) @ np.float32([0.299, 0.587, 0.114]))[..., None]


# --- reading -------------------------------------------------------------------------------------

_PIL_LIMIT_LOCK = threading.Lock()


def _open_image(f: BinaryIO):
    """Image.open with Pillow's bomb check off: read_picture checks the header with its own limit."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(f)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _cv2():
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # errors reach the user as ours
    return cv2


def _cv2_rgb16(data: bytes) -> np.ndarray | None:
    """OpenCV's libpng or libtiff: 16-bit RGB(A) (gray+alpha PNG comes as RGBA), else None."""
    cv2 = _cv2()
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # BGR(A)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] < 3:
        return None
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB if a.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)


def _png16_planes(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """Only IHDR, IDAT and IEND go to libpng, which prints warnings about odd ancillary chunks (a bad
    ICC profile...) on stderr; Pillow has read the metadata."""
    view, kept, pos = memoryview(data), [data[:8]], 8
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", view[pos:pos + 8])
        if kind in (b"IHDR", b"IDAT", b"IEND"):
            kept.append(view[pos:pos + 12 + n])
        pos += 12 + n
    a = _cv2_rgb16(b"".join(kept))
    if a is None:
        raise LesrcnnError("OpenCV could not decode this 16-bit PNG")
    alpha = a[..., 3] if a.shape[2] == 4 else None
    return (a[..., :1] if data[25] == 4 else a[..., :3]), alpha  # colour type 4: gray+alpha


def _tiff16_planes(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        try:
            a = page.asarray()
            a = np.moveaxis(a, 0, -1) if page.axes.startswith("S") else a  # planar -> interleaved
        except ValueError as e:
            if "imagecodecs" not in str(e):
                raise
            a = _cv2_rgb16(data) if page.planarconfig == 1 else None  # LZW, JPEG...: libtiff in OpenCV,
            if a is None or a.shape[2] != page.samplesperpixel:  # which garbles planar 16-bit TIFFs
                raise LesrcnnError(f"this 16-bit TIFF's {page.compression.name} compression needs "
                                   f"'pip install imagecodecs'") from None
        color = a[..., :3]
        extra = page.extrasamples[0] if page.extrasamples else 2  # no tag: alpha, as Pillow reads it
        alpha = a[..., 3] if a.shape[-1] > 3 and extra else None  # 0: unspecified, not alpha
        if alpha is not None and extra == 1:  # associated (premultiplied) alpha
            w = np.maximum(alpha, 1)[..., None].astype(np.float32)
            color = np.clip(color * (65535.0 / w) + 0.5, 0, 65535).astype(np.uint16)
        return color, alpha


def _to_rgb(im, icc: bytes | None, source: str):
    """CMYK through its ICC profile where it has a usable one; YCbCr, LAB, HSV and other CMYK plainly."""
    from PIL import ImageCms

    if im.mode == "CMYK" and icc:
        with contextlib.suppress(ImageCms.PyCMSError, ImportError):  # ImportError: Pillow without littlecms
            srgb = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, io.BytesIO(icc), srgb, outputMode="RGB")
            warn(f"{source}: CMYK image converted to sRGB through its ICC profile")
            return out
    why = " (no usable ICC profile: colours are approximate)" if im.mode == "CMYK" else ""
    warn(f"{source}: {im.mode} image converted to RGB{why}")
    return im.convert("RGB")


_EXPAND = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "PA": "RGBA"}


def _standard_planes(im, name: str, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """Decoded PIL image -> (color HxWxC, alpha or None, the ICC profile still valid for them)."""
    m = im.mode
    if m == "F":
        raise LesrcnnError(f"{name}: 32-bit float images are not supported; convert to 16-bit PNG or TIFF")
    if m.startswith("I"):  # I;16, I;16B..., I (32-bit)
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise LesrcnnError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported")
        return a.astype(np.uint16)[..., None], None, icc
    if m in ("CMYK", "YCbCr", "LAB", "HSV"):
        im, icc = _to_rgb(im, icc, name), None
    elif m not in ("L", "LA", "RGB", "RGBA"):  # 1, La, RGBa, RGBX, P, PA
        im = im.convert(_EXPAND.get(m, "RGBA" if "transparency" in im.info else "RGB"))
    a = np.asarray(im).reshape(im.height, im.width, -1)
    n = 3 if im.mode.startswith("RGB") else 1
    return a[..., :n], (a[..., n] if a.shape[2] > n else None), icc


#: EXIF orientation -> (transpose, flip rows, flip columns), as Pillow's ``exif_transpose`` applies it.
_ORIENT = {2: (0, 0, 1), 3: (0, 1, 1), 4: (0, 1, 0), 5: (1, 0, 0), 6: (1, 0, 1), 7: (1, 1, 1), 8: (1, 1, 0)}


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HxW[xC] array."""
    transpose, rows, cols = _ORIENT.get(orientation, (0, 0, 0))
    a = a.swapaxes(0, 1) if transpose else a
    return np.ascontiguousarray(a[::-1 if rows else 1, ::-1 if cols else 1])


def _clean_dpi(dpi) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError, OverflowError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0 else None


def _picture(im, color, alpha, icc, source: str) -> Picture:
    """The planes turned by the file's EXIF orientation, and the metadata to carry over."""
    from PIL import Image

    orientation, exif = 1, None
    try:  # PNG: Pillow would decode the pixels to look for an eXIf after them (a decoded one is in info)
        tags = im.getexif() if im.format != "PNG" or "exif" in im.info else Image.Exif()
        orientation = int(tags.get(0x0112, 1) or 1)
        if "exif" in im.info:  # a real EXIF block (TIFF files report their own tags here: not carried)
            e = Image.Exif()
            e.load(im.info["exif"])
            e.pop(0x0112, None)
            exif = e.tobytes() if len(e) else None
    except Exception:  # noqa: BLE001 - broken EXIF must never stop an upscale
        warn(f"{source}: unreadable EXIF data ignored")
    alpha = None if alpha is None else orient(alpha, orientation)
    return Picture(color=orient(color, orientation), alpha=alpha, icc=icc, dpi=_clean_dpi(im.info.get("dpi")),
                   exif=exif, format=im.format, source=source)


def _decode(im, f: BinaryIO, source: str) -> Picture:
    """``im`` opened from ``f``; 16-bit colour or alpha, which Pillow would cut, is read from the bytes."""
    if getattr(im, "n_frames", 1) > 1:
        warn(f"{source}: {im.n_frames} frames/pages; only the first is upscaled")
    if im.format == "PNG":  # IHDR: bit depth 16 with colour type RGB, gray+alpha or RGBA
        f.seek(0)  # Pillow seeks to the pixels itself when it loads them
        deep = f.read(26)[24:] in (b"\x10\x02", b"\x10\x04", b"\x10\x06")
    else:
        tags = getattr(im, "tag_v2", {}) if im.format == "TIFF" else {}
        deep = np.max(tags.get(258) or 8) == 16 and tags.get(262) == 2  # RGB(A): Pillow opens no 16-bit LA
    if deep:
        f.seek(0)
        color, alpha = (_png16_planes if im.format == "PNG" else _tiff16_planes)(f.read())
        return _picture(im, color, alpha, im.info.get("icc_profile") or None, source)
    return picture_from_pil(im, source)


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 1e6 else f"{n:,} pixels"


def read_picture(src: str | os.PathLike | bytes | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> Picture:
    """An image file (path, bytes or binary file object) as a :class:`Picture`. Every failure is a
    one-line LesrcnnError: missing, empty, not an image, truncated, zero-size, above ``max_pixels``."""
    from PIL import UnidentifiedImageError

    data = None
    if isinstance(src, (str, os.PathLike)):
        name = name or str(Path(src))
        if not os.path.exists(src):
            raise LesrcnnError(f"{name}: no such file")
        if os.path.isdir(src):
            raise LesrcnnError(f"{name}: is a folder, not an image")
        if os.path.getsize(src) == 0:
            raise LesrcnnError(f"{name}: empty file")
    else:
        data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else src.read()
        name = name or "<stdin>"
        if len(data) == 0:
            raise LesrcnnError(f"{name}: no data")
    try:
        with open(src, "rb") if data is None else io.BytesIO(data) as f, _open_image(f) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise LesrcnnError(f"{name}: {w}x{h} = {_pixels(w * h)} is above the limit of "
                                   f"{_pixels(max_pixels)} (decompression bomb guard); raise --max-pixels to "
                                   f"allow it")
            return _decode(im, f, name)
    except LesrcnnError as e:
        raise LesrcnnError(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    except UnidentifiedImageError:
        raise LesrcnnError(f"{name}: not a readable image (unknown format, damaged header or zero "
                           f"size)") from None
    except MemoryError:
        raise LesrcnnError(f"{name}: not enough memory to decode the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError,
            zlib.error) as e:
        raise LesrcnnError(f"{name}: cannot decode the image ({first_line(e)})") from None


def picture_from_pil(im, name: str = "<PIL image>") -> Picture:
    """An in-memory PIL image as a :class:`Picture` (EXIF orientation applied, like a file)."""
    im.load()
    return _picture(im, *_standard_planes(im, name, im.info.get("icc_profile") or None), name)


def picture_to_pil(pic: Picture):
    """A :class:`Picture` of uint8 (any layout) or 16-bit gray (PIL has no other 16-bit mode) as a
    PIL image, metadata in ``info``."""
    from PIL import Image

    planes = _planes(pic.color, pic.alpha)
    im = Image.fromarray(np.ascontiguousarray(planes[..., 0] if planes.shape[2] == 1 else planes))
    im.info.update({k: v for k, v in (("icc_profile", pic.icc), ("dpi", pic.dpi), ("exif", pic.exif)) if v})
    return im


# --- writing -------------------------------------------------------------------------------------

def _planes(color: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    return color if alpha is None else np.concatenate([color, alpha[..., None]], axis=2)


def to_8bit(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (65535 -> 255)."""
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def flatten_alpha(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8/uint16 composited over white, 512 rows at a time (memory)."""
    mv = max_value(color.dtype)
    out = np.empty_like(color)
    for y in range(0, color.shape[0], 512):
        w = alpha[y:y + 512, :, None].astype(np.float32) / mv
        out[y:y + 512] = np.floor(color[y:y + 512].astype(np.float32) * w + mv * (1.0 - w) + 0.5)
    return out


def _encodable(pic: Picture, fmt: str) -> Picture:
    """What ``fmt`` holds, with a warning for each loss, so that every file written reads back: Pillow
    refuses a PNG whose ICC profile inflates past 1 MiB; JPEG holds 255 ICC segments, 64 KiB of
    EXIF and 16-bit densities; PNG, BMP and TIFF hold 32-bit pixels per metre."""
    from PIL import PngImagePlugin

    if pic.alpha is not None and fmt not in ALPHA_FORMATS:
        warn(f"{pic.source}: {fmt} has no alpha channel; transparency flattened onto white")
        pic = replace(pic, color=flatten_alpha(pic.color, pic.alpha), alpha=None)
    if pic.bits == 16 and fmt not in DEEP_FORMATS:
        warn(f"{pic.source}: {fmt} holds 8 bits per sample; the 16-bit result is reduced to 8 bits")
        pic = replace(pic, color=to_8bit(pic.color), alpha=None if pic.alpha is None else to_8bit(pic.alpha))
    limits = {"icc": ("ICC profile", {"PNG": PngImagePlugin.MAX_TEXT_CHUNK, "JPEG": 255 * (65533 - 14)}),
              "exif": ("EXIF block", {"JPEG": 65533})}
    for field, (what, limit) in limits.items():
        data = getattr(pic, field)
        if data and len(data) > limit.get(fmt, math.inf):
            warn(f"{pic.source}: {len(data):,}-byte {what} is too large for {fmt}; not written")
            pic = replace(pic, **{field: None})
    dpi = _clean_dpi(pic.dpi)
    if pic.dpi and not (dpi and all(1 <= round(d) <= 65535 if fmt == "JPEG" else 1 <= d / 0.0254 + 0.5 < 2**31
                                    for d in dpi)):
        warn(f"{pic.source}: DPI {pic.dpi[0]:g}x{pic.dpi[1]:g} does not fit a {fmt} file; not written")
        pic = replace(pic, dpi=None)
    return pic


def write_picture(pic: Picture, dst: str | os.PathLike | BinaryIO, fmt: str, quality: int | None = None,
                  overwrite: bool = True) -> None:
    """Encode ``pic`` (uint8 or uint16) as ``fmt`` to a path (atomically) or a binary stream."""
    fmt = normalize_format(fmt)
    if pic.bits not in (8, 16):
        raise LesrcnnError("only 8-bit and 16-bit pictures can be written")
    if max(pic.width, pic.height) > _MAX_SIDE[fmt]:
        raise LesrcnnError(f"{fmt} cannot hold a {pic.width}x{pic.height} image (at most {_MAX_SIDE[fmt]} "
                           f"pixels a side); choose png or tiff")
    if quality is not None and not 1 <= quality <= 100:
        raise LesrcnnError(f"quality must be 1..100, got {quality}")
    pic = _encodable(pic, fmt)
    q = 95 if quality is None else quality
    meta = {"icc_profile": pic.icc, "dpi": pic.dpi, "exif": None if fmt == "TIFF" else pic.exif}
    kw = {k: v for k, v in meta.items() if v}  # writers ignore what their format lacks; TIFF has own tags
    kw.update({"JPEG": {"quality": q, "subsampling": 0 if q >= 90 else 2},
               "WEBP": {"quality": q, "lossless": q >= 100, "method": 4},
               "TIFF": {"compression": "tiff_adobe_deflate"}}.get(fmt, {}))
    is_path = isinstance(dst, (str, os.PathLike))
    with atomic_output(dst, overwrite) if is_path else contextlib.nullcontext(dst) as f:
        try:
            if pic.bits == 16:
                (_write_png16 if fmt == "PNG" else _write_tiff16)(pic, f)
            else:
                picture_to_pil(pic).save(f, format=fmt, **kw)
        except (OSError, ValueError, struct.error, OverflowError) as e:
            if isinstance(e, OSError) and e.errno is not None:  # disk full...: the caller names the file
                raise
            raise LesrcnnError(f"cannot encode {fmt}: {first_line(e)}") from None


def _write_png16(pic: Picture, f: BinaryIO) -> None:
    """OpenCV's libpng with fast settings (3x the speed of its defaults); ICC, DPI and EXIF chunks,
    which OpenCV does not write, go in after IHDR. Gray+alpha, which OpenCV cannot write, is encoded
    as the 8-bit RGBA image of the same bytes (PNG filters work on bytes), and IHDR then says LA 16."""
    from PIL.PngImagePlugin import putchunk

    cv2 = _cv2()
    img = _planes(pic.color, pic.alpha)
    if img.shape[2] == 2:  # file bytes G_hi G_lo A_hi A_lo
        img = img.astype(">u2").view(np.uint8)
    if img.shape[2] > 1:  # OpenCV writes its B,G,R(,A) input as R,G,B(,A)
        to_bgr = cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        img = cv2.cvtColor(np.ascontiguousarray(img), to_bgr)
    fast = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FAST_FILTERS]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), fast)
    if not ok:
        raise ValueError("OpenCV could not encode the PNG")
    data = memoryview(buf).cast("B")
    ihdr = bytes(data[12:29])
    if pic.gray and pic.alpha is not None:
        ihdr = ihdr[:12] + b"\x10\x04" + ihdr[14:]
    f.write(data[:8])
    putchunk(f, ihdr[:4], ihdr[4:])
    if pic.icc:
        putchunk(f, b"iCCP", b"ICC Profile\0\0", zlib.compress(pic.icc))
    if pic.dpi:
        putchunk(f, b"pHYs", struct.pack(">IIB", *(int(d / 0.0254 + 0.5) for d in pic.dpi), 1))
    if pic.exif:
        putchunk(f, b"eXIf", pic.exif[6:] if pic.exif.startswith(b"Exif\0\0") else pic.exif)
    f.write(data[33:])


def _write_tiff16(pic: Picture, f: BinaryIO) -> None:
    """tifffile: deflate with the horizontal predictor, unassociated alpha, ICC and DPI tags. Gray
    with alpha is written as RGBA, which Pillow can open (it has no 16-bit gray+alpha TIFF mode)."""
    import tifffile

    color = pic.color if pic.alpha is None or not pic.gray else np.repeat(pic.color, 3, axis=2)
    planes = color[..., 0] if color.shape[2] == 1 else _planes(color, pic.alpha)
    out = f if f.seekable() else io.BytesIO()
    tifffile.imwrite(out, planes, photometric="rgb" if color.shape[2] == 3 else "minisblack",
                     compression="zlib", predictor=True,
                     extrasamples=("unassalpha",) if pic.alpha is not None else None,
                     iccprofile=pic.icc, resolution=pic.dpi, resolutionunit="INCH" if pic.dpi else None,
                     metadata=None, bigtiff=planes.nbytes > 0xF000_0000)
    if out is not f:
        f.write(out.getvalue())
