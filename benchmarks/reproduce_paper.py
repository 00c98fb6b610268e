"""The paper's Tables 4-6 from the authors' checkpoints: nine cells, truncation, with timing.

    python benchmarks/reproduce_paper.py [--shared ../shared] [--quantize truncate]

Runs `lesrcnn eval` once per scale over Set5, Set14 and B100 and prints one table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


# The paper's numbers to three decimals, as the spec (docs/LESRCNN.md) states them for this data.
SPEC = {("Set5", 2): (37.651, 0.9586), ("Set5", 3): (33.933, 0.9231), ("Set5", 4): (31.884, 0.8903),
        ("Set14", 2): (33.315, 0.9148), ("Set14", 3): (30.123, 0.8380), ("Set14", 4): (28.443, 0.7771),
        ("B100", 2): (31.951, 0.8964), ("B100", 3): (28.912, 0.8005), ("B100", 4): (27.454, 0.7313)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    ap.add_argument("--quantize", default="truncate", choices=["truncate", "round"])
    ap.add_argument("--datasets", nargs="+", default=["Set5", "Set14", "B100"])
    a = ap.parse_args()
    shared = Path(a.shared)
    rows = []
    t0 = time.perf_counter()
    for s in (2, 3, 4):
        cmd = [sys.executable, "-m", "lesrcnn", "eval", "--weights", str(shared / f"weights/official/lesrcnn_x{s}.pth"),
               "-s", str(s), "--quantize", a.quantize, "--format", "json"]
        for d in a.datasets:
            cmd += ["--data", str(shared / "data/benchmarks" / d)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        rows += json.loads(r.stdout)
    elapsed = time.perf_counter() - t0
    print("| dataset | scale | PSNR | SSIM | paper (printed) | spec (3 decimals) | dPSNR vs spec | dSSIM vs spec |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (a.datasets.index(r["dataset"]), r["scale"])):
        sp, ss = SPEC.get((r["dataset"], r["scale"]), (float("nan"), float("nan")))
        dp, ds = r["psnr"] - sp, r["ssim"] - ss
        print(f"| {r['dataset']} | x{r['scale']} | {r['psnr']:.3f} | {r['ssim']:.4f} | "
              f"{r['paper_psnr']:.2f}/{r['paper_ssim']:.4f} | {sp:.3f}/{ss:.4f} | {dp:+.4f} | {ds:+.5f} |")
    print(f"\n{len(rows)} cells, quantize={a.quantize}, {elapsed:.0f} s wall on this machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
