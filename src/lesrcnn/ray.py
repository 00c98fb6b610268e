"""Batch upscaling on a Ray cluster (extra ``ray``): Ray Data with one model per CPU or GPU actor;
outputs are written atomically and existing ones skipped, so a job run again does only what is left.
Workers need ``lesrcnn[ray]`` and the paths under the same names (a shared file system), or bytes."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LesrcnnError, first_line, note


@dataclass
class Report:
    written: int = 0
    skipped: int = 0  # outputs that existed already (before the job or written meanwhile)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (output, one-line reason)


class UpscaleActor:
    """One Ray actor (one CPU thread, or its GPU): loads the model once, then upscales row by row."""

    def __init__(self, scale: int, weights, options: dict, overwrite: bool, quality: int | None):
        import torch

        from .upscale import Upscaler

        torch.set_num_threads(1)
        self.up = Upscaler(scale, weights, **options)
        self.overwrite, self.quality = overwrite, quality

    def __call__(self, row: dict) -> dict:
        dst, data = row["dst"], row["data"]
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            self.up.upscale_file(data or row["src"], dst, format=row["fmt"] or None, quality=self.quality,
                                 overwrite=self.overwrite)
            return {"dst": dst, "status": "written", "error": ""}
        except (LesrcnnError, OSError, MemoryError, RuntimeError) as e:
            if not self.overwrite and os.path.exists(dst):  # written before the job, or meanwhile
                return {"dst": dst, "status": "skipped", "error": ""}
            error = first_line(e).replace("<stdin>", f"<bytes for {Path(dst).name}>")  # read_picture's name
            return {"dst": dst, "status": "failed", "error": error}


def connect(address: str | None = None, **init_kwargs) -> None:
    """``ray.init`` once (a local instance without ``address`` and ``$RAY_ADDRESS``)."""
    import ray  # missing: cli.main names the extra to install

    if ray.is_initialized():
        return
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING, **init_kwargs}
    if address not in (None, "", "local"):
        kw["address"] = address
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        if host and port.isdigit():  # nobody listening: fail now, where ray.init would retry for minutes
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as e:
                raise LesrcnnError(f"cannot reach Ray at {address}: {e.strerror or e}") from None
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LesrcnnError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                           f"{first_line(e)}") from None


def upscale_dataset(items, *, scale: int = 2, weights=None, address: str | None = None,
                    gpus_per_actor: float | None = 0.0, overwrite: bool = False, quality: int | None = None,
                    upscaler_options: dict | None = None, progress: bool = True) -> Report:
    """Upscale ``items`` -- (source, output) or (source, output, format), the source a path or the
    image's bytes -- with one actor per CPU of the cluster, or per ``gpus_per_actor`` GPUs (None:
    one GPU each if the cluster has GPUs). ``upscaler_options``: :class:`~lesrcnn.upscale.Upscaler`
    keywords; ``progress``: Ray Data's progress bars."""
    from .model import check_scale

    check_scale(scale)
    rows, report = [], Report()
    for src, dst, fmt in ((*item, None)[:3] for item in items):
        if not overwrite and os.path.exists(dst):
            report.skipped += 1
        else:
            raw = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else b""
            rows.append({"src": "" if raw else str(src), "data": raw, "dst": str(dst), "fmt": fmt or ""})
    if not rows:
        return report
    connect(address)
    import ray

    res = ray.cluster_resources()
    gpus = (1.0 if res.get("GPU", 0) > 0 else 0.0) if gpus_per_actor is None else gpus_per_actor
    options = dict(upscaler_options or {})
    if gpus > 0 or options.get("device", "auto") == "auto":  # Ray shows each GPU actor its GPU as cuda:0
        options["device"] = "cuda" if gpus > 0 else "cpu"
    actors = int(res.get("GPU", 0) // gpus) if gpus > 0 else int(res.get("CPU", 1))
    # Ray Data's INFO lines (and its progress, logged line by line when stderr is not a terminal)
    # would bury the CLI's own one-line messages; $RAY_DATA_LOG_LEVEL still wins if set
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING" if progress else "ERROR")
    logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one image per block: even spread
    out = ds.map(UpscaleActor, compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(rows)))),
                 num_cpus=1, num_gpus=gpus, fn_constructor_args=(scale, weights, options, overwrite, quality))
    done = list(out.iter_rows())
    report.written = sum(row["status"] == "written" for row in done)
    report.skipped += sum(row["status"] == "skipped" for row in done)
    report.failed = [(row["dst"], row["error"]) for row in done if row["status"] == "failed"]
    return report


def run_cli_jobs(jobs, a) -> tuple[int, int, int]:
    """``lesrcnn upscale --ray``: the CLI's planned jobs on Ray; (written, skipped, failed)."""
    if any(j.src is None or j.dst is None for j in jobs):
        raise LesrcnnError("--ray reads and writes files: - (stdin/stdout) is not supported")
    gpus = None if a.device == "auto" else float(a.device.startswith("cuda"))
    names = ("device", "precision", "tile", "batch", "self_ensemble", "backend", "quantize", "max_pixels")
    options = {k: getattr(a, k) for k in names} | {"overlap": a.tile_overlap}
    report = upscale_dataset([(str(j.src), str(j.dst), j.fmt) for j in jobs], scale=a.scale,
                             weights=a.weights, address=a.ray, overwrite=a.overwrite, quality=a.quality,
                             gpus_per_actor=gpus, upscaler_options=options, progress=not a.quiet)
    if len(jobs) == 1 and report.failed:  # one image: its failure is the command's error (exit 2)
        raise LesrcnnError(report.failed[0][1])
    for dst, err in report.failed:
        note(f"error: {err}" if dst in err else f"error: {dst}: {err}")
    return report.written, report.skipped, len(report.failed)
