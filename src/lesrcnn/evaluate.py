"""The paper's evaluation: SR of every LR image, PSNR/SSIM on Y, beside the paper's numbers."""
from __future__ import annotations

import argparse
import csv
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from io import StringIO
from typing import Iterable

import numpy as np
import torch

from .data import Dataset, load_pair
from .errors import LesrcnnError
from .metrics import Quantize, psnr_y, ssim_y, to_uint8
from .model import LESRCNN
from .resize import imresize
from .upscale import forward_tiled

# LR pixels above which an image is processed in tiles (memory bound; result unchanged).
EVAL_TILE = 400


@dataclass
class Result:
    dataset: str
    scale: int
    images: int
    psnr: float
    ssim: float
    quantize: str
    method: str
    paper_psnr: float | None = None
    paper_ssim: float | None = None

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.paper_psnr is not None and self.paper_ssim is not None:
            d |= {"delta_psnr": round(self.psnr - self.paper_psnr, 4),
                  "delta_ssim": round(self.ssim - self.paper_ssim, 5)}
        return d


def paper_numbers(dataset: str, method: str, scale: int) -> tuple[float, float] | tuple[None, None]:
    """(PSNR, SSIM) of ``method`` on ``dataset`` at ``scale`` in the paper's Tables 4-7, if there."""
    name = {"bsd100": "b100", "bsds100": "b100", "urban": "urban100"}.get(dataset.lower(), dataset.lower())
    text = (resources.files("lesrcnn") / "paper_results.csv").read_text()
    for r in csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")):
        p, q = r.get(f"x{scale}_psnr"), r.get(f"x{scale}_ssim")
        if r["dataset"].lower() == name and r["method"] == method and p and q:
            return float(p), float(q)
    return None, None


def super_resolve(model: LESRCNN, lr: np.ndarray, scale: int, tile: int = EVAL_TILE) -> torch.Tensor:
    """uint8 HxWx3 LR -> float CHW SR in [0, 1]-ish (unclamped), on CPU."""
    p = next(model.parameters())
    x = torch.from_numpy(lr if lr.flags.writeable else lr.copy()).to(p.device).permute(2, 0, 1)[None]
    x = x.to(p.dtype).div_(255.0)
    y = forward_tiled(model, x, scale, tile=tile)
    return y[0].float().cpu()


def bicubic(lr: np.ndarray, scale: int, quantize: Quantize = "round") -> np.ndarray:
    """The bicubic baseline: MATLAB ``imresize`` of the uint8 LR ("round": MATLAB's own uint8
    arithmetic, rounded after each pass; "truncate": in float, truncated at the end)."""
    if quantize == "round":
        return imresize(lr, float(scale))
    return np.clip(imresize(lr.astype(np.float64), float(scale)), 0, 255).astype(np.uint8)


#: SSIM's Gaussian window: the scored area (HR minus ``scale`` pixels at each border) needs this side.
SSIM_WINDOW = 11


def evaluate(model: LESRCNN | None, dataset: Dataset, scale: int, quantize: Quantize | None = None,
             progress: Iterable | None = None, method: str = "LESRCNN") -> Result:
    """Mean PSNR/SSIM over a dataset; ``model=None`` evaluates the bicubic baseline. ``quantize``
    None: "truncate" for a network (the released code), "round" for bicubic (MATLAB). A worker
    thread decodes the next images and scores the last while the network computes."""
    quantize = quantize or ("round" if model is None else "truncate")
    pairs, scores = dataset.pairs, []
    with ThreadPoolExecutor(max_workers=1) as pool:
        loads = [pool.submit(load_pair, pair, scale) for pair in pairs[:2]]
        for i, pair in enumerate(pairs):
            hr, lr = loads[i].result()
            need = SSIM_WINDOW + 2 * scale
            if min(hr.shape[:2]) < need:
                raise LesrcnnError(f"{pair.hr}: {hr.shape[1]}x{hr.shape[0]} is too small to score at "
                                   f"x{scale} (PSNR/SSIM need at least {need}x{need} HR pixels)")
            if i + 2 < len(pairs):
                loads.append(pool.submit(load_pair, pairs[i + 2], scale))
            if model is None:
                sr = bicubic(lr, scale, quantize)
            else:
                sr = to_uint8(super_resolve(model, lr, scale).permute(1, 2, 0), quantize)
            scores.append((pool.submit(psnr_y, sr, hr, scale), pool.submit(ssim_y, sr, hr, scale)))
            if progress is not None:
                progress.update(1)  # type: ignore[attr-defined]
        psnr, ssim = (float(np.mean([f[k].result() for f in scores])) for k in (0, 1))
    method = "Bicubic" if model is None else method
    paper = paper_numbers(dataset.name, method, scale)
    return Result(dataset.name, scale, len(scores), psnr, ssim, quantize, method, *paper)


