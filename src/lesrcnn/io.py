"""Files: atomic writes, and images as users have them.

Atomic writes go to a temporary file in the target folder and are renamed over the target,
so nothing is ever half-written.

Images are read into a :class:`Picture`: the colour planes (gray or RGB) as uint8 or uint16,
the alpha plane apart, and what must travel to the output (ICC profile, DPI, EXIF). What the
readers take care of:

- palette, 1-bit, premultiplied and RGBX modes are expanded; CMYK (and LAB/HSV/YCbCr) is
  converted to RGB with a warning (through its ICC profile when littlecms is available);
- 16-bit files stay 16-bit: gray 16-bit PNG/TIFF natively, and 16-bit RGB/RGBA PNG/TIFF and
  gray+alpha PNG (which Pillow would cut to 8 bits) by decoding them twice with Pillow's own
  C decoders, once for the high and once for the low byte of every sample;
- EXIF orientation is applied to the pixels and removed from the EXIF carried over;
- the pixel count is checked from the header, before decoding (decompression bombs).

Writers: Pillow for 8-bit files; our own small encoders for 16-bit PNG and TIFF (Pillow cannot
write 16-bit colour).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from .errors import LesrcnnError

# --- atomic writes -------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. The file
    gets the permissions of a normally created file (mkstemp would make it 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


# --- images --------------------------------------------------------------------------------------

#: Input pixels (width x height) above which a file is refused unless the caller raises the limit.
DEFAULT_MAX_PIXELS = 100_000_000

#: Extensions picked up when a folder is searched for images.
READ_EXTS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp",
                       ".ppm", ".pgm", ".pnm"})

#: Output formats and their extensions.
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}
EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
#: Formats that hold 16 bits per sample / an alpha channel.
DEEP_FORMATS = frozenset({"PNG", "TIFF"})
ALPHA_FORMATS = frozenset({"PNG", "TIFF", "WEBP"})
_MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383, "PNG": 2**31 - 1, "TIFF": 2**32 - 1, "BMP": 2**31 - 1}

_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageWarning(UserWarning):
    """Something about an image or its processing was changed on the way (CMYK converted, alpha
    flattened, fp16 requested on a CPU...): the result is written, but the user should know."""


def warn(message: str) -> None:
    warnings.warn(message, ImageWarning, stacklevel=3)


@dataclass
class Picture:
    """An image ready for the network, and what must travel with it to the output file.

    ``color`` is HxWx1 (gray) or HxWx3 (RGB), uint8 or uint16 (or float32 in [0, 1] for
    in-memory images); ``alpha`` is HxW of the same dtype, or None.
    """

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
    """``png``/``jpg``/``jpeg``/``webp``/``tif``/``tiff``/``bmp`` (any case) -> Pillow's format name."""
    fmt = FORMATS.get(name.lower().lstrip("."))
    if fmt is None:
        raise LesrcnnError(f"unknown image format {name!r}: choose png, jpg, webp, tiff or bmp")
    return fmt


def writable_format(fmt: str | None) -> str:
    """An input format as an output format: itself where we write it well, PNG otherwise."""
    fmt = (fmt or "PNG").upper()
    return fmt if fmt in EXTENSION else "PNG"


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 float -> HxWx1 float with the BT.601 luma weights (0.299, 0.587, 0.114)."""
    return (rgb.astype(np.float32, copy=False) @ _BT601)[..., None]


# --- reading -------------------------------------------------------------------------------------

_PIL_LIMIT_LOCK = threading.Lock()


def _open_image(src):
    """Image.open with Pillow's own bomb check off (we check the header ourselves, with our limit)."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(src)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _rawmode(im) -> str | None:
    if not getattr(im, "tile", None):
        return None
    args = im.tile[0].args
    return args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args and
                                                isinstance(args[0], str) else None)


def _with_rawmode(im, rawmode: str) -> None:
    def swap(args):
        return rawmode if isinstance(args, str) else (rawmode, *args[1:])
    im.tile = [t._replace(args=swap(t.args)) for t in im.tile]


def _byte_orders(rawmode: str) -> tuple[str, str]:
    """'RGB;16B' -> ('RGB;16B', 'RGB;16L'): the rawmode that yields the high byte, then the low byte."""
    base, order = rawmode[:-1], rawmode[-1]
    if order == "N":
        order = "L" if sys.byteorder == "little" else "B"
    return base + order, base + ("L" if order == "B" else "B")


