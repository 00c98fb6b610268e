"""INT8 vs fp32 PSNR/SSIM (Set5, Set14; x2, x3, x4) of ``--precision int8``, paper protocol.

Usage: python benchmarks/int8_psnr.py [--shared DIR] [--weights embedded,official] [--scales 2,3,4]
           [--sets Set5,Set14] [--backend openvino|onnx]

For the embedded weights and the authors' checkpoints (../shared/weights/official), at every
scale: fp32 and INT8 through the same runtime, the INT8 model being exactly what
``lesrcnn upscale/eval --precision int8`` runs (:func:`lesrcnn.backends.int8_onnx`: calibrated
on the built-in synthetic set, cached in the user cache dir, or shipped in the package). Whole
images, truncation to uint8, Y channel, border = scale. Prints a table; nothing is written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lesrcnn import backends as BK  # noqa: E402
from lesrcnn import weights as W  # noqa: E402
from lesrcnn.data import find_dataset, load_pair  # noqa: E402
from lesrcnn.export import INT8_MODULES, INT8_PATCHES, INT8_RECIPE  # noqa: E402
from lesrcnn.metrics import psnr_y, ssim_y, to_uint8  # noqa: E402


def shared_dir(arg: str | None) -> Path:
    for c in [arg, os.environ.get("LESRCNN_SHARED"), REPO.parent / "shared"]:
        if c and (Path(c) / "data" / "benchmarks").is_dir():
            return Path(c)
    sys.exit("shared data not found: pass --shared or set LESRCNN_SHARED")


def score(engine, ds, scale: int) -> tuple[float, float]:
    ps, ss = [], []
    for pair in ds.pairs:
        hr, lr = load_pair(pair, scale)
        x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255))
        sr = to_uint8(engine(x, scale)[0].permute(1, 2, 0).numpy(), "truncate")
        ps.append(psnr_y(sr, hr, scale))
        ss.append(ssim_y(sr, hr, scale))
    return float(np.mean(ps)), float(np.mean(ss))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared")
    ap.add_argument("--weights", default="embedded,official")
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--sets", default="Set5,Set14")
    ap.add_argument("--backend", default="openvino", choices=["openvino", "onnx"])
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sh = shared_dir(a.shared)
    print(f"# INT8 = what `--precision int8` runs, recipe {INT8_RECIPE}: percentile ranges on {INT8_PATCHES} built-in "
          f"synthetic dead-leaves LR patches, cross-layer equalisation, static QDQ (u8 activations, s8 per-channel "
          f"weights) of the IEEB ({'+'.join(INT8_MODULES)} convolutions and the Adds/ReLUs between them; the rest float); fp32 and INT8 both in "
          f"{a.backend}; Y channel, border = scale, truncation")
    print(f"{'weights':<9} {'dataset':<7} {'scale':>5} {'fp32 PSNR':>10} {'INT8 PSNR':>10} {'dPSNR':>7} "
          f"{'fp32 SSIM':>10} {'INT8 SSIM':>10}", flush=True)
    worst = 0.0
    for which in a.weights.split(","):
        for s in [int(v) for v in a.scales.split(",")]:
            ck = W.load(None if which == "embedded" else sh / "weights" / "official" / f"lesrcnn_x{s}.pth", s)
            fp32 = BK.create(ck.model, a.backend, "fp32", scales=(s,))
            t = time.time()
            int8 = BK.create(ck.model, a.backend, "int8", scales=(s,), progress=False)
            tq = time.time() - t
            for name in a.sets.split(","):
                ds = find_dataset(sh / "data" / "benchmarks" / name, s)
                p32, s32 = score(fp32, ds, s)
                p8, s8 = score(int8, ds, s)
                worst = min(worst, p8 - p32)
                print(f"{which:<9} {name:<7} {'x' + str(s):>5} {p32:>10.3f} {p8:>10.3f} {p8 - p32:>+7.3f} "
                      f"{s32:>10.4f} {s8:>10.4f}", flush=True)
            print(f"#   {which} x{s}: INT8 model ready in {tq:.0f} s (calibration unless cached/shipped)", flush=True)
    print(f"# worst INT8 - fp32: {worst:+.3f} dB (bound: -0.10 dB)")


if __name__ == "__main__":
    main()
