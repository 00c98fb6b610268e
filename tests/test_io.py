"""Reading and writing images as users have them (lesrcnn.io): real files, written here."""
from __future__ import annotations

import io
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from conftest import natural_image
from lesrcnn.errors import LesrcnnError
from lesrcnn.io import (ImageWarning, Picture, atomic_output, atomic_write_bytes, clean_stale_temps, orient,
                        read_picture, write_picture)

SRC = Path(__file__).resolve().parents[1] / "src"


# --- an independent PNG encoder (every filter type), so 16-bit files are not made by the code under test

def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def png_bytes(a: np.ndarray, bits: int = 16, width: int | None = None, height: int | None = None,
              idat: bytes | None = None) -> bytes:
    """HxWxC (C 1..4) as PNG; row r uses filter r % 5, so None/Sub/Up/Average/Paeth all occur."""
    h, w, c = a.shape
    dt = ">u2" if bits == 16 else "u1"
    bpp = c * bits // 8
    rows, prev = [], bytes(w * bpp)
    for r in range(h):
        raw = a[r].astype(dt).tobytes()
        f = r % 5
        out = bytearray()
        for i, x in enumerate(raw):
            left = raw[i - bpp] if i >= bpp else 0
            up = prev[i]
            ul = prev[i - bpp] if i >= bpp else 0
            pred = [0, left, up, (left + up) // 2, _paeth(left, up, ul)][f]
            out.append((x - pred) & 0xFF)
        rows.append(bytes([f]) + bytes(out))
        prev = raw

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width or w, height or h, bits, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def planes(p: Picture) -> np.ndarray:
    return p.color if p.alpha is None else np.concatenate([p.color, p.alpha[..., None]], axis=2)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_keeps_16_bits(tmp_path, channels):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    f = tmp_path / "deep.png"
    f.write_bytes(png_bytes(a))
    p = read_picture(f)
    assert p.bits == 16 and p.color.dtype == np.uint16
    assert (p.alpha is not None) == (channels in (2, 4)) and p.gray == (channels <= 2)
    np.testing.assert_array_equal(planes(p), a)


@pytest.mark.parametrize("fmt,channels", [("PNG", 1), ("PNG", 2), ("PNG", 3), ("PNG", 4), ("TIFF", 1),
                                          ("TIFF", 2), ("TIFF", 3), ("TIFF", 4)])
def test_16bit_writers_round_trip(tmp_path, fmt, channels):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 65536, (20, 13, channels)).astype(np.uint16)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    p = Picture(color=a[..., :1 if channels <= 2 else 3], alpha=a[..., -1] if channels in (2, 4) else None,
                icc=b"not-a-real-profile", dpi=(600.0, 300.0), exif=exif.tobytes())
    f = tmp_path / f"o.{fmt.lower()}"
    write_picture(p, f, fmt)
    back = read_picture(f)
    assert back.bits == 16 and back.icc == p.icc
    assert back.dpi == pytest.approx((600, 300), abs=0.01)
    if fmt == "TIFF" and channels == 2:  # Pillow has no 16-bit gray+alpha TIFF: written as RGBA, same values
        np.testing.assert_array_equal(planes(back), np.concatenate([a[..., :1]] * 3 + [a[..., 1:]], axis=2))
    else:
        np.testing.assert_array_equal(planes(back), a)
    if fmt == "PNG":
        kept = Image.Exif()
        kept.load(back.exif)
        assert kept.get(0x010F) == "TestCam"
    with Image.open(f) as im:  # other readers open it too
        im.load()
        assert im.size == (13, 20) and im.info.get("icc_profile") == p.icc


