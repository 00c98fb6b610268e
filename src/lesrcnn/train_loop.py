"""The training run: set-up, a :class:`Trainer` holding what a checkpoint holds, and :func:`loop`.
``last.state.pt`` is the one checkpoint unit (``--resume`` reads only it), written atomically, first,
and only when the weights and the last batch's loss are finite; the loss is read back (and checked)
every ``--log-every`` steps only, so a GPU never waits on the host in between."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
import types
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from . import weights as W
from .bench import cpu_name
from .data import find_dataset, load_pair
from .errors import LesrcnnError, first_line
from .evaluate import super_resolve
from .io import atomic_write_bytes, atomic_write_text, clean_stale_temps
from .metrics import psnr_y, to_uint8
from .model import LESRCNN, init_interpolation
from .train import Options
from .train_data import PatchSampler, load_images
from .upscale import pick_device


class NonFinite(LesrcnnError):
    """The loss or the weights stopped being finite: stop, and never save this state."""


def setup_context(opts: Options, log: Callable | None) -> tuple[torch.device, int, int, Callable]:
    """Device (the package's one picker), threads, and the DDP process group under torchrun."""
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
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
    log = log or partial(print, file=sys.stderr, flush=True)
    return device, rank, world, log if rank == 0 else (lambda *a: None)


def build_model(opts: Options, device: torch.device) -> LESRCNN:
    """The seeded network, optionally a cubic interpolator or one of OUR checkpoints: an official
    .pth is refused before it is even read (training never starts from the authors' weights)."""
    torch.manual_seed(opts.seed)
    model = LESRCNN(scales=opts.scales(), variant=opts.variant)
    if opts.init == "interp":
        init_interpolation(model)
    if path := opts.init_weights:
        if path not in W.PRETRAINED and Path(path).is_file() and not W._is_safetensors(Path(path)):
            raise LesrcnnError(f"--init-weights {path}: not an lesrcnn safetensors checkpoint "
                               "(training never starts from the official .pth weights)")
        ck = W.load(path)  # a safetensors file that is not ours is refused there
        if not set(model.scales) <= set(ck.scales) or ck.variant != model.variant:
            have, want = ("/x".join(map(str, m.scales)) for m in (ck, model))
            raise LesrcnnError(f"--init-weights {path}: a x{have} '{ck.variant}' model cannot start a "
                               f"x{want} '{model.variant}' run")
        model.load_state_dict(ck.model.state_dict(), strict=False)  # ck may hold more scales' upsamplers
        model.mean.copy_(ck.model.mean)
    return model.to(device).to(memory_format=torch.channels_last)


def fuse_rb_for_training(model: LESRCNN) -> LESRCNN:
    """The RB as one upsampler pass on g + h0 with doubled biases: U is affine, so U(g) + U(h0) =
    U'(g + h0), the same function with the same gradients, ~12% fewer MACs in training. Unlike
    :func:`lesrcnn.model.fuse_rb` the parameters (and so the checkpoints) stay the module's."""
    for up in model.upsample.values():
        up.pair = types.MethodType(_fused_pair, up)
    return model


def _fused_pair(up: torch.nn.Module, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    doubled = {n: 2 * p for n, p in up.named_parameters() if n.endswith("bias")}
    return torch.func.functional_call(up, doubled, (g + h0,))


ValSet = tuple[str, int, list[tuple[np.ndarray, np.ndarray]]]


def load_val_sets(opts: Options) -> list[ValSet]:
    """Every validation pair read at start-up, so a wrong --val folder stops the run before training."""
    found = [(find_dataset(folder, s), s) for folder in opts.val for s in opts.scales()]
    return [(f"{ds.name}_x{s}", s, [load_pair(p, s) for p in ds.pairs]) for ds, s in found]


@torch.no_grad()
def validate(model: LESRCNN, sets: list[ValSet]) -> dict[str, float]:
    """Mean PSNR (paper protocol, truncation) per folder and scale, plus their mean."""
    out = {name: float(np.mean([psnr_y(to_uint8(super_resolve(model, lr, s).permute(1, 2, 0)), hr, s)
                                for hr, lr in pairs])) for name, s, pairs in sets}
    return out | {"mean": float(np.mean(list(out.values())))}


def lr_at(opts: Options, step: int, elapsed: float = 0.0) -> float:
    """Learning rate at ``step``. With ``max_minutes`` the cosine ends at whichever end comes
    first, steps or wall time, so a time-budgeted run still anneals to zero."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    if opts.schedule == "cosine":
        t = min(1.0, (step - opts.warmup) / max(1, opts.steps - opts.warmup))
        if opts.max_minutes:
            t = max(t, min(1.0, elapsed / (opts.max_minutes * 60)))
        return opts.lr * 0.5 * (1 + math.cos(math.pi * t))
    return opts.lr * 0.5 ** (step // opts.decay)


@contextlib.contextmanager
def catch_signals():
    """SIGINT/SIGTERM are recorded (the loop then saves and stops at a step boundary); the caller's
    handlers come back afterwards, so the API never swallows a host program's Ctrl-C for good."""
    caught: list[int] = []
    saved = {}
    with contextlib.suppress(ValueError):  # not the main thread: no signals to catch
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _write(path: Path, write: Callable[[Path], object]) -> None:
    """A checkpoint write; a full disk or a failing file system is one line naming the file."""
    try:
        write(path)
    except Exception as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise LesrcnnError(f"cannot write {path}: {why}") from None


class Trainer:
    """Model, optimiser, EMA, RNG and step: what one training step changes and a checkpoint holds."""

    def __init__(self, opts: Options, model: LESRCNN, device: torch.device, rank: int = 0, world: int = 1,
                 log: Callable = print, val_sets: list[ValSet] = ()):
        self.opts, self.model, self.val_sets = opts, fuse_rb_for_training(model), val_sets
        self.device, self.rank, self.world, self.log, self.out = device, rank, world, log, Path(opts.out)
        self.opt = torch.optim.Adam(model.parameters(), lr=opts.lr, fused=device.type == "cuda")
        self.ema = copy.deepcopy(model).requires_grad_(False) if opts.ema else None
        self.rng = np.random.default_rng(opts.seed)
        self.step, self.step_log, self.best, self.elapsed_before, self.saved_step = 0, 0, -math.inf, 0.0, None
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(opts.scales()) > 1, broadcast_buffers=False) if world > 1 else model
        self.fwd = torch.compile(net) if opts.compile else net
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.precision)
        self.autocast = partial(torch.autocast, device.type, dtype=amp, enabled=amp is not None)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        self.loss_fn = F.mse_loss if opts.loss == "mse" else F.l1_loss
        self.part = slice(rank * opts.batch // world, (rank + 1) * opts.batch // world)
        self.loss_sum, self.last_loss, self.last_val = torch.zeros((), device=device), float("nan"), {}
        self.batch_now = self.val_kind = self.sampler = self.metrics = self.bar = None
        self.t_start = self.t_log = time.time()

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def train_step(self, s: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, loss, backward, clip, Adam, EMA: all queued on the device, nothing read back."""
        self.opt.param_groups[0]["lr"] = lr_at(self.opts, self.step, self.elapsed())  # the one group
        with self.autocast():
            loss = self.loss_fn(self.fwd(x, s).float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema:  # short runs: the average starts fast
            d = min(self.opts.ema, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - d)
        self.step += 1
        self.loss_sum += loss.detach()
        self.batch_now = (s, x, y)

    def report(self, val: dict | None) -> None:
        """The one host sync (mean loss since the last report, checked finite), metrics, a log line."""
        now, o, steps = time.time(), self.opts, self.step - self.step_log
        loss = (self.loss_sum / steps).item()
        if not math.isfinite(loss):
            raise self.stopped(f"loss became {loss} by step {self.step}")
        rate = steps / max(1e-9, now - self.t_log)
        self.loss_sum.zero_()
        self.last_loss, self.t_log, self.step_log = loss, now, self.step
        if self.rank:
            return
        rec = {"step": self.step, "loss": loss, "lr": lr_at(o, self.step - 1, self.elapsed()),
               "scale": self.batch_now[0], "time": round(self.elapsed(), 2), "steps_per_s": round(rate, 3)}
        print(json.dumps(rec | (val or {})), file=self.metrics, flush=True)
        left = (o.steps - self.step) / max(rate, 1e-9)
        if o.max_minutes:
            left = min(left, max(0.0, o.max_minutes * 60 - self.elapsed()))
        psnr = f" psnr {self.last_val['mean']:.2f}" if self.last_val else ""
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4g}", psnr=psnr[6:] or "-")
        else:
            self.log(f"step {self.step}/{o.steps} loss {loss:.4g}{psnr} {rate:.2f} steps/s "
                     f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}")

    def validate(self) -> dict:
        """PSNR of the weights and of their EMA; the better of the two becomes best.safetensors."""
        cands = [(k, m, validate(m, self.val_sets)) for k, m in (("raw", self.model), ("ema", self.ema)) if m]
        kind, model, val = max(cands, key=lambda c: c[2]["mean"])
        self.last_val, self.val_kind = val, kind
        if val["mean"] > self.best and self.good(model):
            self.best = val["mean"]
            self.save_weights("best", model, {"val_psnr": val, "weights": kind})
        return {"val" if k == "raw" else "val_ema": v for k, _, v in cands}

    @torch.no_grad()
    def good(self, model: LESRCNN) -> bool:
        """Finite weights (all scales') that give a finite loss on the last batch: no explosion."""
        s, x, y = self.batch_now
        with self.autocast():
            ok = torch.isfinite(self.loss_fn(model(x, s).float(), y))
        return bool(torch.stack([ok, *(torch.isfinite(p).all() for p in model.parameters())]).all())

    def stopped(self, why: str) -> NonFinite:
        kept = "no checkpoint: none was kept (lower --lr or add --warmup)" if self.saved_step is None else \
            f"the last good checkpoint is {self.out / 'last.state.pt'} (step {self.saved_step})"
        return NonFinite(f"{why}; stopped, {kept}")

    def save(self) -> None:
        """The checkpoint unit first (what --resume reads), then the weights files users take."""
        if self.rank or self.saved_step == self.step:
            return
        if not self.good(self.model):
            raise self.stopped(f"the update of step {self.step} made the weights or the loss non-finite")
        buf = io.BytesIO()
        torch.save({"format": 2, "step": self.step, "model": self.model.state_dict(),
                    "ema": self.ema.state_dict() if self.ema else None, "mean": self.model.mean,
                    "optimizer": self.opt.state_dict(), "rng": self.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "best": self.best, "elapsed": self.elapsed(),
                    "config": asdict(self.opts)}, buf)
        _write(self.out / "last.state.pt", lambda p: atomic_write_bytes(p, buf.getvalue()))
        self.saved_step = self.step
        self.save_weights("last", self.model)
        if self.ema:
            self.save_weights("ema", self.ema, {"weights": "ema"})

    def save_weights(self, name: str, model: LESRCNN, extra: dict | None = None) -> None:
        o = self.opts
        hw = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else \
            f"{cpu_name()}, {torch.get_num_threads()} threads"
        recipe = ("scale", "batch", "patch", "hr_patch", "lr", "schedule", "decay", "warmup", "loss", "clip",
                  "init", "init_weights", "rescale", "degradation", "ema", "variant", "precision", "seed")
        best = round(self.best, 4) if self.best > -math.inf else None
        meta = {"trained_by": f"lesrcnn {__version__} `lesrcnn train`", "steps": self.step,
                "data": [Path(d).name for d in o.data], "recipe": {k: getattr(o, k) for k in recipe},
                "hardware": f"{hw} x{self.world}", "seconds": round(self.elapsed(), 1),
                "torch": torch.__version__, "best_val_psnr": best}
        _write(self.out / f"{name}.safetensors", lambda p: W.save(model, p, meta | (extra or {})))

    def restore(self) -> None:
        """The run's checkpoint unit, checked: readable (weights included), same scale and variant."""
        path = self.out / "last.state.pt"
        try:  # an older format kept the weights apart, in last.safetensors: its state has no "model"
            st = torch.load(path, map_location="cpu", weights_only=True)
            step, weights = int(st["step"]), st["model"]
        except Exception as e:
            raise LesrcnnError(f"{path}: unreadable training state ({type(e).__name__}); start a new run "
                               f"with --init-weights {self.out / 'last.safetensors'}") from None
        old, o = st.get("config", {}), self.opts
        if old.get("scale") != o.scale or old.get("variant") != o.variant:
            raise LesrcnnError(f"cannot resume: {self.out} is a x{old.get('scale')} '{old.get('variant')}' "
                               f"run, not x{o.scale} '{o.variant}'")
        self.model.load_state_dict(weights)
        self.model.mean.copy_(st["mean"])
        self.opt.load_state_dict(st["optimizer"])
        if self.ema:
            self.ema.load_state_dict(st["ema"] or weights)
        self.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        self.step = self.saved_step = self.step_log = step
        self.best, self.elapsed_before = st["best"], st["elapsed"]
        self.log(f"resumed {self.out} at step {step}")
        if not self.rank:  # what a kill -9 may have left: temporaries (a live writer's are locked), and
            clean_stale_temps(self.out, 0)  # a last.safetensors older than the state, rewritten from it
            self.save_weights("last", self.model)


def loop(t: Trainer) -> str:
    """Train until the step count, the wall-time limit or a signal; returns why it stopped. The last
    step is always validated (with --val), logged and checked, so the final save is a good one."""
    o = t.opts
    reason = "done" if t.step >= o.steps else None
    with catch_signals() as caught:
        while reason is None:
            t.train_step(*t.sampler.batch(t.rng, o.batch, t.part))
            if t.step >= o.steps:
                reason = "done"
            elif o.max_minutes and t.elapsed() > o.max_minutes * 60:
                reason = "time limit"
            elif caught:
                reason = f"signal {caught[0]}"
            val = t.validate() if o.val and not t.rank and (t.step % o.val_every == 0 or reason) else None
            if val or reason or t.step % o.log_every == 0:
                t.report(val)
            t.bar.update(1)
            if t.step % o.save_every == 0:
                t.save()
    return reason


def setup(opts: Options, resume: bool, log: Callable | None) -> Trainer:
    """Cheap checks first (options, device, weights, run directory, --val), then the training data."""
    if not opts.data:
        raise LesrcnnError("no --data folder given")
    if not opts.out:
        raise LesrcnnError("no --out run directory given")
    device, rank, world, log = setup_context(opts, log)
    model, out = build_model(opts, device), Path(opts.out)
    if not rank:
        try:
            out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=out).close()
        except OSError as e:
            raise LesrcnnError(f"run directory {out} is not writable: {e.strerror}") from None
    if resume != (out / "last.state.pt").exists():
        raise LesrcnnError(f"nothing to resume in {out}: no last.state.pt" if resume else
                           f"{out} already holds a run; pass --resume to continue it or choose another --out")
    t = Trainer(opts, model, device, rank, world, log, load_val_sets(opts))
    if resume:
        t.restore()
    hrs, lrs = load_images(opts.data, opts.scales(), {s: p * s for s, p in opts.lr_patch().items()},
                           opts.degradation == "bicubic", log, opts.rescale_factors())
    t.sampler = PatchSampler(hrs, lrs, opts.lr_patch(), device)
    if not rank:
        resolved = {"lr_patch": opts.lr_patch(), "world_size": world, "code_version": __version__}
        atomic_write_text(out / "config.json", json.dumps(asdict(opts) | resolved, indent=2))
        metrics = out / "metrics.jsonl"
        if resume and metrics.exists():  # keep the steps up to the checkpoint; drop a line cut by a kill -9
            keep = [ln for ln in metrics.read_text().splitlines(keepends=True)
                    if (m := re.match(r'{"step": (\d+),', ln)) and int(m[1]) <= t.step and ln.endswith("\n")]
            atomic_write_text(metrics, "".join(keep))
        t.metrics = open(metrics, "a")
    t.bar = tqdm(total=opts.steps, initial=t.step, desc="train", dynamic_ncols=True, file=sys.stderr,
                 disable=True if rank else None)
    t.t_start = t.t_log = time.time()  # loading the data is not training time
    return t


def train(opts: Options, resume: bool = False, log: Callable | None = None) -> dict:
    """Set up, loop, save; returns a summary. An error after training steps saves them first
    (unless the weights went non-finite), and never masks the error."""
    t = setup(opts, resume, log)
    with t.bar, t.metrics or contextlib.nullcontext():
        try:
            reason = loop(t)
        except BaseException as e:
            if not isinstance(e, NonFinite) and t.step > (t.saved_step or 0):
                with contextlib.suppress(Exception):
                    t.save()
                    t.log(f"saved step {t.step} to {t.out / 'last.state.pt'} before stopping")
            raise
        finally:
            t.sampler.close()
    t.save()
    summary = {"step": t.step, "reason": reason, "loss": t.last_loss, "seconds": round(t.elapsed(), 1),
               "best_val": t.best if t.best > -math.inf else None, "out": str(t.out),
               "last_val": t.last_val, "last_val_weights": t.val_kind}
    if not t.rank:
        atomic_write_text(t.out / "summary.json", json.dumps(summary, indent=1))
    t.log(json.dumps(summary))
    if t.world > 1:
        torch.distributed.barrier()
    return summary
