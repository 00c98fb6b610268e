"""The training run: set-up functions, one :class:`Trainer` holding the state, and a loop that fits
on a screen (:func:`loop`).

Guarantees (tests/test_train.py checks each):
- ``last.state.pt`` is the one checkpoint unit (weights, EMA, optimiser, RNG, step), written
  atomically; ``--resume`` reads only it, so a kill -9 at any moment resumes exactly.
- A checkpoint is written only when the weights are finite and give a finite loss, so the
  kept one is never from after an exploding update; non-finite losses are caught every
  ``--log-every`` steps without a host sync per step.
- Any other error after training steps saves them first; ``metrics.jsonl`` is cut back to the
  resumed step, so rolled-back steps are never logged twice.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from . import weights as W
from .data import find_dataset, load_pair
from .errors import LesrcnnError
from .io import atomic_write_bytes, atomic_write_text
from .metrics import psnr_y, to_uint8
from .model import LESRCNN, init_interpolation
from .train import Options
from .train_data import PatchSampler, load_images

STATE_FORMAT = 2


class NonFinite(LesrcnnError):
    """The loss or the weights stopped being finite: stop, and never save this state."""


# --- set-up ----------------------------------------------------------------------------------------

@dataclass
class Context:
    device: torch.device
    rank: int
    world: int
    log: Callable

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_context(opts: Options, log: Callable | None) -> Context:
    """Device (one picker for the whole package), threads, and the DDP process group under torchrun."""
    from .upscale import pick_device

    rank, world, local = (int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    world = max(1, world)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device)
    if device.type == "cuda":
        device = torch.device("cuda", local) if device.index is None else device
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # three patch shapes: each autotuned once
    if opts.precision == "fp16" and device.type != "cuda":
        raise LesrcnnError("--precision fp16 needs a CUDA device; use bf16 or fp32")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if opts.batch % world:
        raise LesrcnnError(f"--batch {opts.batch} is not divisible by the {world} processes")
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    return Context(device, rank, world, log if rank == 0 else (lambda *a: None))


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.state, self.last = path / "last.state.pt", path / "last.safetensors"
        self.best, self.ema, self.metrics = path / "best.safetensors", path / "ema.safetensors", path / "metrics.jsonl"


def open_run_dir(opts: Options, ctx: Context, resume: bool) -> RunDir:
    d = RunDir(Path(opts.out))
    if ctx.is_main:
        try:
            d.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(d.path / ".write_test", b"")
            (d.path / ".write_test").unlink()
        except OSError as e:
            raise LesrcnnError(f"run directory {d.path} is not writable: {e.strerror}") from None
    if resume and not d.state.exists():
        raise LesrcnnError(f"nothing to resume in {d.path}: no last.state.pt")
    if not resume and d.state.exists():
        raise LesrcnnError(f"{d.path} already holds a run; pass --resume to continue it or choose another --out")
    return d


def init_from(model: LESRCNN, path: str) -> None:
    """Start from one of OUR checkpoints (never the authors' .pth: training must not start from them)."""
    pth = path not in W.PRETRAINED and Path(path).is_file() and not W._is_safetensors(Path(path))
    ck = None if pth else W.load(path)  # an official .pth is refused before it is even read
    if ck is None or ck.metadata.get("format") != W.FORMAT:
        raise LesrcnnError(f"--init-weights {path}: not an lesrcnn safetensors checkpoint "
                           "(training never starts from the official .pth weights)")
    if not set(model.scales) <= set(ck.scales) or ck.variant != model.variant:
        raise LesrcnnError(f"--init-weights {path}: a x{'/x'.join(map(str, ck.scales))} '{ck.variant}' model "
                           f"cannot start a x{'/x'.join(map(str, model.scales))} '{model.variant}' run")
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in ck.model.state_dict().items() if k in own})
    model.mean.copy_(ck.model.mean)