_HILO_RAWMODES = {f"{m};16{o}" for m in ("RGB", "RGBA") for o in "BLN"}


def _decode_deep(im, opener: Callable[[], object]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """16-bit colour/gray+alpha that Pillow would reduce to 8 bits: (color, alpha) as uint16, else None."""
    rawmode = _rawmode(im)
    if im.mode in ("RGB", "RGBA") and rawmode in _HILO_RAWMODES and len(im.tile) >= 1:
        hi_mode, lo_mode = _byte_orders(rawmode)
        _with_rawmode(im, hi_mode)
        im.load()
        hi = np.asarray(im)
        with opener() as im2:
            _with_rawmode(im2, lo_mode)
            im2.load()
            lo = np.asarray(im2)
        a = (hi.astype(np.uint16) << 8) | lo.astype(np.uint16)
        return (a[..., :3], a[..., 3]) if im.mode == "RGBA" else (a, None)
    if im.format == "PNG" and im.mode == "RGBA" and rawmode == "LA;16B":
        # 16-bit gray+alpha: the same 4 bytes per pixel as 8-bit RGBA, so the PNG unfiltering matches
        _with_rawmode(im, "RGBA")
        im.load()
        b = np.asarray(im).astype(np.uint16)
        return ((b[..., 0] << 8) | b[..., 1])[..., None], (b[..., 2] << 8) | b[..., 3]
    return None


def _cmyk_to_rgb(im, icc: bytes | None, source: str):
    from PIL import Image, features

    if icc and features.check("littlecms2"):
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            warn(f"{source}: CMYK image converted to sRGB through its ICC profile")
            return out
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    warn(f"{source}: CMYK image converted to RGB (no usable ICC profile: colours are approximate)")
    return im.convert("RGB")


def _standard_planes(im, source: str, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """Decoded PIL image -> (color HxWxC, alpha or None, the ICC profile still valid for them)."""
    m = im.mode
    if m in ("P", "PA"):
        im = im.convert("RGBA" if (m == "PA" or "transparency" in im.info) else "RGB")
    elif m == "1":
        im = im.convert("L")
    elif m == "La":
        im = im.convert("LA")
    elif m == "RGBa":
        im = im.convert("RGBA")
    elif m == "RGBX":
        im = im.convert("RGB")
    elif m == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc, source), None
    elif m in ("YCbCr", "LAB", "HSV"):
        warn(f"{source}: {m} image converted to RGB")
        im, icc = im.convert("RGB"), None
    elif m.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)[..., None], None, icc
    elif m == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise LesrcnnError(f"{source}: 32-bit integer image with values outside 0..65535 is not supported")
        return a.astype(np.uint16)[..., None], None, icc
    elif m == "F":
        raise LesrcnnError(f"{source}: 32-bit float images are not supported; convert to 16-bit PNG or TIFF")
    m = im.mode
    a = np.asarray(im)
    if m == "L":
        return a[..., None], None, icc
    if m == "LA":
        return a[..., :1], a[..., 1], icc
    if m == "RGB":
        return a, None, icc
    if m == "RGBA":
        return a[..., :3], a[..., 3], icc
    raise LesrcnnError(f"{source}: unsupported image mode {m}")


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HxW[xC] array, as Pillow's ``exif_transpose`` does."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = np.rot90(a, 2).swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _clean_dpi(dpi) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    return x, y


def _metadata(im, source: str) -> tuple[bytes | None, tuple[float, float] | None, bytes | None, int]:
    """(ICC, DPI, EXIF without orientation, orientation) of a loaded image."""
    from PIL import Image

    icc = im.info.get("icc_profile") or None
    dpi = _clean_dpi(im.info.get("dpi"))
    orientation, exif = 1, None
    try:
        tags = im.getexif()
        orientation = int(tags.get(0x0112, 1) or 1)
        if "exif" in im.info:  # a real EXIF block (TIFF files report their own tags here: not carried)
            e = Image.Exif()
            e.load(im.info["exif"])
            e.pop(0x0112, None)
            exif = e.tobytes() if len(e) else None
    except Exception:  # noqa: BLE001 - broken EXIF must never stop an upscale
        warn(f"{source}: unreadable EXIF data ignored")
        exif = None
    return icc, dpi, exif, orientation if 1 <= orientation <= 8 else 1


