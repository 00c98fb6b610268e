"""16-bit PNG write (and read) time: the hand-written encoder this project had before (loaded from
git, commit d38668a) against today's lesrcnn.io (OpenCV/libpng), on the same image, in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_io.py            # 16000x16000 16-bit RGB
    OMP_NUM_THREADS=1 python benchmarks/bench_io.py --size 2000
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
BEFORE = "d38668a"  # the last commit with write_png16 and the Pillow rawmode decoder


def _old_io():
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:src/lesrcnn/io.py"], check=True,
                         capture_output=True, text=True).stdout
    import lesrcnn

    spec = importlib.util.spec_from_loader("lesrcnn._io_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "lesrcnn"
    sys.modules[spec.name] = mod  # dataclasses look their module up
    exec(compile(src, f"{BEFORE}:src/lesrcnn/io.py", "exec"), mod.__dict__)  # noqa: S102 - our own history
    assert lesrcnn
    return mod


def _image(size: int) -> np.ndarray:
    """A photo-like 16-bit RGB image: smooth structure, edges, and noise in the low bits."""
    import cv2

    from conftest import natural_image  # noqa: E402 - tests/ holds the synthetic image maker

    small = natural_image(max(64, size // 16), max(64, size // 16)).astype(np.uint16) * 257
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    for y in range(0, size, 1024):
        img[y:y + 1024] += rng.integers(0, 64, img[y:y + 1024].shape, dtype=np.uint16)
    return img


def _timed(fn) -> tuple[tuple[float, float], object]:
    """(wall seconds, CPU seconds of this process, all threads), result: CPU time is what a busy
    machine does not inflate."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - t, time.process_time() - c), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16000, help="side of the square image (default: %(default)s)")
    ap.add_argument("--dir", default=None, help="folder for the files (default: a temporary folder)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from lesrcnn import io as new

    old = _old_io()
    img = _image(a.size)
    pic = new.Picture(color=img, dpi=(300.0, 300.0))
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        f_old, f_new = Path(d) / "before.png", Path(d) / "after.png"
        w_old, _ = _timed(lambda: old.write_picture(old.Picture(color=img, dpi=(300.0, 300.0)), f_old, "PNG"))
        w_new, _ = _timed(lambda: new.write_picture(pic, f_new, "PNG"))
        r_old, p_old = _timed(lambda: old.read_picture(f_new, max_pixels=None))  # both read today's file
        r_new, p_new = _timed(lambda: new.read_picture(f_new, max_pixels=None))
        assert np.array_equal(p_old.color, img) and np.array_equal(p_new.color, img)
        mb_old, mb_new = f_old.stat().st_size / 1e6, f_new.stat().st_size / 1e6
    print(f"{a.size}x{a.size} 16-bit RGB PNG ({img.nbytes / 1e9:.2f} GB of pixels), one run, same image "
          f"(wall s / CPU s):")
    rows = [(f"write before (hand-written, {BEFORE})", w_old, mb_old, None),
            ("write after  (OpenCV/libpng)", w_new, mb_new, w_old),
            ("read  before (Pillow, twice)", r_old, None, None), ("read  after  (OpenCV/libpng)", r_new, None, r_old)]
    for label, (wall, cpu), mb, ref in rows:
        size = f"{mb:8.1f} MB" if mb else " " * 11
        gain = f"  {ref[0] / wall:4.1f}x faster (CPU {ref[1] / cpu:4.1f}x)" if ref else ""
        print(f"  {label:38s} {wall:7.1f} s / {cpu:7.1f} s {size}{gain}")


if __name__ == "__main__":
    main()
