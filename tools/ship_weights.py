"""Package a training run's weights as the embedded default, with measured PSNR in the metadata.

    python tools/ship_weights.py RUN_DIR[/best.safetensors] --bench ../shared/data/benchmarks \
        [-o src/lesrcnn/pretrained/lesrcnn_s.safetensors]

Evaluates the weights (paper protocol, truncation) and the bicubic baseline on every benchmark
folder under --bench at every scale the weights serve, prints the table, and writes the file
with that table added to its provenance.

INT8 step (``--int8``, or alone: ``python tools/ship_weights.py --int8-only [WEIGHTS]``): the
INT8 models that ``--precision int8`` runs, one per scale, calibrated on the built-in synthetic
set (no data set involved) and written to src/lesrcnn/pretrained/int8/, where
``lesrcnn.backends.int8_onnx`` finds them by the weights' content hash: users of the embedded
weights never calibrate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lesrcnn import weights as W
from lesrcnn.data import find_dataset
from lesrcnn.evaluate import evaluate
from lesrcnn.upscale import prepare


PRETRAINED = Path(__file__).resolve().parents[1] / "src/lesrcnn/pretrained"


def ship_int8(weights: str | None) -> None:
    """Write the INT8 ONNX model of every scale of ``weights`` (default: the embedded ones)."""
    from lesrcnn import backends as BK
    from lesrcnn.io import atomic_write_bytes

    ck = W.load(weights)
    key = BK.digest(ck.model)
    out = PRETRAINED / "int8"
    out.mkdir(parents=True, exist_ok=True)
    for s in ck.scales:
        data = BK.int8_onnx(ck.model, s, key=key, cache=False)
        path = out / BK.int8_name(key, s)
        atomic_write_bytes(path, data)
        print(f"wrote {path} ({len(data) / 1e6:.2f} MB)", flush=True)
    for old in out.glob("*.onnx"):
        if old.name not in {BK.int8_name(key, s) for s in ck.scales}:
            old.unlink()  # models of weights or recipes that no longer ship


def main() -> None:
    if "--int8-only" in sys.argv:  # the INT8 step alone, for weights already shipped
        rest = [a for a in sys.argv[1:] if a != "--int8-only"]
        ship_int8(rest[0] if rest else None)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", help="a checkpoint, or a run directory (its best, EMA or last weights)")
    ap.add_argument("--int8", action="store_true", help="also write the INT8 models (see above)")
    ap.add_argument("--bench", required=True)
    ap.add_argument("--datasets", nargs="+", default=["Set5", "Set14", "B100"])
    ap.add_argument("-o", "--output", default=str(Path(__file__).resolve().parents[1] /
                                                  "src/lesrcnn/pretrained/lesrcnn_s.safetensors"))
    a = ap.parse_args()
    if Path(a.weights).is_dir():  # a run directory: best (validated, EMA or raw), else the EMA, else last
        a.weights = str(next((p for p in (Path(a.weights) / f"{n}.safetensors" for n in ("best", "ema", "last"))
                              if p.exists()), Path(a.weights) / "last.safetensors"))
        print(f"shipping {a.weights}")
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
    if a.int8:
        ship_int8(a.output)


if __name__ == "__main__":
    main()
