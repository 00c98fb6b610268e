"""The paper's evaluation: SR of every LR image, PSNR/SSIM on Y, beside the paper's numbers."""
from __future__ import annotations

import csv
import io
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .data import Dataset, load_pair
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

    @property
    def delta_psnr(self) -> float | None:
        return None if self.paper_psnr is None else self.psnr - self.paper_psnr

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.paper_psnr is not None:
            d["delta_psnr"] = round(self.psnr - self.paper_psnr, 4)
            d["delta_ssim"] = round(self.ssim - (self.paper_ssim or 0), 5)
        return {k: v for k, v in d.items() if v is not None}


def paper_table() -> dict[tuple[str, str, int], tuple[float, float]]:
    """(dataset, method, scale) -> (psnr, ssim) from the paper's Tables 4-7."""
    text = (resources.files("lesrcnn") / "paper_results.csv").read_text()
    rows = [r for r in text.splitlines() if r and not r.startswith("#")]
    out = {}
    for r in csv.DictReader(io.StringIO("\n".join(rows))):
        for s in (2, 3, 4):
            p, q = r.get(f"x{s}_psnr"), r.get(f"x{s}_ssim")
            if p and q:
                out[(r["dataset"].lower(), r["method"], s)] = (float(p), float(q))
    return out


def _canonical(name: str) -> str:
    n = name.lower()
    return {"bsd100": "b100", "bsds100": "b100", "urban": "urban100"}.get(n, n)


def paper_numbers(dataset: str, method: str, scale: int) -> tuple[float, float] | tuple[None, None]:
    return paper_table().get((_canonical(dataset), method, scale), (None, None))


def super_resolve(model: LESRCNN, lr: np.ndarray, scale: int, tile: int = EVAL_TILE) -> torch.Tensor:
    """uint8 HxWx3 LR -> float CHW SR in [0, 1]-ish (unclamped), on CPU."""
    p = next(model.parameters())
    x = torch.from_numpy(lr).to(p.device).permute(2, 0, 1)[None].to(p.dtype).div_(255.0)
    y = forward_tiled(model, x, scale, tile=tile)
    return y[0].float().cpu()


def evaluate(
    model: LESRCNN | None,
    dataset: Dataset,
    scale: int,
    quantize: Quantize = "truncate",
    progress: Iterable | None = None,
    method: str = "LESRCNN",
) -> Result:
    """Mean PSNR/SSIM over a dataset. ``model=None`` evaluates the bicubic baseline.

    Decoding and metric computation run in a worker thread while the network computes.
    """
    psnrs: list[float] = []
    ssims: list[float] = []
    lock = threading.Lock()

    def score(sr: np.ndarray, hr: np.ndarray) -> None:
        p, s = psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)
        with lock:
            psnrs.append(p)
            ssims.append(s)

    with ThreadPoolExecutor(max_workers=1) as pool:
        loads = [pool.submit(load_pair, pair, scale) for pair in dataset.pairs[:2]]
        futures = []
        for i, pair in enumerate(dataset.pairs):
            hr, lr = loads[i].result()
            if i + 2 < len(dataset.pairs):
                loads.append(pool.submit(load_pair, dataset.pairs[i + 2], scale))
            if model is None:
                sr = imresize(lr, float(scale))
            else:
                sr = to_uint8(super_resolve(model, lr, scale).permute(1, 2, 0), quantize)
            futures.append(pool.submit(score, sr, hr))
            if progress is not None:
                progress.update(1)  # type: ignore[attr-defined]
        for f in futures:
            f.result()
    method = "Bicubic" if model is None else method
    pp, ps = paper_numbers(dataset.name, method, scale)
    return Result(dataset.name, scale, len(psnrs), float(np.mean(psnrs)), float(np.mean(ssims)),
                  quantize if model is not None else "round", method, pp, ps)


def format_results(results: list[Result], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in results], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        cols = ["dataset", "scale", "method", "images", "psnr", "ssim", "quantize", "paper_psnr", "paper_ssim",
                "delta_psnr"]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in results:
            d = r.as_dict()
            w.writerow([("" if d.get(c) is None else (f"{d[c]:.4f}" if isinstance(d[c], float) else d[c]))
                        for c in cols])
        return buf.getvalue().rstrip("\n")
    lines = [f"{'dataset':<10} {'scale':>5} {'method':<10} {'images':>6} {'PSNR':>8} {'SSIM':>7} "
             f"{'paper':>15} {'dPSNR':>7}  quantize"]
    for r in results:
        paper = f"{r.paper_psnr:.2f}/{r.paper_ssim:.4f}" if r.paper_psnr is not None else "-"
        delta = f"{r.delta_psnr:+.3f}" if r.delta_psnr is not None and math.isfinite(r.delta_psnr) else "-"
        lines.append(f"{r.dataset:<10} {'x' + str(r.scale):>5} {r.method:<10} {r.images:>6} {r.psnr:>8.3f} "
                     f"{r.ssim:>7.4f} {paper:>15} {delta:>7}  {r.quantize}")
    return "\n".join(lines)
