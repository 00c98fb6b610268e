"""Ray batch throughput against the single-process CLI, on the same images, in one run.

1. 40 images (192x192 crops of ../shared/data/train/BSD200 where present, else synthetic) in a
   temporary folder.
2. ``lesrcnn upscale IN -o OUT`` (one process, torch's default threads), timed wall clock from
   process start to exit: what a user waits for.
3. A local Ray with all cores, started once (timed apart: on a cluster it is already running),
   then ``lesrcnn upscale IN -o OUT --ray ADDRESS`` (one actor per core, one thread each), timed
   the same way; and the two folders compared pixel for pixel.
Rounds alternate CLI and Ray so that machine noise hits both; the best round of each counts.

    python benchmarks/bench_ray.py [--images 40] [--size 192] [--scale 2] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lesrcnn.io import Picture, read_picture, write_picture  # noqa: E402


def make_inputs(folder: Path, n: int, size: int) -> str:
    from PIL import Image

    src = REPO.parent / "shared" / "data" / "train" / "BSD200"
    files = sorted(p for p in src.glob("*") if p.suffix.lower() in (".png", ".jpg", ".bmp")) if src.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(n):
        if files:
            im = np.asarray(Image.open(files[i % len(files)]).convert("RGB"))
            y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
            a = np.ascontiguousarray(im[y:y + size, x:x + size])
        else:
            yy, xx = np.mgrid[0:size, 0:size]
            g = (127 + 100 * np.sin(xx * 0.05 * (1 + i % 5)) * np.cos(yy * 0.07)).astype(np.uint8)
            a = np.repeat(g[..., None], 3, axis=2)
        write_picture(Picture(color=a), folder / f"img{i:03d}.png", "PNG")
    return "BSD200 crops" if files else "synthetic"


def timed(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("OMP_NUM_THREADS", None)  # the CLI uses torch's default threads (all cores), as users run it
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        src = work / "in"
        src.mkdir()
        kind = make_inputs(src, a.images, a.size)
        cores = os.cpu_count() or 1
        os.environ["PYTHONPATH"] = str(REPO / "src")
        os.environ.pop("OMP_NUM_THREADS", None)  # Ray gives each 1-CPU actor one thread
        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        t_start = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address
        base = [sys.executable, "-m", "lesrcnn", "upscale", str(src), "-s", str(a.scale), "-q"]
        cli, rr = [], []
        for r in range(a.rounds):
            for d in ("cli", "ray"):
                shutil.rmtree(work / d, ignore_errors=True)
            cli.append(timed(base + ["-o", str(work / "cli")]))
            rr.append(timed(base + ["-o", str(work / "ray"), "--ray", address]))
            print(f"round {r + 1}: CLI {cli[-1]:.1f} s, Ray {rr[-1]:.1f} s", flush=True)
        same = all(np.array_equal(read_picture(p).color, read_picture(work / "ray" / p.name).color)
                   for p in sorted((work / "cli").iterdir()))
        ray.shutdown()
        n, c, g = a.images, min(cli), min(rr)
        print(f"{n} {kind} images {a.size}x{a.size} x{a.scale}, {cores} cores")
        print(f"single-process CLI : {c:6.1f} s  {n / c:5.2f} img/s")
        print(f"Ray ({cores} actors)     : {g:6.1f} s  {n / g:5.2f} img/s  "
              f"(+ {t_start:.1f} s to start the local Ray once)")
        print(f"Ray / CLI throughput: {c / g:.2f} (with Ray start-up: {c / (g + t_start):.2f}); "
              f"outputs identical: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