def build_model(opts: Options, device: torch.device) -> LESRCNN:
    torch.manual_seed(opts.seed)
    model = LESRCNN(scales=opts.scales(), variant=opts.variant)
    if opts.init == "interp":
        init_interpolation(model)
    if opts.init_weights:
        init_from(model, opts.init_weights)
    return model.to(device).to(memory_format=torch.channels_last)


ValSet = tuple[str, int, list[tuple[np.ndarray, np.ndarray]]]


def load_val_sets(opts: Options) -> list[ValSet]:
    """Every validation pair read at start-up, so a wrong --val folder stops the run before training."""
    sets = []
    for folder in opts.val:
        for s in opts.scales():
            ds = find_dataset(folder, s)
            pairs = ds.pairs[: opts.val_max_images or None]
            sets.append((f"{ds.name}_x{s}", s, [load_pair(p, s) for p in pairs]))
    return sets


@torch.no_grad()
def validate(model: LESRCNN, sets: list[ValSet]) -> dict[str, float]:
    """Mean PSNR (paper protocol, truncation) per folder and scale, plus their mean."""
    was_training, dev = model.training, next(model.parameters()).device
    model.eval()
    out: dict[str, float] = {}
    for name, s, pairs in sets:
        vals = []
        for hr, lr in pairs:
            x = torch.tensor(lr, device=dev).permute(2, 0, 1)[None].float().div(255)
            vals.append(psnr_y(to_uint8(model(x, s)[0].permute(1, 2, 0)), hr, s))
        out[name] = float(np.mean(vals))
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    model.train(was_training)
    return out


