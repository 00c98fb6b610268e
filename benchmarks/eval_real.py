"""Real-photo evaluation: Set5/Set14 with the LR saved as JPEG (quality 75), the inputs users have.

Usage: python benchmarks/eval_real.py [--bench ../shared/data/benchmarks] [--sets Set5 Set14]
           [--scales 2 3 4] [--quality 75] [--default lesrcnn-s] [--real real|FILE] [--clean]
           [--crop docs/real_photo_crop.png] [--json FILE]

LR = the benchmarks' MATLAB-bicubic LR PNGs (bit-exact with lesrcnn.resize.imresize), encoded
and decoded in memory as JPEG q75 with 4:2:0 chroma (lesrcnn.degrade.jpeg_variant). Scores:
PSNR/SSIM on Y, border = scale, network outputs truncated to uint8 (the paper's protocol), for
bicubic upscaling of that LR, the bicubic-trained default weights and the real-photo weights.
``--clean`` also scores both networks on the clean LR (to see what the real weights give up).
``--crop`` writes LR (nearest) | bicubic | default | real | HR of a textured region (Set14
baboon at x4 by default) as one PNG.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lesrcnn import weights as W  # noqa: E402
from lesrcnn.data import find_dataset, load_pair  # noqa: E402
from lesrcnn.degrade import jpeg_variant  # noqa: E402
from lesrcnn.evaluate import super_resolve  # noqa: E402
from lesrcnn.metrics import psnr_y, ssim_y, to_uint8  # noqa: E402
from lesrcnn.resize import imresize  # noqa: E402
from lesrcnn.upscale import prepare  # noqa: E402


def upscalers(default: str, real: str) -> dict:
    """name -> function(LR uint8, scale) -> SR uint8 (networks truncated, as in the paper)."""
    def net(spec: str):
        model = prepare(W.load(spec).model)

        def run(lr: np.ndarray, s: int) -> np.ndarray:
            with torch.inference_mode():
                return to_uint8(super_resolve(model, lr, s).permute(1, 2, 0), "truncate")
        return run
    return {"bicubic": lambda lr, s: imresize(lr, float(s)), "default": net(default), "real": net(real)}


def score(fns: dict, pairs: list, scale: int, quality: int | None) -> dict[str, tuple[float, float]]:
    """Mean (PSNR, SSIM) per method over the pairs; quality None = the clean LR."""
    acc: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for hr, lr in pairs:
        x = lr if quality is None else jpeg_variant(lr, quality)
        for name, fn in fns.items():
            sr = fn(x, scale)
            acc[name].append((psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
    return {k: (float(np.mean([p for p, _ in v])), float(np.mean([q for _, q in v]))) for k, v in acc.items()}


def crop_figure(fns: dict, bench: Path, quality: int, image: str, scale: int, box: tuple[int, int, int]) -> bytes:
    """One PNG row: LR nearest | bicubic | default | real | HR over an HR box (y, x, size)."""
    from PIL import Image, ImageDraw

    ds = find_dataset(bench / "Set14", scale)
    pair = next(p for p in ds.pairs if p.name.startswith(image))
    hr, lr = load_pair(pair, scale)
    x = jpeg_variant(lr, quality)
    y0, x0, n = box
    sl = np.s_[y0:y0 + n, x0:x0 + n]
    near = np.repeat(np.repeat(x, scale, axis=0), scale, axis=1)
    panels = [("LR JPEG q%d" % quality, near), ("bicubic", fns["bicubic"](x, scale)),
              ("default weights", fns["default"](x, scale)), ("real weights", fns["real"](x, scale)), ("HR", hr)]
    gap, label = 4, 14
    canvas = Image.new("RGB", (len(panels) * (n + gap) - gap, n + label), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, img) in enumerate(panels):
        canvas.paste(Image.fromarray(np.ascontiguousarray(img[sl])), (i * (n + gap), label))
        draw.text((i * (n + gap) + 2, 1), name, fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def table(rows: list[dict], key: str) -> str:
    out = [f"| set | scale | bicubic | default weights | real weights | real - bicubic | real - default |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, d, q = r[key]["bicubic"], r[key]["default"], r[key]["real"]
        out.append(f"| {r['set']} | x{r['scale']} | {b[0]:.2f}/{b[1]:.4f} | {d[0]:.2f}/{d[1]:.4f} | "
                   f"{q[0]:.2f}/{q[1]:.4f} | {q[0] - b[0]:+.2f} dB | {q[0] - d[0]:+.2f} dB |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--bench", default=str(REPO.parent / "shared/data/benchmarks"), help="benchmark root")
    ap.add_argument("--sets", nargs="+", default=["Set5", "Set14"], help="benchmark folders")
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4], help="scales")
    ap.add_argument("--quality", type=int, default=75, help="JPEG quality of the LR")
    ap.add_argument("--default", default="lesrcnn-s", help="bicubic-trained weights (registry name or file)")
    ap.add_argument("--real", default="real", help="real-photo weights (registry name or file)")
    ap.add_argument("--clean", action="store_true", help="also score the networks on the clean LR")
    ap.add_argument("--crop", default="", help="write the side-by-side crop PNG here")
    ap.add_argument("--crop-box", nargs=3, type=int, default=[0, 100, 160], metavar=("Y", "X", "SIZE"),
                    help="HR box of the crop (Set14 img_001 = baboon, x4)")
    ap.add_argument("--json", default="", help="also write the figures as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fns = upscalers(a.default, a.real)
    bench, rows = Path(a.bench), []
    for name in a.sets:
        for s in a.scales:
            pairs = [load_pair(p, s) for p in find_dataset(bench / name, s).pairs]
            row = {"set": name, "scale": s, "jpeg": score(fns, pairs, s, a.quality)}
            if a.clean:
                row["clean"] = score(fns, pairs, s, None)
            rows.append(row)
            print(f"{name} x{s}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in row["jpeg"].items()), flush=True)
    print(f"\nJPEG q{a.quality} LR (PSNR/SSIM on Y, border = scale, networks truncated):\n" + table(rows, "jpeg"))
    if a.clean:
        print("\nClean MATLAB-bicubic LR (same protocol):\n" + table(rows, "clean"))
    goal = [r for r in rows if r["scale"] in (2, 4)]
    met = all(r["jpeg"]["real"][0] - max(r["jpeg"]["bicubic"][0], r["jpeg"]["default"][0]) >= 0.5 for r in goal)
    print(f"\ntarget (>= +0.5 dB over both at x2/x4 on JPEG): {'MET' if met else 'NOT MET'}")
    if a.json:
        from lesrcnn.io import atomic_write_text
        atomic_write_text(a.json, json.dumps({"quality": a.quality, "rows": rows}, indent=1))
    if a.crop:
        from lesrcnn.io import atomic_write_bytes
        png = crop_figure(fns, bench, a.quality, "img_001", 4, tuple(a.crop_box))  # type: ignore[arg-type]
        atomic_write_bytes(a.crop, png)
        print(f"wrote {a.crop} ({len(png) / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
