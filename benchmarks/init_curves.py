"""Convergence from the interpolation init vs the random init: same recipe, seed, data and steps.

    python benchmarks/init_curves.py --data ../shared/data/train/T91 --val ../shared/data/benchmarks/Set5 \
        [--scale 2] [--steps 200] [--every 25] [--out /tmp/init_curves]

Prints Set5 PSNR (paper protocol) against step and training seconds for both starts.
Comparing at equal steps keeps the comparison fair on a shared, noisy machine.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lesrcnn.model import build, init_interpolation
from lesrcnn.train import Options, run
from lesrcnn.train_loop import load_val_sets, validate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--scale", default="2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--out", default="/tmp/init_curves")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    curves = {}
    for init in ("random", "interp"):
        out = Path(a.out) / init
        if (out / "last.state.pt").exists():
            for f in out.iterdir():
                f.unlink()
        cfg = Options(data=a.data, out=str(out), scale=a.scale, steps=a.steps, batch=16, patch=48, lr=1e-3,
                     schedule="cosine", warmup=min(50, a.steps // 10), loss="l1", init=init, val=[a.val],
                     val_every=a.every, save_every=10**9, log_every=a.every, seed=0, threads=a.threads)
        torch.manual_seed(0)  # the same start the run will build
        m = build(int(a.scale))
        m = init_interpolation(m) if init == "interp" else m
        start = validate(m, load_val_sets(cfg))["mean"]
        run(cfg, log=lambda *x: None)
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        curves[init] = [(0, 0.0, start)] + [(r["step"], r["time"], r["val"]["mean"]) for r in rows if "val" in r]
    print(f"x{a.scale}, L1, Adam 1e-3 cosine, batch 16, LR patch 48; Set5 PSNR (truncate)")
    print("| step | random init | interp init | seconds (random / interp) |")
    print("|---|---|---|---|")
    for (s, t1, p1), (_, t2, p2) in zip(curves["random"], curves["interp"]):
        print(f"| {s} | {p1:.2f} dB | {p2:.2f} dB | {t1:.0f} / {t2:.0f} |")


if __name__ == "__main__":
    main()