def lr_at(opts: Options, step: int, elapsed: float = 0.0) -> float:
    """Learning rate at ``step``. With ``max_minutes`` the cosine runs to whichever end comes
    first, steps or wall time, so a time-budgeted run still anneals to zero."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    if opts.schedule == "cosine":
        t = min(1.0, (step - opts.warmup) / max(1, opts.steps - opts.warmup))
        if opts.max_minutes:
            t = max(t, min(1.0, elapsed / (opts.max_minutes * 60)))
        return opts.lr * 0.5 * (1 + math.cos(math.pi * t))
    return opts.lr * 0.5 ** (step // opts.decay)


class EMA:
    """Exponential moving average of the weights, updated on the device without a host sync."""

    def __init__(self, model: LESRCNN, decay: float):
        self.model, self.decay = copy.deepcopy(model).requires_grad_(False), decay
        self._dst, self._src = list(self.model.parameters()), list(model.parameters())

    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # short runs: the average starts fast
        torch._foreach_lerp_(self._dst, self._src, 1 - d)


class Stop:
    """SIGINT/SIGTERM ask the loop to save and leave at the next step boundary; the caller's own
    handlers come back afterwards (the API must not swallow a host program's Ctrl-C for good)."""

    def __init__(self):
        self.signal = None
        self._saved: dict = {}

    def __enter__(self) -> "Stop":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signals to catch
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signal = signum


class MetricsLog:
    """metrics.jsonl, cut back to ``resumed_step`` so that steps rolled back are not logged twice."""

    def __init__(self, path: Path, resumed_step: int | None):
        if resumed_step is not None and path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        keep.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill -9
            atomic_write_text(path, "".join(keep))
        self.f = open(path, "a")

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


# --- the trainer -----------------------------------------------------------------------------------

class Trainer:
    """Model, optimiser, EMA, RNG and step: what one training step changes and a checkpoint holds."""

    def __init__(self, opts: Options, ctx: Context, run_dir: RunDir, model: LESRCNN, val_sets: list[ValSet]):
        self.opts, self.ctx, self.dir, self.model, self.val_sets = opts, ctx, run_dir, model, val_sets
        dev = ctx.device
        self.opt = torch.optim.Adam(model.parameters(), lr=opts.lr, fused=dev.type == "cuda")
        self.ema = EMA(model, opts.ema) if opts.ema else None
        self.rng = np.random.default_rng(opts.seed)
        self.step, self.best, self.elapsed_before, self.saved_step = 0, -math.inf, 0.0, None
        net: torch.nn.Module = model
        if ctx.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=len(opts.scales()) > 1, broadcast_buffers=False)
        self.net, self.fwd = net, (torch.compile(net) if opts.compile else net)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.precision)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == torch.float16)
        self.loss_fn = F.mse_loss if opts.loss == "mse" else F.l1_loss
        per = opts.batch // ctx.world
        self.part = slice(ctx.rank * per, (ctx.rank + 1) * per)
        self.loss_sum, self.loss_n, self.last_loss = torch.zeros((), device=dev), 0, float("nan")
        self.batch_now: tuple | None = None
        self.t_start = self.t_log = time.time()
        self.step_log = self.step_start = self.scale = 0
        self.last_val: dict = {}
        self.sampler: PatchSampler | None = None
        self.metrics: MetricsLog | None = None
        self.bar = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def train_step(self, s: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, loss, backward, clip, Adam, EMA: all queued on the device, nothing read back."""
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.opts, self.step, self.elapsed())
        with torch.autocast(self.ctx.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.loss_fn(self.fwd(x, s).float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.step)
        self.step += 1
        self.loss_sum += loss.detach()
        self.loss_n += 1
        self.batch_now, self.scale = (s, x, y), s

    def report(self, val: dict | None) -> None:
        """Every --log-every steps: the one host sync (mean loss, checked finite), metrics, a log line."""
        loss = (self.loss_sum / max(1, self.loss_n)).item()
        if not math.isfinite(loss):
            raise NonFinite(f"loss became {loss} by step {self.step}; stopped, {self.kept()}")
        self.loss_sum.zero_()
        self.loss_n, self.last_loss = 0, loss
        now = time.time()
        rate = (self.step - self.step_log) / max(1e-9, now - self.t_log)
        self.t_log, self.step_log = now, self.step
        if not self.ctx.is_main:
            return
        rec = {"step": self.step, "loss": loss, "lr": lr_at(self.opts, self.step - 1, self.elapsed()),
               "scale": self.scale, "time": round(self.elapsed(), 2), "steps_per_s": round(rate, 3)} | (val or {})
        self.metrics.write(rec)
        left = (self.opts.steps - self.step) / max(rate, 1e-9)
        if self.opts.max_minutes:
            left = min(left, max(0.0, self.opts.max_minutes * 60 - self.elapsed()))
        psnr = f" psnr {self.last_val['mean']:.2f}" if self.last_val else ""
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4g}", psnr=psnr.strip()[5:] or "-")
        else:
            self.ctx.log(f"step {self.step}/{self.opts.steps} loss {loss:.4g}{psnr} {rate:.2f} steps/s "
                         f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}")

    def validate(self) -> dict | None:
        """PSNR of the weights and of their EMA; the better of the two becomes best.safetensors."""
        if not self.ctx.is_main:
            return None
        cands = [("raw", self.model, validate(self.model, self.val_sets))]
        if self.ema:
            cands.append(("ema", self.ema.model, validate(self.ema.model, self.val_sets)))
        kind, model, val = max(cands, key=lambda c: c[2]["mean"])
        self.last_val, self.val_kind = val, kind
        if val["mean"] > self.best and self.good(model):
            self.best = val["mean"]
            _write(self.dir.best, lambda p: W.save(model, p, self.provenance() | {"val_psnr": val, "weights": kind}))
        return {"val": cands[0][2]} | ({"val_ema": cands[1][2]} if self.ema else {})

    @torch.no_grad()
    def good(self, model: LESRCNN) -> bool:
        """Finite weights that give a finite loss on the last batch: the update did not explode."""
        ok = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        if self.batch_now is not None:
            s, x, y = self.batch_now
            with torch.autocast(self.ctx.device.type, dtype=self.amp, enabled=self.amp is not None):
                ok &= torch.isfinite(self.loss_fn(model(x, s).float(), y))
        return bool(ok)

    def stop_reason(self, stop: Stop) -> str | None:
        if self.step >= self.opts.steps:
            return "done"
        if self.opts.max_minutes and self.elapsed() > self.opts.max_minutes * 60:
            return "time limit"
        return f"signal {stop.signal}" if stop.signal else None

    def kept(self) -> str:
        if self.saved_step is None:
            return "no checkpoint: none was kept (lower --lr or add --warmup)"
        return f"the last good checkpoint is {self.dir.state} (step {self.saved_step})"

    def state(self) -> dict:
        cpu = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()}  # noqa: E731
        return {"format": STATE_FORMAT, "step": self.step, "model": cpu(self.model), "mean": self.model.mean.cpu(),
                "ema": cpu(self.ema.model) if self.ema else None, "optimizer": self.opt.state_dict(),
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "best": self.best,
                "elapsed": self.elapsed(), "config": asdict(self.opts)}

    def save(self) -> None:
        """The checkpoint unit first (what --resume reads), then the weights files users take."""
        if not self.ctx.is_main or self.saved_step == self.step:
            return
        if not self.good(self.model):
            raise NonFinite(f"the update of step {self.step} made the weights or the loss non-finite; stopped, "
                            f"{self.kept()}")
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        _write(self.dir.state, lambda p: atomic_write_bytes(p, buf.getvalue()))
        self.saved_step = self.step
        _write(self.dir.last, lambda p: W.save(self.model, p, self.provenance()))
        if self.ema:
            _write(self.dir.ema, lambda p: W.save(self.ema.model, p, self.provenance() | {"weights": "ema"}))

    def restore(self) -> None:
        st = read_state(self.dir, self.opts)
        self.model.load_state_dict(st["model"])
        self.model.mean.copy_(st["mean"])
        self.opt.load_state_dict(st["optimizer"])
        if self.ema:
            self.ema.model.load_state_dict(st["ema"] or st["model"])
        self.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        self.step, self.best, self.elapsed_before = st["step"], st["best"], st.get("elapsed", 0.0)
        self.saved_step = self.step
        self.ctx.log(f"resumed {self.dir.path} at step {self.step}")
        stale = self.dir.last.exists() and (W.load(self.dir.last).metadata.get("provenance") or {}).get("steps")
        if self.ctx.is_main and stale != self.step:  # killed between the state and the weights export
            self.ctx.log(f"{self.dir.last} (step {stale}) rewritten from {self.dir.state} (step {self.step})")
            _write(self.dir.last, lambda p: W.save(self.model, p, self.provenance()))

    def provenance(self) -> dict:
        dev, o = self.ctx.device, self.opts
        hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        recipe = ("scale", "batch", "patch", "hr_patch", "lr", "schedule", "decay", "warmup", "loss", "clip", "init",
                  "init_weights", "degradation", "ema", "variant", "precision", "seed")
        return {"trained_by": f"lesrcnn {__version__} `lesrcnn train`", "data": [Path(d).name for d in o.data],
                "steps": self.step, "recipe": {k: getattr(o, k) for k in recipe}, "hardware": f"{hw} x{self.ctx.world}",
                "seconds": round(self.elapsed(), 1), "torch": torch.__version__,
                "best_val_psnr": None if self.best == -math.inf else round(self.best, 4)}


def _write(path: Path, write: Callable[[Path], object]) -> None:
    """A checkpoint write; a full disk or a failing file system is one line naming the file."""
    try:
        write(path)
    except LesrcnnError:
        raise
    except Exception as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
        raise LesrcnnError(f"cannot write {path}: {why[:200]}") from None


def read_state(d: RunDir, opts: Options) -> dict:
    """The checkpoint unit of a run, checked: same scale and variant; a legacy pair only if its steps agree."""
    try:
        st = torch.load(d.state, map_location="cpu", weights_only=True)
        step = int(st["step"])
    except Exception as e:
        raise LesrcnnError(f"{d.state}: unreadable training state ({type(e).__name__})") from None
    old = st.get("config", {})
    if old.get("scale") != opts.scale or old.get("variant") != opts.variant:
        raise LesrcnnError(f"cannot resume: {d.path} is a x{old.get('scale')} '{old.get('variant')}' run, "
                           f"not x{opts.scale} '{opts.variant}'")
    if "model" not in st:  # written by lesrcnn <= 0.x: weights in last.safetensors, state apart
        ck = W.load(d.last)
        wstep = (ck.metadata.get("provenance") or {}).get("steps")
        if wstep != step:
            raise LesrcnnError(f"cannot resume: {d.last} is from step {wstep} but {d.state} from step {step} "
                               "(the run was killed between the two writes)")
        st |= {"model": ck.model.state_dict(), "mean": ck.model.mean, "ema": None}
    return st


# --- the loop ----------------------------------------------------------------------------------------

def loop(t: Trainer) -> str:
    """Train until the step count, the wall-time limit or a signal; returns why it stopped. The last
    step is always validated (with --val), logged and checked, so the final save is a good one."""
    o = t.opts
    reason = "done" if t.step >= o.steps else None
    with Stop() as stop:
        while reason is None:
            t.train_step(*t.sampler.batch(t.rng, o.batch, t.part))
            reason = t.stop_reason(stop)
            val = t.validate() if o.val and (t.step % o.val_every == 0 or reason) else None
            if val or reason or t.step % o.log_every == 0:
                t.report(val)
            if t.bar is not None:
                t.bar.update(1)
            if t.step % o.save_every == 0:
                t.save()
    return reason


def train(opts: Options, resume: bool = False, log: Callable | None = None) -> dict:
    """Set up (cheap checks first, then data), loop, save; returns a summary."""
    if not opts.data:
        raise LesrcnnError("no --data folder given")
    if not opts.out:
        raise LesrcnnError("no --out run directory given")
    ctx = setup_context(opts, log)
    run_dir = open_run_dir(opts, ctx, resume)
    t = Trainer(opts, ctx, run_dir, build_model(opts, ctx.device), load_val_sets(opts))
    if resume:
        t.restore()
    hrs, lrs = load_images(opts.data, opts.scales(), {s: p * s for s, p in opts.lr_patch().items()},
                           opts.degradation == "bicubic", opts.workers, ctx.log)
    t.sampler = PatchSampler(hrs, lrs, opts.lr_patch(), ctx.device)
    if ctx.is_main:
        resolved = asdict(opts) | {"lr_patch": {str(k): v for k, v in opts.lr_patch().items()},
                                   "world_size": ctx.world, "code_version": __version__}
        atomic_write_text(run_dir.path / "config.json", json.dumps(resolved, indent=2))
        t.metrics = MetricsLog(run_dir.metrics, t.step if resume else None)
        from tqdm import tqdm
        t.bar = tqdm(total=opts.steps, initial=t.step, desc="train", dynamic_ncols=True, file=sys.stderr,
                     disable=None)
    t.t_start = t.t_log = time.time()
    t.step_log = t.step_start = t.step
    t.model.train()
    try:
        reason = loop(t)
    except NonFinite:
        raise
    except BaseException:
        if t.step > t.step_start:
            _save_quietly(t)
        raise
    finally:
        if t.bar is not None:
            t.bar.close()
        if t.metrics is not None:
            t.metrics.f.close()
    t.save()
    summary = {"step": t.step, "reason": reason, "loss": t.last_loss, "seconds": round(t.elapsed(), 1),
               "best_val": t.best if t.best > -math.inf else None, "out": str(run_dir.path)}
    if ctx.is_main:
        val = {"last_val": t.last_val, "last_val_weights": getattr(t, "val_kind", None)}
        atomic_write_text(run_dir.path / "summary.json", json.dumps(summary | val, indent=1))
    ctx.log(json.dumps(summary))
    if ctx.world > 1:
        torch.distributed.barrier()
    return summary


def _save_quietly(t: Trainer) -> None:
    """On an error after training steps: keep them if they are good; never mask the error."""
    try:
        t.save()
        t.ctx.log(f"saved step {t.step} to {t.dir.state} before stopping")
    except Exception:
        pass
