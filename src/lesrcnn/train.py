"""``lesrcnn train``: the paper's recipe by default, one CPU to many GPUs (torchrun + DDP), resumable.
:class:`Options` declares each option once: flags, config keys and checks come from it; the run
itself is :mod:`lesrcnn.train_loop`."""
from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

from .cli import device_arg
from .errors import LesrcnnError, first_line


def _opt(default, help: str, choices=None, low: int | None = None):
    """An option: default, help, choices and lower bound (1: positive, 0: >= 0)."""
    default_kw = {"default_factory": list} if default == [] else {"default": default}
    return field(**default_kw, metadata={"help": help, "choices": choices, "low": low})


@dataclass
class Options:
    data: list[str] = _opt([], "training folder of HR images (repeatable); HR/ inside it is used if present")
    out: str = _opt("", "run directory (config, metrics, checkpoints)")
    scale: str = _opt("2", "upscaling factor; multi: the multi-scale LESRCNN-S", ["2", "3", "4", "multi"])
    steps: int = _opt(600_000, "training steps (the paper: 600,000)", low=1)
    batch: int = _opt(64, "patches per step (all processes together)", low=1)
    patch: int = _opt(64, "LR patch side (the paper's 64)", low=1)
    hr_patch: int = _opt(0, "if > 0, one HR patch side for every scale (LR side = hr_patch // scale)", low=0)
    lr: float = _opt(1e-4, "peak learning rate (Adam)", low=1)
    schedule: str = _opt("step", "step: halve every --decay steps; cosine: to zero", ["step", "cosine"])
    decay: int = _opt(400_000, "steps between halvings of the step schedule", low=1)
    warmup: int = _opt(0, "linear warm-up steps", low=0)
    loss: str = _opt("mse", "training loss", ["mse", "l1"])
    clip: float = _opt(10.0, "gradient-norm clipping", low=1)
    variant: str = _opt("full", "network variant: full, or one of the paper's ablations in model.VARIANTS")
    init: str = _opt("random", "start from random weights or a cubic interpolator", ["random", "interp"])
    init_weights: str = _opt("", "start from one of our safetensors checkpoints (never an official .pth)")
    rescale: str = _opt("", "also train on every image downscaled by these factors, e.g. 0.9,0.8,0.7,0.6 "
                        "(MATLAB bicubic): more, and sharper, training images")
    degradation: str = _opt("bicubic", "LR: MATLAB bicubic, or random blur/noise/JPEG", ["bicubic", "real"])
    ema: float = _opt(0.0, "exponential moving average of the weights (e.g. 0.999); 0: off")
    val: list[str] = _opt([], "validation folder (repeatable); best.safetensors keeps the best PSNR")
    val_every: int = _opt(1000, "steps between validations", low=1)
    save_every: int = _opt(500, "steps between checkpoints", low=1)
    log_every: int = _opt(100, "steps between log lines (and finiteness checks)", low=1)
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps (torchrun: the local rank's GPU)")
    precision: str = _opt("fp32", "bf16/fp16: autocast mixed precision", ["fp32", "bf16", "fp16"])
    compile: bool = _opt(False, "torch.compile the network")
    seed: int = _opt(0, "random seed (weights, patches)")
    threads: int = _opt(0, "CPU threads (0: torch's default)", low=0)
    max_minutes: float = _opt(0.0, "stop and save after this wall time; cosine ends there (0: off)", low=0)

    def scales(self) -> tuple[int, ...]:
        return (2, 3, 4) if self.scale == "multi" else (int(self.scale),)

    def rescale_factors(self) -> tuple[float, ...]:
        return _factors(self.rescale)

    def lr_patch(self) -> dict[int, int]:
        return {s: (max(8, self.hr_patch // s) if self.hr_patch else self.patch) for s in self.scales()}


_TYPES = get_type_hints(Options)
_FIELDS = {f.name: f for f in fields(Options)}
_KINDS = {bool: "true or false", str: "a string", int: "an integer", float: "a number"}


def _factors(text: str, name: str = "--rescale") -> tuple[float, ...]:
    try:
        factors = tuple(float(x) for x in text.split(",")) if text.strip() else ()
    except ValueError:
        factors = (0.0,)
    if not all(0 < f < 1 for f in factors):
        raise LesrcnnError(f"{name} takes factors between 0 and 1, comma-separated (e.g. 0.9,0.8), got {text!r}")
    return factors


def _checked(key: str, v, where: str):
    """``v`` as the option's type, or a one-line error naming the key (a string is never a list)."""
    typ, meta = _TYPES[key], _FIELDS[key].metadata
    flag = f"--{key.replace('_', '-')}"
    name = f"{where}: {key}" if where else flag
    if typ == list[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise LesrcnnError(f"{name} must be a list of folder names, e.g. {key} = [\"dir\"], got {v!r}")
        return list(v)
    if meta["choices"] and type(v) is int and str(v) in meta["choices"]:
        v = str(v)  # scale = 3 in a TOML file
    if type(v) not in ((int, float) if typ is float else (typ,)) or (typ is float and not math.isfinite(v)):
        raise LesrcnnError(f"{name} must be {_KINDS[typ]}, got {v!r}")
    if meta["choices"] and v not in meta["choices"]:
        raise LesrcnnError(f"{name} must be one of {', '.join(meta['choices'])}, got {v!r}")
    if meta["low"] is not None and (v < 0 or (meta["low"] and v == 0)):
        raise LesrcnnError(f"{flag} must be {'positive' if meta['low'] else '>= 0'}")
    if key == "rescale":
        _factors(v, name)
    if key == "ema" and not 0 <= v < 1:
        raise LesrcnnError("--ema must be in [0, 1), e.g. 0.999")
    return float(v) if typ is float else v


def _checked_keys(raw: dict, where: str = "") -> dict:
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    if unknown := sorted(set(raw) - set(_FIELDS)):
        raise LesrcnnError(f"{where or 'options'}: unknown key(s): {', '.join(unknown)}")
    return {k: _checked(k, v, where) for k, v in raw.items()}


def make_options(raw: dict, where: str = "") -> Options:
    """Options from a dict of keys (a config file's or flags'), checked against the schema."""
    return Options(**_checked_keys(raw, where))  # --variant: the model checks it before anything is written


def load_config(path: str) -> dict:
    """The keys of a TOML, YAML or JSON file, checked against the schema (flags come on top)."""
    p = Path(path)
    if not p.is_file():
        raise LesrcnnError(f"config file not found: {p}")
    module = {".toml": "tomllib", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(p.suffix.lower())
    if module is None:
        raise LesrcnnError(f"config must be .toml, .yaml or .json: {p}")
    try:
        parser = importlib.import_module(module)
    except ImportError:
        raise LesrcnnError("YAML configs need PyYAML (pip install pyyaml); TOML works without it") from None
    try:
        raw = (getattr(parser, "safe_load", None) or parser.loads)(p.read_text())
    except Exception as e:  # parse and decoding errors of any of the three formats
        raise LesrcnnError(f"cannot parse {p}: {first_line(e)}") from None
    if not isinstance(raw, dict | None):
        raise LesrcnnError(f"{p}: expected a table of keys")
    return _checked_keys(raw or {}, str(p))


def add_parser(sub) -> argparse.ArgumentParser:
    """``train``'s flags, generated from :class:`Options` (same names as the config keys)."""
    p = sub.add_parser("train", help="train LESRCNN (the paper's recipe by default); torchrun for DDP",
                       description="Train LESRCNN. Every flag is also a config-file key (flags win).")
    p.add_argument("--config", help="TOML/YAML/JSON file with the keys below (default: none)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly (default: off)")
    actions = {bool: {"action": "store_true"}, list[str]: {"action": "append", "metavar": "DIR"}}
    for f in fields(Options):
        typ, flag, device = _TYPES[f.name], f"--{f.name.replace('_', '-')}", f.name == "device"
        d = f.default_factory() if f.default is MISSING else f.default
        helptext = f"{f.metadata['help']} (default: {d if d not in ('', []) else 'none'})".replace("%", "%%")
        kind = actions.get(typ) or {"type": device_arg if device else typ, "choices": f.metadata["choices"]}
        names = (flag, "-g") if device else (flag,)  # -g: as the ncnn upscalers take it
        p.add_argument(*names, default=None, help=helptext, **kind)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    raw = load_config(args.config) if args.config else {}
    raw |= {k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None}
    run(make_options(raw), resume=args.resume)
    return 0


def run(opts: Options, resume: bool = False, log=None) -> dict:
    """Train; returns a summary. Raises LesrcnnError on bad input."""
    from .train_loop import train
    return train(opts, resume, log)