def format_results(results: list[Result], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in results], indent=2)
    if fmt == "csv":
        buf = StringIO()
        cols = "dataset scale method images psnr ssim quantize paper_psnr paper_ssim delta_psnr".split()
        w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in results:
            w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.as_dict().items()})
        return buf.getvalue().rstrip("\n")
    lines = [f"{'dataset':<10} {'scale':>5} {'method':<10} {'images':>6} {'PSNR':>8} {'SSIM':>7} "
             f"{'paper':>15} {'dPSNR':>7}  quantize"]
    for r in results:
        paper = f"{r.paper_psnr:.2f}/{r.paper_ssim:.4f}" if r.paper_psnr is not None else "-"
        delta = f"{r.psnr - r.paper_psnr:+.3f}" if paper != "-" and math.isfinite(r.psnr) else "-"
        lines.append(f"{r.dataset:<10} {'x' + str(r.scale):>5} {r.method:<10} {r.images:>6} {r.psnr:>8.3f} "
                     f"{r.ssim:>7.4f} {paper:>15} {delta:>7}  {r.quantize}")
    return "\n".join(lines)


# --- `lesrcnn eval` ----------------------------------------------------------------------------

def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import add_engine_options

    p = sub.add_parser("eval", help="PSNR/SSIM on benchmark folders with the paper's protocol",
                       description="PSNR/SSIM on the Y channel (border = scale), as the paper and its code "
                                   "compute them, beside the paper's numbers when the set is one of its "
                                   "tables.")
    p.add_argument("--data", action="append", required=True,
                   help="benchmark folder (repeatable): image_SRF_s pairs, HR/ + LR_bicubic/Xs/, or HR "
                        "images")
    p.add_argument("--scale", "-s", type=int, choices=(2, 3, 4), action="append",
                   help="2, 3 or 4 (repeatable); default: 2")
    p.add_argument("--quantize", choices=["truncate", "round"],
                   help="float -> 8-bit; default: truncate for a network (the released code's, the paper's "
                        "numbers), round for --bicubic (MATLAB's)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="how results are printed")
    p.add_argument("--output", "-o", help="also write the results to this file (refused if it exists)")
    p.add_argument("--overwrite", action="store_true", help="allow --output to replace an existing file")
    p.add_argument("--bicubic", action="store_true",
                   help="evaluate the bicubic baseline instead of a network")
    add_engine_options(p, device="cpu")  # --weights -g/--device --precision --backend -j/--threads
    p.set_defaults(func=run)
    return p


def run(a) -> int:
    import sys

    from tqdm import tqdm

    from . import weights as W
    from .backends import create
    from .data import find_dataset
    from .io import atomic_write_text, check_output
    from .upscale import pick_device

    scales = a.scale or [2]
    datasets = {(d, s): find_dataset(d, s) for s in scales for d in a.data}  # validate all folders first
    if a.output:  # results never replace a benchmark image, nor any file without --overwrite
        check_output(a.output, a.overwrite, (p for ds in datasets.values() for pair in ds.pairs
                                             for p in (pair.hr, pair.lr) if p is not None))
    model, method = None, "Bicubic"
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.bicubic:
        ck = W.load(a.weights, *scales)
        device = pick_device(a.device)
        model = create(ck.model, a.backend, a.precision, device, a.threads, tuple(scales))
        print(f"eval: {model.name} backend, {model.precision}", file=sys.stderr)
        method = "LESRCNN-S" if len(ck.scales) > 1 else "LESRCNN"
    results = []
    total = sum(len(ds.pairs) for ds in datasets.values())
    with tqdm(total=total, desc="eval", file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
        for (_, s), ds in datasets.items():
            results.append(evaluate(model, ds, s, a.quantize, bar, method=method))
    text = format_results(results, a.format)
    print(text)
    if a.output:
        atomic_write_text(a.output, text + "\n", overwrite=a.overwrite)  # a file made meanwhile is kept
    return 0
