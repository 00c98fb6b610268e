"""Batch upscaling on a Ray cluster (extra ``ray``): Ray Data ``map_batches`` with one model per
actor, CPU or GPU actors, outputs written atomically, existing outputs skipped (so a failed or
interrupted job, run again, does only what is left).

    from lesrcnn.ray import upscale_dataset
    report = upscale_dataset([("in/a.png", "out/a.png"), (png_bytes, "out/b.png")], scale=2,
                             address="auto", actors=8, gpus_per_actor=1)

or from the command line: ``lesrcnn upscale photos/ -o out/ --ray [ADDRESS]`` (ADDRESS as for
``ray.init``: ``auto`` for the cluster this machine belongs to, ``ray://head:10001`` for a remote
one; without ADDRESS, a local Ray, or the cluster named by ``$RAY_ADDRESS``). Every worker node
needs Python with ``lesrcnn[ray]`` installed and the input paths readable, the output paths
writable (a shared file system), or give the inputs as bytes.

The module is ``lesrcnn.ray``; it imports the real ``ray`` package with absolute imports, so
the two names do not collide.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LesrcnnError


@dataclass
class Report:
    written: int = 0
    skipped: int = 0  # outputs that existed already (before the job or written meanwhile)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (output, one-line reason)
    seconds: float = 0.0


class UpscaleActor:
    """One Ray actor: loads the model once, then reads, upscales and writes each row's image."""

    def __init__(self, scale: int, weights, options: dict, threads: int | None, overwrite: bool,
                 quality: int | None):
        import torch

        from .upscale import Upscaler

        if threads:
            torch.set_num_threads(int(threads))
        self.up = Upscaler(scale, weights, **options)
        self.overwrite, self.quality = overwrite, quality

    def __call__(self, batch: dict) -> dict:
        status, errors = [], []
        for src, data, dst, fmt in zip(batch["src"], batch["data"], batch["dst"], batch["fmt"]):
            s, e = self._one(str(src), bytes(data), str(dst), str(fmt) or None)
            status.append(s)
            errors.append(e)
        return {"dst": list(map(str, batch["dst"])), "status": status, "error": errors}

    def _one(self, src: str, data: bytes, dst: str, fmt: str | None) -> tuple[str, str]:
        if not self.overwrite and os.path.exists(dst):
            return "skipped", ""
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            self.up.upscale_file(data if data else src, dst, format=fmt, quality=self.quality,
                                 overwrite=self.overwrite)
            return "written", ""
        except (LesrcnnError, OSError, MemoryError, RuntimeError) as e:
            if not self.overwrite and os.path.exists(dst):
                return "skipped", ""  # another run wrote it meanwhile
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if data:  # read_picture calls in-memory input <stdin>
                msg = msg.replace("<stdin>", f"<bytes for {Path(dst).name}>")
            return "failed", msg[:300]


def _rows(items, overwrite: bool) -> tuple[list[dict], int]:
    """Dataset rows for the outputs still to write, and how many exist already."""
    rows, skipped = [], 0
    for item in items:
        src, dst, fmt = (*item, None)[:3]
        if not overwrite and os.path.exists(dst):
            skipped += 1
            continue
        raw = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else b""
        rows.append({"src": "" if raw else str(src), "data": raw, "dst": str(dst), "fmt": fmt or ""})
    return rows, skipped


def connect(address: str | None = None, **init_kwargs) -> None:
    """``ray.init`` once (a local instance without ``address`` and ``$RAY_ADDRESS``)."""
    try:
        import ray
    except ImportError:
        raise LesrcnnError("Ray batch upscaling needs `pip install lesrcnn[ray]`") from None
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING, **init_kwargs}
        if address not in (None, "", "local"):
            kw["address"] = address
            _check_reachable(address)
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise LesrcnnError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                               f"{str(e).strip().splitlines()[0][:200]}") from None


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise LesrcnnError(f"cannot reach Ray at {address}: {e.strerror or e}") from None