def _decode(im, opener: Callable[[], object], source: str) -> Picture:
    if getattr(im, "n_frames", 1) > 1:
        warn(f"{source}: {im.n_frames} frames/pages; only the first is upscaled")
    deep = _decode_deep(im, opener)
    if deep is None:
        im.load()
    icc, dpi, exif, orientation = _metadata(im, source)
    if deep is not None:
        color, alpha = deep
    else:
        color, alpha, icc = _standard_planes(im, source, icc)
    color = orient(color, orientation)
    alpha = orient(alpha, orientation) if alpha is not None else None
    return Picture(color=color, alpha=alpha, icc=icc, dpi=dpi, exif=exif, format=im.format, source=source)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def read_picture(src: str | os.PathLike | bytes | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> Picture:
    """Read an image file (path, bytes or binary file object) into a :class:`Picture`.

    Every failure is a one-line :class:`LesrcnnError`: missing, empty, not an image, truncated,
    zero-size, above ``max_pixels`` (None: no limit).
    """
    from PIL import UnidentifiedImageError

    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = name or str(path)
        if not path.exists():
            raise LesrcnnError(f"{name}: no such file")
        if path.is_dir():
            raise LesrcnnError(f"{name}: is a folder, not an image")
        if path.stat().st_size == 0:
            raise LesrcnnError(f"{name}: empty file")
        opener = lambda: _open_image(path)  # noqa: E731
    else:
        data = src if isinstance(src, (bytes, bytearray, memoryview)) else src.read()
        name = name or "<stdin>"
        if len(data) == 0:
            raise LesrcnnError(f"{name}: no data")
        opener = lambda: _open_image(io.BytesIO(data))  # noqa: E731
    try:
        with opener() as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise LesrcnnError(f"{name}: zero-size image ({w}x{h})")
            if max_pixels is not None and w * h > max_pixels:
                raise LesrcnnError(f"{name}: {w}x{h} = {w * h / 1e6:.1f} MP is above the limit of "
                                   f"{max_pixels / 1e6:g} MP (decompression bomb guard); raise --max-pixels to allow it")
            return _decode(im, opener, name)
    except LesrcnnError:
        raise
    except UnidentifiedImageError:
        raise LesrcnnError(f"{name}: not a readable image (unknown format, damaged header or zero size)") from None
    except MemoryError:
        raise LesrcnnError(f"{name}: not enough memory to decode the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError) as e:
        raise LesrcnnError(f"{name}: cannot decode the image ({_first_line(e)})") from None


def picture_from_pil(im, name: str = "<PIL image>") -> Picture:
    """An in-memory PIL image as a :class:`Picture` (EXIF orientation applied, like a file)."""
    if im.width == 0 or im.height == 0:
        raise LesrcnnError(f"{name}: zero-size image")
    im.load()
    icc, dpi, exif, orientation = _metadata(im, name)
    color, alpha, icc = _standard_planes(im, name, icc)
    color = orient(color, orientation)
    alpha = orient(alpha, orientation) if alpha is not None else None
    return Picture(color=color, alpha=alpha, icc=icc, dpi=dpi, exif=exif, format=im.format, source=name)


def picture_to_pil(pic: Picture):
    """A :class:`Picture` of uint8 (any layout) or 16-bit gray as a PIL image, metadata in ``info``."""
    from PIL import Image

    c, a = pic.color, pic.alpha
    if pic.bits == 16 and (not pic.gray or a is not None):
        raise LesrcnnError("PIL has no 16-bit colour or 16-bit alpha mode; use an array or write a PNG/TIFF")
    if pic.bits not in (8, 16):
        raise LesrcnnError("only 8-bit and 16-bit pictures convert to PIL images")
    planes = c if a is None else np.concatenate([c, a[..., None]], axis=2)
    im = Image.fromarray(np.ascontiguousarray(planes[..., 0] if planes.shape[2] == 1 else planes))  # L/I;16/LA/RGB(A)
    if pic.icc:
        im.info["icc_profile"] = pic.icc
    if pic.dpi:
        im.info["dpi"] = pic.dpi
    if pic.exif:
        im.info["exif"] = pic.exif
    return im


# --- writing -------------------------------------------------------------------------------------

def to_8bit(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (65535 -> 255)."""
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def flatten_alpha(color: np.ndarray, alpha: np.ndarray, background: float = 1.0) -> np.ndarray:
    """Composite over a flat background (1.0: white), same dtype out, row block by row block."""
    mv = max_value(color.dtype)
    out = np.empty_like(color)
    for y in range(0, color.shape[0], 512):
        c = color[y:y + 512].astype(np.float32)
        w = alpha[y:y + 512, :, None].astype(np.float32) / mv
        v = c * w + (background * mv) * (1.0 - w)
        out[y:y + 512] = np.clip(np.floor(v + 0.5), 0, mv).astype(color.dtype) if mv > 1 else np.clip(v, 0, 1)
    return out


def _png_chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png16(f: BinaryIO, planes: np.ndarray, icc: bytes | None = None, dpi: tuple[float, float] | None = None,
                level: int = 6) -> None:
    """HxWxC uint16 (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) as a 16-bit PNG (Sub filter, zlib)."""
    h, w, c = planes.shape
    f.write(b"\x89PNG\r\n\x1a\n")
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if dpi:
        ppm = [max(1, round(d / 0.0254)) for d in dpi]
        _png_chunk(f, b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    bpp = 2 * c
    comp = zlib.compressobj(level)
    buf = bytearray()
    rows = max(1, (4 << 20) // max(1, w * bpp))
    for y in range(0, h, rows):
        raw = planes[y:y + rows].astype(">u2").view(np.uint8).reshape(-1, w * bpp)
        filt = raw.copy()
        filt[:, bpp:] -= raw[:, :-bpp]  # Sub filter: wraps modulo 256 as the PNG spec says
        block = np.concatenate([np.ones((filt.shape[0], 1), np.uint8), filt], axis=1)
        buf += comp.compress(block.tobytes())
        while len(buf) >= 1 << 20:
            _png_chunk(f, b"IDAT", bytes(buf[:1 << 20]))
            del buf[:1 << 20]
    buf += comp.flush()
    for i in range(0, len(buf), 1 << 20):
        _png_chunk(f, b"IDAT", bytes(buf[i:i + (1 << 20)]))
    _png_chunk(f, b"IEND", b"")


def _rational(v: float) -> tuple[int, int]:
    den = 10_000
    return max(1, round(v * den)), den


def write_tiff16(f: BinaryIO, planes: np.ndarray, icc: bytes | None = None,
                 dpi: tuple[float, float] | None = None, level: int = 6) -> None:
    """HxWxC uint16 as a little-endian baseline TIFF: deflate with horizontal predictor, one IFD."""
    h, w, c = planes.shape
    out = io.BytesIO() if not f.seekable() else None
    g = out or f
    start = g.tell()
    g.write(b"II*\x00" + struct.pack("<I", 0))  # IFD offset patched at the end
    rows = max(1, (1 << 18) // max(1, w * c * 2))
    offsets, counts = [], []
    for y in range(0, h, rows):
        a = planes[y:y + rows].astype("<u2")
        d = a.copy()
        d[:, 1:] -= a[:, :-1]  # predictor 2, per sample, modulo 2^16
        data = zlib.compress(d.tobytes(), level)
        offsets.append(g.tell() - start)
        counts.append(len(data))
        g.write(data)
        if g.tell() - start > 0xFFF0_0000:
            raise LesrcnnError("the image is too large for a classic TIFF (4 GiB); write a PNG instead")
    entries: list[tuple[int, int, list | bytes]] = [
        (256, 4, [w]), (257, 4, [h]), (258, 3, [16] * c), (259, 3, [8]), (262, 3, [1 if c <= 2 else 2]),
        (273, 4, offsets), (277, 3, [c]), (278, 4, [rows]), (279, 4, counts), (284, 3, [1]), (317, 3, [2]),
        (339, 3, [1] * c)]
    if dpi:
        entries += [(282, 5, [_rational(dpi[0])]), (283, 5, [_rational(dpi[1])]), (296, 3, [2])]
    if c in (2, 4):
        entries.append((338, 3, [2]))  # unassociated alpha
    if icc:
        entries.append((34675, 7, icc))
    entries.sort(key=lambda e: e[0])

    def pack(typ: int, vals) -> bytes:
        if typ == 3:
            return struct.pack(f"<{len(vals)}H", *vals)
        if typ == 4:
            return struct.pack(f"<{len(vals)}I", *vals)
        if typ == 5:
            return b"".join(struct.pack("<II", *v) for v in vals)
        return bytes(vals)

    if (g.tell() - start) % 2:
        g.write(b"\x00")
    # out-of-line values first (word aligned), then the IFD that points at them
    extra_at = g.tell() - start
    extra = bytearray()
    ifd = [struct.pack("<H", len(entries))]
    for tag, typ, vals in entries:
        data = pack(typ, vals)
        if len(data) > 4:
            ifd.append(struct.pack("<HHII", tag, typ, len(vals), extra_at + len(extra)))
            extra += data + b"\x00" * (len(data) % 2)
        else:
            ifd.append(struct.pack("<HHI", tag, typ, len(vals)) + data.ljust(4, b"\x00"))
    ifd.append(struct.pack("<I", 0))
    ifd_at = extra_at + len(extra)
    g.write(bytes(extra))
    g.write(b"".join(ifd))
    end = g.tell()
    g.seek(start + 4)
    g.write(struct.pack("<I", ifd_at))
    g.seek(end)
    if out is not None:
        f.write(out.getvalue())


def _save_kwargs(fmt: str, pic: Picture, quality: int | None) -> dict:
    kw: dict = {}
    if pic.icc and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kw["icc_profile"] = pic.icc
    if pic.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        kw["dpi"] = pic.dpi if fmt != "JPEG" else tuple(int(round(d)) for d in pic.dpi)
    if pic.exif and fmt in ("PNG", "JPEG", "WEBP"):
        kw["exif"] = pic.exif
    q = 95 if quality is None else quality
    if fmt == "JPEG":
        kw.update(quality=q, subsampling=0 if q >= 90 else 2)
    elif fmt == "WEBP":
        kw.update(quality=q, lossless=q >= 100, method=4)
    elif fmt == "TIFF":
        kw["compression"] = "tiff_adobe_deflate"
    return kw


def encodable(pic: Picture, fmt: str) -> Picture:
    """What ``fmt`` can hold: 16 -> 8 bits outside PNG/TIFF, alpha flattened onto white for JPEG/BMP."""
    if pic.alpha is not None and fmt not in ALPHA_FORMATS:
        warn(f"{pic.source}: {fmt} has no alpha channel; transparency flattened onto white")
        pic = replace(pic, color=flatten_alpha(pic.color, pic.alpha), alpha=None)
    if pic.bits == 16 and fmt not in DEEP_FORMATS:
        warn(f"{pic.source}: {fmt} holds 8 bits per sample; the 16-bit result is reduced to 8 bits")
        pic = replace(pic, color=to_8bit(pic.color), alpha=None if pic.alpha is None else to_8bit(pic.alpha))
    return pic


def write_picture(pic: Picture, dst: str | os.PathLike | BinaryIO, fmt: str, quality: int | None = None) -> None:
    """Encode ``pic`` (uint8 or uint16) as ``fmt`` to a path (atomically) or a binary stream."""
    fmt = fmt.upper()
    if fmt not in EXTENSION:
        raise LesrcnnError(f"cannot write format {fmt}: choose one of png, jpg, webp, tiff, bmp")
    if pic.bits not in (8, 16):
        raise LesrcnnError("only 8-bit and 16-bit pictures can be written")
    if max(pic.width, pic.height) > _MAX_SIDE[fmt]:
        raise LesrcnnError(f"{fmt} cannot hold a {pic.width}x{pic.height} image (at most {_MAX_SIDE[fmt]} pixels a "
                           f"side); choose png or tiff")
    if quality is not None and not 1 <= quality <= 100:
        raise LesrcnnError(f"quality must be 1..100, got {quality}")
    pic = encodable(pic, fmt)
    if isinstance(dst, (str, os.PathLike)):
        with atomic_output(dst) as f:
            _encode(pic, f, fmt, quality)
    else:
        _encode(pic, dst, fmt, quality)


def _encode(pic: Picture, f: BinaryIO, fmt: str, quality: int | None) -> None:
    if pic.bits == 16:
        planes = pic.color if pic.alpha is None else np.concatenate([pic.color, pic.alpha[..., None]], axis=2)
        (write_png16 if fmt == "PNG" else write_tiff16)(f, planes, pic.icc, pic.dpi)
        return
    im = picture_to_pil(pic)
    try:
        im.save(f, format=fmt, **_save_kwargs(fmt, pic, quality))
    except (OSError, ValueError) as e:
        raise LesrcnnError(f"cannot encode {fmt}: {_first_line(e)}") from None