def test_16bit_tiff_written_elsewhere(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(3).integers(0, 65536, (17, 23, 3)).astype(np.uint16)
    for order in "<>":
        f = tmp_path / f"t{order == '<'}.tif"
        tifffile.imwrite(f, a, photometric="rgb", byteorder=order, compression="zlib")
        np.testing.assert_array_equal(read_picture(f).color, a)
    write_picture(Picture(color=a), tmp_path / "ours.tif", "TIFF")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ours.tif"), a)


def test_grayscale_palette_1bit_la(tmp_path):
    g = natural_image(12, 10)[..., 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    p = read_picture(tmp_path / "g.png")
    assert p.gray and p.alpha is None and p.bits == 8
    np.testing.assert_array_equal(p.color[..., 0], g)

    pal = Image.fromarray(natural_image(12, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    p = read_picture(tmp_path / "p.png")
    assert p.color.shape == (12, 10, 3) and p.alpha is None
    np.testing.assert_array_equal(p.color, np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    p = read_picture(tmp_path / "pt.png")
    assert p.alpha is not None and set(np.unique(p.alpha)) <= {0, 255} and (p.alpha == 0).any()

    Image.fromarray(g > 128).save(tmp_path / "b.png")
    p = read_picture(tmp_path / "b.png")
    assert p.gray and set(np.unique(p.color)) <= {0, 255}

    la = Image.merge("LA", [Image.fromarray(g), Image.fromarray(255 - g)])
    la.save(tmp_path / "la.png")
    p = read_picture(tmp_path / "la.png")
    assert p.gray and p.alpha is not None
    np.testing.assert_array_equal(p.alpha, 255 - g)


def test_cmyk_jpeg_is_converted_with_a_warning(tmp_path):
    Image.fromarray(natural_image(16, 16)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with pytest.warns(ImageWarning, match="CMYK"):
        p = read_picture(tmp_path / "c.jpg")
    assert p.color.shape == (16, 16, 3) and p.icc is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    im = Image.fromarray(natural_image(6, 9, seed=orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: carried over
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    p = read_picture(tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as ref:
        want = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    np.testing.assert_array_equal(p.color, want)
    kept = Image.Exif()
    kept.load(p.exif)
    assert 0x0112 not in kept and kept.get(0x010F) == "TestCam"


def test_exif_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 cw to display
    Image.fromarray(natural_image(20, 32)).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    p = read_picture(tmp_path / "r.jpg")
    assert (p.height, p.width) == (32, 20)
    assert orient(np.arange(6).reshape(2, 3), 6).shape == (3, 2)


def test_icc_and_dpi_are_kept(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(natural_image(8, 8)).save(tmp_path / "i.png", icc_profile=icc, dpi=(300, 300))
    p = read_picture(tmp_path / "i.png")
    assert p.icc == icc and p.dpi == pytest.approx((300, 300), abs=0.01)
    for fmt in ("PNG", "JPEG", "TIFF", "WEBP"):
        f = tmp_path / f"o.{fmt.lower()}"
        write_picture(p, f, fmt)
        with Image.open(f) as im:
            assert im.info.get("icc_profile") == icc, fmt
            if fmt != "WEBP":
                assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01), fmt


def _zero_width_bmp() -> bytes:
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 0, 5, 1, 24, 0, 0, 2835,
                                                                    2835, 0, 0)


@pytest.mark.parametrize("make,match", [
    (lambda: b"this is not an image", "not a readable image"),
    (lambda: b"", "empty"),
    (lambda: png_bytes(np.zeros((1, 1, 3), np.uint8), bits=8, width=100_000, height=100_000), "above the limit"),
    (lambda: _zero_width_bmp(), "zero size"),
])
def test_bad_files_are_one_line_errors(tmp_path, make, match):
    f = tmp_path / "bad.png"
    f.write_bytes(make())
    with pytest.raises(LesrcnnError, match=match) as e:
        read_picture(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    f = tmp_path / "t.png"
    f.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(LesrcnnError, match="cannot decode"):
        read_picture(f)


def test_pixel_limit_can_be_raised(tmp_path):
    Image.fromarray(natural_image(30, 40)).save(tmp_path / "x.png")
    with pytest.raises(LesrcnnError, match="max-pixels"):
        read_picture(tmp_path / "x.png", max_pixels=1000)
    assert read_picture(tmp_path / "x.png", max_pixels=1200).width == 40
    assert read_picture(tmp_path / "x.png", max_pixels=None).width == 40


def test_output_conversions_warn(tmp_path):
    c = natural_image(8, 8)
    a = np.full((8, 8), 0, np.uint8)
    with pytest.warns(ImageWarning, match="alpha|transparency"):
        write_picture(Picture(color=c, alpha=a), tmp_path / "a.jpg", "JPEG", quality=100)
    assert np.asarray(Image.open(tmp_path / "a.jpg")).min() > 240  # transparent -> white
    with pytest.warns(ImageWarning, match="8 bits"):
        write_picture(Picture(color=c.astype(np.uint16) * 257), tmp_path / "d.webp", "WEBP")
    with pytest.raises(LesrcnnError, match="WEBP cannot hold"):
        write_picture(Picture(color=np.zeros((1, 17000, 3), np.uint8)), tmp_path / "big.webp", "WEBP")
    with pytest.raises(LesrcnnError, match="unknown image format 'gif'"):
        write_picture(Picture(color=c), tmp_path / "a.gif", "gif")
    assert not (tmp_path / "a.gif").exists() and not (tmp_path / "big.webp").exists()


def test_atomic_output_leaves_nothing_behind(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(f) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert f.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["x.bin"]
    atomic_write_bytes(f, b"new")
    assert f.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["x.bin"]
    assert stat.S_IMODE(f.stat().st_mode) & 0o044  # readable by others (not mkstemp's 0600), umask allowing


def test_16bit_tiffs_other_writers_make(tmp_path):
    """LZW (tifffile cannot decode it without imagecodecs) and planar TIFFs keep their 16 bits."""
    import cv2
    import tifffile

    a = np.random.default_rng(5).integers(0, 65536, (9, 14, 4)).astype(np.uint16)
    for ch in (3, 4):
        ok, buf = cv2.imencode(".tif", np.ascontiguousarray(a[..., :ch][..., [2, 1, 0, 3][:ch]]),
                               [cv2.IMWRITE_TIFF_COMPRESSION, 5])  # 5: LZW
        (tmp_path / f"lzw{ch}.tif").write_bytes(buf.tobytes())
        np.testing.assert_array_equal(planes(read_picture(tmp_path / f"lzw{ch}.tif")), a[..., :ch])
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(a[..., :3], -1, 0), photometric="rgb",
                     planarconfig="separate", compression="zlib")
    np.testing.assert_array_equal(read_picture(tmp_path / "planar.tif").color, a[..., :3])


def test_odd_chunks_in_a_16bit_png_print_nothing(tmp_path, capfd):
    """libpng would print 'iCCP: too short' on stderr: a CLI error must stay one line."""
    a = np.random.default_rng(2).integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    data = png_bytes(a)
    iccp = b"x\0\0" + zlib.compress(b"short")
    chunk = struct.pack(">I", len(iccp)) + b"iCCP" + iccp + struct.pack(">I", zlib.crc32(b"iCCP" + iccp))
    (tmp_path / "odd.png").write_bytes(data[:33] + chunk + data[33:])
    np.testing.assert_array_equal(read_picture(tmp_path / "odd.png").color, a)
    assert capfd.readouterr().err == ""


def test_huge_icc_profile_is_dropped_where_the_file_could_not_be_read_back(tmp_path):
    """A 5 MiB profile (JPEG splits it over APP2 segments) made PNGs neither Pillow nor we could open."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big = icc + bytes(np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8))
    Image.fromarray(natural_image(8, 8)).save(tmp_path / "big.jpg", icc_profile=big, quality=95)
    p = read_picture(tmp_path / "big.jpg")
    assert p.icc == big
    for fmt, bits in (("PNG", 8), ("PNG", 16), ("JPEG", 8), ("TIFF", 16), ("WEBP", 8)):
        pic = p if bits == 8 else Picture(color=p.color.astype(np.uint16) * 257, icc=p.icc)
        f = tmp_path / f"o{bits}.{fmt.lower()}"
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            write_picture(pic, f, fmt)
        dropped = any("ICC profile is too large" in str(x.message) for x in w)
        assert dropped == (fmt == "PNG"), fmt
        with Image.open(f) as im:
            im.load()
            assert (im.info.get("icc_profile") or None) == (None if dropped else big), fmt
        assert read_picture(f).icc == (None if dropped else big)


@pytest.mark.parametrize("dpi", [(1e12, 1e12), (1e300, 72.0), (0.001, 0.001), (70000.0, 70000.0)])
def test_extreme_dpi_is_dropped_not_a_crash(tmp_path, dpi):
    for fmt, bits in (("PNG", 8), ("PNG", 16), ("JPEG", 8), ("TIFF", 8), ("TIFF", 16), ("BMP", 8), ("WEBP", 8)):
        c = natural_image(6, 5)
        pic = Picture(color=c if bits == 8 else c.astype(np.uint16) * 257, dpi=dpi)
        f = tmp_path / f"o{bits}.{fmt.lower()}"
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            write_picture(pic, f, fmt)
        with Image.open(f) as im:
            im.load()
        back = read_picture(f)
        assert back.width == 5
        if fmt != "WEBP" and not any("DPI" in str(x.message) for x in w):  # kept: then kept exactly
            assert back.dpi == pytest.approx(dpi, rel=1e-3), fmt


def test_pixel_limit_message_for_small_limits(tmp_path):
    Image.fromarray(natural_image(30, 40)).save(tmp_path / "x.png")
    with pytest.raises(LesrcnnError, match=r"40x30 = 1,200 pixels is above the limit of 100 pixels"):
        read_picture(tmp_path / "x.png", max_pixels=100)


# --- atomic writes -------------------------------------------------------------------------------

def _in_child(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=dict(os.environ, PYTHONPATH=str(SRC)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


_HOLD = """
import signal, sys, time
from lesrcnn.io import atomic_output
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # as the CLI does: SIGTERM raises
with atomic_output(sys.argv[1]) as f:
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_writer_leaves_nothing_or_a_temp_we_clean(tmp_path, sig):
    out = tmp_path / "out.png"
    child = _in_child(_HOLD, str(out))
    assert child.stdout.readline().strip() == "writing"
    (temp,) = [n for n in os.listdir(tmp_path)]
    assert re.fullmatch(r"\.out\.png\.lesrcnn-tmp-[0-9a-f]{8}", temp)
    assert clean_stale_temps(tmp_path, older_than_s=0) == 0  # alive and locked: in use
    child.send_signal(sig)
    child.wait(timeout=30)
    left = os.listdir(tmp_path)
    if sig == signal.SIGTERM:
        assert left == []
    else:  # kill -9 cannot clean up: the next run does
        assert left == [temp]
        (tmp_path / "keep.png").write_bytes(b"x")
        (tmp_path / ".other.lesrcnn-tmp").write_bytes(b"x")
        assert clean_stale_temps(tmp_path, older_than_s=3600) == 0  # too recent
        old = time.time() - 7200
        for n in os.listdir(tmp_path):
            os.utime(tmp_path / n, (old, old))
        assert clean_stale_temps(tmp_path, older_than_s=3600) == 1
        assert sorted(os.listdir(tmp_path)) == [".other.lesrcnn-tmp", "keep.png"]


def test_base_exception_removes_the_temp(tmp_path):
    class Terminated(BaseException):
        pass

    with pytest.raises(Terminated):
        with atomic_output(tmp_path / "x.bin") as f:
            f.write(b"half")
            raise Terminated
    assert os.listdir(tmp_path) == []


def test_exclusive_outputs_never_replace_each_other(tmp_path):
    f = tmp_path / "x.png"
    atomic_write_bytes(f, b"first", overwrite=False)
    with pytest.raises(FileExistsError) as e:
        with atomic_output(f, overwrite=False) as again:
            again.write(b"second")
    assert e.value.filename == str(f) and "--overwrite" in str(e.value)
    assert f.read_bytes() == b"first" and os.listdir(tmp_path) == ["x.png"]
    atomic_write_bytes(f, b"third")  # overwrite allowed: replaced
    assert f.read_bytes() == b"third"


def test_first_finisher_wins_and_the_other_is_refused(tmp_path):
    f = tmp_path / "y.png"
    with pytest.raises(FileExistsError):
        with atomic_output(f, overwrite=False) as a:
            a.write(b"A")
            with atomic_output(f, overwrite=False) as b:
                b.write(b"B")
    assert f.read_bytes() == b"B" and os.listdir(tmp_path) == ["y.png"]


def test_write_errors_name_the_output_not_the_temp(tmp_path):
    target = tmp_path / "missing" / "out.png"
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"x")
    assert e.value.filename == str(target) and "lesrcnn-tmp" not in str(e.value)
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(PermissionError) as e:
            write_picture(Picture(color=natural_image(4, 4)), ro / "o.png", "PNG")
        assert e.value.filename == str(ro / "o.png")


def test_outputs_get_a_normal_files_permissions(tmp_path):
    code = ("import os, sys; os.umask(0o027); from lesrcnn.io import atomic_write_text; "
            "atomic_write_text(sys.argv[1], 'x')")
    child = _in_child(code, str(tmp_path / "a.txt"))
    assert child.wait(timeout=60) == 0, child.stderr.read()
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
