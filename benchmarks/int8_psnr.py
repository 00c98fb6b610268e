"""INT8 vs fp32 PSNR/SSIM (Set5, Set14; x2, x3, x4) through ONNX Runtime, with the paper's protocol.

Usage: python benchmarks/int8_psnr.py [--shared DIR] [--scales 2,3,4] [--sets Set5,Set14]
           [--calib DIR] [--patches 48] [--method minmax] [--no-exclude-io]

Needs the official checkpoints (../shared/weights/official, or --weights-dir); calibration
patches come from --calib (default ../shared/data/train/T91). The fp32 column is the exported
ONNX model (same numbers as `lesrcnn eval`); INT8 is `lesrcnn export --int8` of the same model.
Truncation to uint8, as in the paper. Prints a table; nothing is written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lesrcnn import export as E  # noqa: E402
from lesrcnn import weights as W  # noqa: E402
from lesrcnn.data import find_dataset, load_pair  # noqa: E402
from lesrcnn.metrics import psnr_y, ssim_y, to_uint8  # noqa: E402


def shared_dir(arg: str | None) -> Path:
    for c in [arg, os.environ.get("LESRCNN_SHARED"), REPO.parent / "shared"]:
        if c and (Path(c) / "data" / "benchmarks").is_dir():
            return Path(c)
    sys.exit("shared data not found: pass --shared or set LESRCNN_SHARED")


def score(run, ds, scale: int) -> tuple[float, float]:
    ps, ss = [], []
    for pair in ds.pairs:
        hr, lr = load_pair(pair, scale)
        x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
        y = run(x)[0].transpose(1, 2, 0)
        sr = to_uint8(y, "truncate")
        ps.append(psnr_y(sr, hr, scale))
        ss.append(ssim_y(sr, hr, scale))
    return float(np.mean(ps)), float(np.mean(ss))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared")
    ap.add_argument("--weights-dir")
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--sets", default="Set5,Set14")
    ap.add_argument("--calib")
    ap.add_argument("--patches", type=int, default=48)
    ap.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--no-equalise", action="store_true")
    a = ap.parse_args()
    sh = shared_dir(a.shared)
    wdir = Path(a.weights_dir) if a.weights_dir else sh / "weights" / "official"
    calib = a.calib or str(sh / "data" / "train" / "T91")
    import onnxruntime

    print(f"# INT8 = `lesrcnn export --int8 --calib {Path(calib).name}` defaults: static QDQ, u8 activations, s8 "
          f"per-channel weights, {a.method} calibration on {a.patches} LR patches"
          f"{'' if a.no_equalise else ', cross-layer channel equalisation'}, first/last conv kept fp32")
    print(f"# fp32 = the exported ONNX model (same numbers as `lesrcnn eval`); ONNX Runtime {onnxruntime.__version__} "
          "CPU; PSNR/SSIM on Y, border = scale, truncation to uint8 (the paper's protocol)")
    print(f"{'dataset':<8} {'scale':>5} {'fp32 PSNR':>10} {'INT8 PSNR':>10} {'dPSNR':>7} {'fp32 SSIM':>10} "
          f"{'INT8 SSIM':>10}")
    for s in [int(v) for v in a.scales.split(",")]:
        ck = W.load(wdir / f"lesrcnn_x{s}.pth")
        proto = E.build_onnx(ck.model, s)
        t = time.time()
        q = E.int8_model(ck.model, s, E.calibration_patches(calib, s, a.patches), method=a.method,
                         equalise=not a.no_equalise)
        tq = time.time() - t
        run32 = E._wrap(E.session(proto, ["CPUExecutionProvider"]))
        run8 = E._wrap(E.session(q, ["CPUExecutionProvider"]))
        for name in a.sets.split(","):
            ds = find_dataset(sh / "data" / "benchmarks" / name, s)
            p32, s32 = score(run32, ds, s)
            p8, s8 = score(run8, ds, s)
            print(f"{name:<8} {'x' + str(s):>5} {p32:>10.3f} {p8:>10.3f} {p8 - p32:>+7.3f} {s32:>10.4f} {s8:>10.4f}",
                  flush=True)
        print(f"#   x{s}: calibration + quantisation took {tq:.0f} s", flush=True)


if __name__ == "__main__":
    main()
