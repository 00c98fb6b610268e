"""The GPU paths of the upscaler, checked on a CUDA machine (prints figures and PASS/FAIL lines).

1. CUDA fp32 / fp16 / bf16 against CPU fp32 on the same image (max abs difference, 8-bit levels);
   tiled == untiled on the GPU; self-ensemble on the GPU.
2. The fp16 overflow fallback: weights that overflow fp16 must give the fp32 result, with a warning.
3. Speed: HR MP/s of a 1024x1024 -> 2048x2048 x2 job per precision (synchronised).
4. `lesrcnn upscale` of an 8000x8000 PNG x2 (-> 16000x16000) on the GPU in a subprocess: wall
   time and peak RSS (``--big 0`` skips it).

    python benchmarks/gpu_check_upscale.py [--big 8000]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lesrcnn import Upscaler
from lesrcnn import weights as W
from lesrcnn.io import ImageWarning
from lesrcnn.model import build, init_interpolation


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(0.05 * x + c) * np.cos(0.07 * y - c) for c in range(3)], axis=2)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def check(ok: bool, what: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    return ok


def big_job(side: int, wi: Path, d: Path) -> int:
    """`lesrcnn upscale` of a side x side PNG x2 on cuda fp16 in a subprocess: wall time, peak RSS."""
    from PIL import Image

    src, dst = d / "big.png", d / "big_x2.png"
    t0 = time.perf_counter()
    Image.fromarray(image(side, side, seed=3)).save(src, compress_level=1)
    print(f"wrote {side}x{side} input in {time.perf_counter() - t0:.1f} s", flush=True)
    good = True
    for fmt in ("png", "tiff"):
        out = dst.with_suffix("." + fmt)
        cmd = [sys.executable, "-m", "lesrcnn", "upscale", str(src), "-o", str(out), "-s", "2", "--weights",
               str(wi), "--device", "cuda", "--precision", "fp16"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "", flush=True)
        ok = r.returncode == 0 and out.exists()
        if ok:
            Image.MAX_IMAGE_PIXELS = None  # our own output; only the header is read
            with Image.open(out) as im:
                ok = im.size == (2 * side, 2 * side)
        good &= check(ok, f"`lesrcnn upscale` {side}x{side} -> {2 * side}x{2 * side} {fmt} on cuda fp16: "
                          f"{dt:.1f} s wall, peak RSS so far {rss:.0f} MiB (rc {r.returncode})")
        out.unlink(missing_ok=True)
    return 0 if good else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=8000, help="side of the big CLI job (0: skip)")
    ap.add_argument("--only-big", action="store_true", help="run only the big CLI job")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    good = True
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.manual_seed(0)
        m = build((2, 3, 4))
        with torch.no_grad():  # random, not interpolating: every channel matters
            for p in m.parameters():
                p.mul_(0.5)
        wr = W.save(m, d / "rand.safetensors")
        wi = W.save(init_interpolation(build("multi")), d / "interp.safetensors")
        img = image(200, 240)
        if a.only_big:
            return big_job(a.big, wi, d)
        ref = Upscaler(2, wr, device="cpu", tile=0).upscale(img.astype(np.float32) / 255)
        for prec, tol in (("fp32", 1e-3), ("fp16", 1e-2), ("bf16", 4e-2)):
            up = Upscaler(2, wr, device="cuda", precision=prec, tile=0)
            out = up.upscale(img.astype(np.float32) / 255)
            diff = float(np.abs(out - ref).max())
            good &= check(up.device.type == "cuda" and up.precision == prec and diff < tol,
                          f"cuda {prec}: max |diff| vs CPU fp32 {diff * 255:.3f} levels (tol {tol * 255:.1f})")
        whole = Upscaler(3, wr, device="cuda", tile=0).upscale(img.astype(np.float32) / 255)
        tiled_up = Upscaler(3, wr, device="cuda", tile=64)
        tiled = tiled_up.upscale(img.astype(np.float32) / 255)
        diff = float(np.abs(whole - tiled).max())
        good &= check(diff <= 1 / 255, f"cuda tiled (64, batch {tiled_up.batch}) == untiled x3: {diff * 255:.5f} levels")
        ens = Upscaler(2, wr, device="cuda", tile=64, self_ensemble=True).upscale(img[:96, :96])
        good &= check(ens.shape == (192, 192, 3), "cuda self-ensemble runs")

        # fp16 overflow -> fp32 recompute with a warning
        big = init_interpolation(build(2))
        with torch.no_grad():
            big.tail.weight.mul_(1e6)  # outputs ~1e5..1e6: inf in fp16, finite in fp32
        wb = W.save(big, d / "big.safetensors")
        f32 = Upscaler(2, wb, device="cuda", precision="fp32", tile=0).upscale(img[:64, :64].astype(np.float32) / 255)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            f16 = Upscaler(2, wb, device="cuda", precision="fp16", tile=0).upscale(img[:64, :64].astype(np.float32) / 255)
        warned = any(issubclass(r.category, ImageWarning) and "NaN/Inf" in str(r.message) for r in rec)
        good &= check(warned and np.array_equal(f16, f32), f"fp16 overflow falls back to fp32 (warned: {warned})")

        # speed per precision
        img1k = image(1024, 1024)
        for prec in ("fp32", "fp16", "bf16"):
            up = Upscaler(2, wi, device="cuda", precision=prec)
            up.upscale(img1k)
            torch.cuda.synchronize()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                up.upscale(img1k)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            t = sorted(ts)[1]
            print(f"speed cuda {prec}: 1024x1024 -> 2048x2048 x2 in {t * 1000:.0f} ms = {4.194 / t:.1f} HR MP/s "
                  f"(tile {up.tile}, batch {up.batch}; uint8 in/out, host copies included)", flush=True)

        if a.big:
            good &= big_job(a.big, wi, d) == 0
    print("ALL PASS" if good else "SOME FAILED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
