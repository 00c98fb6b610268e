"""Package a training run's weights as the embedded default, with measured PSNR in the metadata.

    python tools/ship_weights.py RUN_DIR/last.safetensors --bench ../shared/data/benchmarks \
        [-o src/lesrcnn/pretrained/lesrcnn_s.safetensors]

Evaluates the weights (paper protocol, truncation) and the bicubic baseline on every benchmark
folder under --bench at every scale the weights serve, prints the table, and writes the file
with that table added to its provenance.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lesrcnn import weights as W
from lesrcnn.data import find_dataset
from lesrcnn.evaluate import evaluate
from lesrcnn.upscale import prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--bench", required=True)
    ap.add_argument("--datasets", nargs="+", default=["Set5", "Set14", "B100"])
    ap.add_argument("-o", "--output", default=str(Path(__file__).resolve().parents[1] /
                                                  "src/lesrcnn/pretrained/lesrcnn_s.safetensors"))
    a = ap.parse_args()
    ck = W.load(a.weights)
    model = prepare(ck.model)
    table = {}
    print("| dataset | scale | ours PSNR/SSIM | bicubic PSNR/SSIM | gain | paper LESRCNN-S |")
    print("|---|---|---|---|---|---|")
    for d in a.datasets:
        for s in ck.scales:
            ds = find_dataset(Path(a.bench) / d, s)
            r, b = evaluate(model, ds, s, "truncate", method="LESRCNN-S"), evaluate(None, ds, s)
            table[f"{d}_x{s}"] = {"psnr": round(r.psnr, 4), "ssim": round(r.ssim, 5),
                                  "bicubic_psnr": round(b.psnr, 4), "bicubic_ssim": round(b.ssim, 5)}
            paper = f"{r.paper_psnr:.2f}/{r.paper_ssim:.4f}" if r.paper_psnr else "-"
            print(f"| {d} | x{s} | {r.psnr:.2f}/{r.ssim:.4f} | {b.psnr:.2f}/{b.ssim:.4f} | "
                  f"{r.psnr - b.psnr:+.2f} dB | {paper} |", flush=True)
    prov = dict(ck.metadata.get("provenance") or {})
    prov["measured"] = {"protocol": "Y channel, border=scale, truncation", "results": table}
    model.to("cpu")
    W.save(ck.model.to(memory_format=__import__("torch").contiguous_format), a.output, prov)
    print(f"wrote {a.output} ({Path(a.output).stat().st_size / 1e6:.1f} MB, sha256 {W.sha256(a.output)[:16]}...)")
    print(json.dumps(prov, indent=1)[:2000])


if __name__ == "__main__":
    main()