def upscale_dataset(items, *, scale: int = 2, weights=None, address: str | None = None, actors: int | None = None,
                    cpus_per_actor: float = 1.0, gpus_per_actor: float | None = 0.0, overwrite: bool = False,
                    quality: int | None = None, upscaler_options: dict | None = None,
                    progress: bool = True) -> Report:
    """Upscale ``items`` — (source, output) or (source, output, format) with the source a path or
    the image's bytes — on Ray; returns a :class:`Report`. Outputs that exist are skipped unless
    ``overwrite``. ``actors``: actor pool size (default: as many as the cluster's CPUs, or GPUs,
    allow); ``gpus_per_actor`` None: one GPU per actor if the cluster has GPUs, else CPU actors;
    ``upscaler_options``: :class:`~lesrcnn.upscale.Upscaler` keywords (device, tile, ...);
    ``progress``: Ray Data's progress bars on stderr."""
    from .model import check_scale

    check_scale(scale)
    t0 = time.perf_counter()
    rows, skipped = _rows(items, overwrite)
    report = Report(skipped=skipped)
    if rows:
        for status, dst, err in _run(rows, scale, weights, address, actors, cpus_per_actor, gpus_per_actor,
                                     overwrite, quality, dict(upscaler_options or {}), progress):
            if status == "written":
                report.written += 1
            elif status == "skipped":
                report.skipped += 1
            else:
                report.failed.append((dst, err))
    report.seconds = time.perf_counter() - t0
    return report


def _run(rows, scale, weights, address, actors, cpus, gpus, overwrite, quality, options, progress):
    import ray

    connect(address)
    res = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if res.get("GPU", 0) > 0 else 0.0
    if options.get("device", "auto") == "auto":
        options["device"] = "cuda" if gpus > 0 else "cpu"
    per = gpus if gpus > 0 else cpus
    avail = res.get("GPU" if gpus > 0 else "CPU", 0.0)
    n = actors or max(1, int(avail // per) if per > 0 else 1)
    n = max(1, min(n, len(rows)))
    # Ray Data's INFO lines (and its progress, logged line by line when stderr is not a terminal)
    # would bury the CLI's own one-line messages; $RAY_DATA_LOG_LEVEL still wins if set
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING" if progress else "ERROR")
    logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one image per block: even spread
    out = ds.map_batches(
        UpscaleActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=cpus, num_gpus=gpus,
        fn_constructor_kwargs={"scale": scale, "weights": weights, "options": options,
                               "threads": max(1, int(cpus)), "overwrite": overwrite, "quality": quality})
    for row in out.iter_rows():
        yield str(row["status"]), str(row["dst"]), str(row["error"])


def run_cli_jobs(jobs, a) -> tuple[int, int, int]:
    """``lesrcnn upscale --ray``: the CLI's planned jobs on Ray; (written, skipped, failed)."""
    if any(j.src is None or j.dst is None for j in jobs):
        raise LesrcnnError("--ray reads and writes files: - (stdin/stdout) is not supported")
    options = {k: getattr(a, v) for k, v in (("precision", "precision"), ("tile", "tile"),
               ("overlap", "tile_overlap"), ("batch", "batch"), ("self_ensemble", "self_ensemble"),
               ("backend", "backend"), ("quantize", "quantize"), ("max_pixels", "max_pixels")) if hasattr(a, v)}
    gpus = None if a.device == "auto" else (1.0 if a.device.startswith("cuda") else 0.0)
    options["device"] = "cuda" if gpus else a.device  # Ray shows each GPU actor its own GPU as cuda:0
    items = [(str(j.src), str(j.dst), j.fmt) for j in jobs]
    report = upscale_dataset(items, scale=a.scale, weights=a.weights, address=a.ray, overwrite=a.overwrite,
                             quality=a.quality, gpus_per_actor=gpus, upscaler_options=options,
                             progress=not a.quiet)
    if len(jobs) == 1 and report.failed:  # one image: its failure is the command's error (exit 2)
        raise LesrcnnError(report.failed[0][1])
    for dst, err in report.failed:
        print(f"lesrcnn: error: {err}" if dst in err else f"lesrcnn: error: {dst}: {err}", file=sys.stderr)
    return report.written, report.skipped, len(report.failed)
