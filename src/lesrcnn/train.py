"""Training: the paper's recipe by default, one CPU to many GPUs (torchrun + DDP), resumable.

Read top to bottom: config -> data -> model/optimiser -> loop (step, validate, checkpoint).
A run directory holds ``config.json`` (resolved), ``metrics.jsonl``, ``last.safetensors`` +
``last.state.pt`` (optimiser, step, RNG) and ``best.safetensors``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .data import find_dataset, list_images, load_pair, read_rgb
from .errors import LesrcnnError
from .metrics import psnr_y, to_uint8
from .model import LESRCNN, SCALES, VARIANTS, init_interpolation
from .resize import crop_to_multiple, imresize
from . import weights as W


@dataclass
class Config:
    data: list[str] = field(default_factory=list)
    scale: str = "2"  # "2", "3", "4" or "multi"
    out: str = ""
    steps: int = 600_000
    batch: int = 64
    patch: int = 64  # LR patch side (the paper's 64)
    hr_patch: int = 0  # >0: fixed HR patch side instead (LR side = hr_patch // scale); balances multi-scale cost
    lr: float = 1e-4
    decay: int = 400_000  # 'step' schedule: halve every `decay` steps (the paper)
    schedule: str = "step"  # step | cosine
    warmup: int = 0
    loss: str = "mse"
    clip: float = 10.0
    variant: str = "full"
    init: str = "random"  # random | interp (start as a cubic interpolator, see model.init_interpolation)
    val: list[str] = field(default_factory=list)
    val_every: int = 1000
    val_max_images: int = 0  # 0: all
    save_every: int = 500
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    seed: int = 0
    threads: int = 0  # CPU threads (0: torch default)
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0: no limit

    def scales(self) -> tuple[int, ...]:
        return SCALES if self.scale == "multi" else (int(self.scale),)


def load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise LesrcnnError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            import tomllib
            raw = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore
            except ImportError:
                raise LesrcnnError("YAML configs need PyYAML (pip install pyyaml); TOML works without it") from None
            raw = yaml.safe_load(text) or {}
        elif p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            raise LesrcnnError(f"config must be .toml, .yaml or .json: {p}")
    except LesrcnnError:
        raise
    except Exception as e:  # parse errors of any of the three formats
        raise LesrcnnError(f"cannot parse {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise LesrcnnError(f"{p}: expected a table of keys")
    known = {f.name for f in dataclasses.fields(Config)}
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LesrcnnError(f"{p}: unknown key(s): {', '.join(unknown)}")
    return raw


def validate_config(cfg: Config) -> None:
    if cfg.scale not in ("2", "3", "4", "multi"):
        raise LesrcnnError(f"--scale must be 2, 3, 4 or multi, got {cfg.scale}")
    if cfg.variant not in VARIANTS:
        raise LesrcnnError(f"--variant must be one of {', '.join(VARIANTS)}")
    if cfg.loss not in ("mse", "l1"):
        raise LesrcnnError("--loss must be mse or l1")
    if cfg.schedule not in ("step", "cosine"):
        raise LesrcnnError("--schedule must be step or cosine")
    if cfg.init not in ("random", "interp"):
        raise LesrcnnError("--init must be random or interp")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise LesrcnnError("--precision must be fp32, bf16 or fp16")
    if not cfg.data:
        raise LesrcnnError("no --data folder given")
    if not cfg.out:
        raise LesrcnnError("no --out run directory given")
    for name in ("steps", "batch", "patch", "val_every", "save_every"):
        if getattr(cfg, name) <= 0:
            raise LesrcnnError(f"--{name.replace('_', '-')} must be positive")


# --- data ----------------------------------------------------------------------------------------

class PatchSampler:
    """HR images and their MATLAB-bicubic LR, held in memory; LR made once, never per step.

    Batches are drawn from a numpy Generator whose state is checkpointed, and every rank
    draws the same global batch and keeps its own slice, so a DDP step equals a
    single-process step on the combined batch and a resumed run equals an uninterrupted one.
    """

    def __init__(self, folders: list[str], scales: tuple[int, ...], lr_patch: dict[int, int], log=print):
        self.scales = scales
        self.lr_patch = lr_patch
        paths: list[Path] = []
        for f in folders:
            p = Path(f)
            if not p.is_dir():
                raise LesrcnnError(f"data folder not found: {p}")
            hr_dir = next((d for d in (p / "HR", p / f"{p.name}_HR") if d.is_dir()), p)
            found = list_images(hr_dir)
            if not found:
                raise LesrcnnError(f"no images in {p}")
            paths += found
        self.hr: list[np.ndarray] = []
        self.lr: dict[int, list[np.ndarray]] = {s: [] for s in scales}
        skipped = 0
        t0 = time.time()
        need = max(lr_patch[s] * s for s in scales)
        for path in paths:
            img = read_rgb(path)
            if img.shape[0] < need or img.shape[1] < need:
                skipped += 1
                continue
            lcm = int(np.lcm.reduce(scales))
            hr = crop_to_multiple(img, lcm)
            self.hr.append(hr)
            for s in scales:
                self.lr[s].append(imresize(hr, 1.0 / s))
        if not self.hr:
            raise LesrcnnError(f"all {len(paths)} training images are smaller than the {need}px HR patch")
        log(f"data: {len(self.hr)} images ({skipped} smaller than the patch skipped), "
            f"LR for x{'/x'.join(map(str, scales))} made in {time.time() - t0:.1f}s")
        self.skipped = skipped
        areas = np.array([h.shape[0] * h.shape[1] for h in self.hr], dtype=np.float64)
        self.p = areas / areas.sum()  # sample images by area: every pixel equally likely

    def batch(self, rng: np.random.Generator, n: int) -> tuple[int, np.ndarray, np.ndarray]:
        s = int(self.scales[rng.integers(len(self.scales))]) if len(self.scales) > 1 else self.scales[0]
        ps = self.lr_patch[s]
        lrs = np.empty((n, ps, ps, 3), np.uint8)
        hrs = np.empty((n, ps * s, ps * s, 3), np.uint8)
        idx = rng.choice(len(self.hr), size=n, p=self.p)
        for k, i in enumerate(idx):
            lr, hr = self.lr[s][i], self.hr[i]
            y = int(rng.integers(lr.shape[0] - ps + 1))
            x = int(rng.integers(lr.shape[1] - ps + 1))
            a = lr[y:y + ps, x:x + ps]
            b = hr[y * s:(y + ps) * s, x * s:(x + ps) * s]
            flip_h, flip_v, rot = rng.integers(2, size=3)
            if flip_h:
                a, b = a[:, ::-1], b[:, ::-1]
            if flip_v:
                a, b = a[::-1], b[::-1]
            if rot:
                a, b = a.transpose(1, 0, 2), b.transpose(1, 0, 2)
            lrs[k], hrs[k] = a, b
        return s, lrs, hrs


def to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last)


# --- helpers ---------------------------------------------------------------------------------------

def lr_at(cfg: Config, step: int, elapsed: float = 0.0) -> float:
    """Learning rate at ``step``. With ``max_minutes`` the cosine runs to whichever end comes
    first, steps or wall time, so a time-budgeted run still anneals to zero."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        if cfg.max_minutes:
            t = max(t, min(1.0, elapsed / (cfg.max_minutes * 60)))
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr * 0.5 ** (step // cfg.decay)


def atomic_torch_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@torch.no_grad()
def validate(model: LESRCNN, folders: list[str], scales: tuple[int, ...], max_images: int = 0) -> dict[str, float]:
    """Mean PSNR (paper protocol, truncation) per folder and scale, plus their mean."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    dev = next(model.parameters()).device
    for folder in folders:
        for s in scales:
            ds = find_dataset(folder, s)
            pairs = ds.pairs[:max_images] if max_images else ds.pairs
            vals = []
            for pair in pairs:
                hr, lr = load_pair(pair, s)
                x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div(255).to(dev)
                x = x.contiguous(memory_format=torch.channels_last)
                y = model(x, s) if model.multiscale else model(x)
                vals.append(psnr_y(to_uint8(y[0].permute(1, 2, 0)), hr, s))
            out[f"{ds.name}_x{s}"] = float(np.mean(vals))
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    model.train(was_training)
    return out


# --- the run -------------------------------------------------------------------------------------

class Stop:
    """SIGINT/SIGTERM ask the loop to save and leave at the next step boundary."""

    def __init__(self):
        self.requested = False
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signum


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def run(cfg: Config, resume: bool = False, log=None) -> dict:
    """Train; returns a summary. Raises LesrcnnError on bad input."""
    validate_config(cfg)
    rank, world, local_rank = _dist_info()
    is_main = rank == 0
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    if not is_main:
        log = lambda *a: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # device and distributed engine
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise LesrcnnError("--device cuda: no CUDA device is available")
        device = torch.device(f"cuda:{local_rank}")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch % world:
        raise LesrcnnError(f"--batch {cfg.batch} is not divisible by the {world} processes")

    out = Path(cfg.out)
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise LesrcnnError(f"run directory {out} is not writable: {e.strerror}") from None
    state_path, last_path, best_path = out / "last.state.pt", out / "last.safetensors", out / "best.safetensors"
    if not resume and is_main and state_path.exists():
        raise LesrcnnError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    scales = cfg.scales()
    torch.manual_seed(cfg.seed)
    model = LESRCNN(scales=scales, variant=cfg.variant)
    if cfg.init == "interp":
        init_interpolation(model)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    step, best = 0, -math.inf
    elapsed_before = 0.0

    if resume:
        if not state_path.exists() or not last_path.exists():
            raise LesrcnnError(f"nothing to resume in {out}: no last.state.pt/last.safetensors")
        try:
            st = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise LesrcnnError(f"{state_path}: unreadable training state ({type(e).__name__})") from None
        old = st.get("config", {})
        if old.get("scale") != cfg.scale or old.get("variant") != cfg.variant:
            raise LesrcnnError(f"cannot resume: {out} is a x{old.get('scale')} '{old.get('variant')}' run, "
                               f"not x{cfg.scale} '{cfg.variant}'")
        ck = W.load(last_path)
        model.load_state_dict(ck.model.state_dict())
        opt.load_state_dict(st["optimizer"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        step, best, elapsed_before = st["step"], st["best"], st.get("elapsed", 0.0)
        log(f"resumed {out} at step {step}")

    lr_patch = {s: (max(8, cfg.hr_patch // s) if cfg.hr_patch else cfg.patch) for s in scales}
    sampler = PatchSampler(cfg.data, scales, lr_patch, log=log)

    if is_main:
        resolved = dataclasses.asdict(cfg) | {"lr_patch": {str(k): v for k, v in lr_patch.items()},
                                              "world_size": world, "code_version": __version__}
        atomic_write_text(out / "config.json", json.dumps(resolved, indent=2))

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(scales) > 1, broadcast_buffers=False)
    fwd = net
    if cfg.compile and device.type == "cuda":
        fwd = torch.compile(net)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    use_amp = amp_dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_fn = F.mse_loss if cfg.loss == "mse" else F.l1_loss
    per_rank = cfg.batch // world

    def save(kind: str) -> None:
        if not is_main:
            return
        prov = provenance(cfg, step, elapsed_before + time.time() - t_start, device, world, best)
        W.save(model, last_path, prov)
        atomic_torch_save({"config": dataclasses.asdict(cfg), "optimizer": opt.state_dict(),
                           "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                           "step": step, "best": best, "elapsed": elapsed_before + time.time() - t_start},
                          state_path)

    logf = open(out / "metrics.jsonl", "a") if is_main else None
    tb = None
    if is_main:
        try:  # TensorBoard when it is installed; metrics.jsonl always
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(out / "tb"))
        except Exception:
            tb = None
    stop = Stop()
    t_start = time.time()
    data_time = compute_time = 0.0
    last_loss = float("nan")
    last_val: dict[str, float] = {}
    bar = None
    if is_main:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, file=sys.stderr,
                   disable=None)
    model.train()
    reason = "done"
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            s, lrs, hrs = sampler.batch(rng, cfg.batch)
            lrs, hrs = lrs[rank * per_rank:(rank + 1) * per_rank], hrs[rank * per_rank:(rank + 1) * per_rank]
            x, y = to_tensor(lrs, device), to_tensor(hrs, device)
            t1 = time.perf_counter()
            cur_lr = lr_at(cfg, step, elapsed_before + time.time() - t_start)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                pred = fwd(x, s) if len(scales) > 1 else fwd(x)
                loss = loss_fn(pred.float(), y)
            if not torch.isfinite(loss):
                raise LesrcnnError(f"loss became {loss.item()} at step {step + 1}; stopped, "
                                   f"the last good checkpoint is {last_path}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            last_loss = loss.item()
            t2 = time.perf_counter()
            data_time += t1 - t0
            compute_time += t2 - t1
            if is_main:
                rec = {"step": step, "loss": last_loss, "lr": cur_lr, "scale": s,
                       "time": round(elapsed_before + time.time() - t_start, 2)}
                if cfg.val and step % cfg.val_every == 0:
                    last_val = validate(model, cfg.val, scales, cfg.val_max_images)
                    rec["val"] = last_val
                    if last_val["mean"] > best:
                        best = last_val["mean"]
                        W.save(model, best_path, provenance(cfg, step, elapsed_before + time.time() - t_start,
                                                            device, world, best) | {"val_psnr": last_val})
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                if tb is not None:
                    tb.add_scalar("loss", last_loss, step)
                    tb.add_scalar("lr", cur_lr, step)
                    for k, v in rec.get("val", {}).items():
                        tb.add_scalar(f"val_psnr/{k}", v, step)
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{last_loss:.4g}", "data%": f"{100 * data_time / (data_time + compute_time):.0f}"}
                    if last_val:
                        post["psnr"] = f"{last_val['mean']:.2f}"
                    bar.set_postfix(post)
            if step % cfg.save_every == 0:
                save("periodic")
            if cfg.max_minutes and (elapsed_before + time.time() - t_start) > cfg.max_minutes * 60:
                reason = "time limit"
                break
            if stop.requested:
                reason = f"signal {stop.signal}"
                break
    finally:
        if bar is not None:
            bar.close()
    save("final")
    if logf:
        logf.close()
    if tb is not None:
        tb.close()
    total = elapsed_before + time.time() - t_start
    summary = {"step": step, "reason": reason, "loss": last_loss, "best_val": best if best > -math.inf else None,
               "seconds": round(total, 1), "data_fraction": round(data_time / max(1e-9, data_time + compute_time), 4),
               "out": str(out)}
    log(json.dumps(summary))
    if world > 1:
        torch.distributed.barrier()
    return summary


def provenance(cfg: Config, step: int, seconds: float, device: torch.device, world: int, best: float) -> dict:
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return {
        "trained_by": f"lesrcnn {__version__} `lesrcnn train`",
        "data": [Path(d).name for d in cfg.data],
        "steps": step,
        "recipe": {k: getattr(cfg, k) for k in ("scale", "batch", "patch", "hr_patch", "lr", "schedule", "decay",
                                                 "warmup", "loss", "clip", "init", "variant", "precision", "seed")},
        "hardware": f"{hw} x{world}",
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "best_val_psnr": None if best == -math.inf else round(best, 4),
    }
