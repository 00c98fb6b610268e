"""The ``lesrcnn`` command. Each subcommand: ``add_X(subparsers)`` + ``cmd_X(args) -> exit code``.

Every user error is a LesrcnnError (or a known OS/memory error): one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__
from .errors import LesrcnnError


def _scale(v: str) -> int:
    try:
        s = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {v!r}") from None
    if s not in (2, 3, 4):
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {s}")
    return s


# --- eval --------------------------------------------------------------------------------------

def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="PSNR/SSIM on benchmark folders with the paper's protocol")
    p.add_argument("--weights", help="checkpoint (ours or an official .pth); default: the embedded weights")
    p.add_argument("--data", action="append", required=True, help="benchmark folder (repeatable)")
    p.add_argument("--scale", "-s", type=_scale, action="append", help="2, 3 or 4 (repeatable; default 2)")
    p.add_argument("--quantize", choices=["truncate", "round"], default="truncate")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--output", "-o", help="also write the results to this file")
    p.add_argument("--bicubic", action="store_true", help="evaluate the bicubic baseline instead of a network")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(func=cmd_eval)


def cmd_eval(a) -> int:
    from tqdm import tqdm

    from . import weights as W
    from .data import find_dataset
    from .evaluate import evaluate, format_results
    from .upscale import pick_device, prepare

    scales = a.scale or [2]
    datasets = {(d, s): find_dataset(d, s) for s in scales for d in a.data}  # validate all folders first
    ck = None
    if not a.bicubic:
        ck = W.load(a.weights)
        for s in scales:
            ck.require_scale(s)
        model = prepare(ck.model, pick_device(a.device))
    results = []
    total = sum(len(ds.pairs) for ds in datasets.values())
    with tqdm(total=total, desc="eval", file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
        for (d, s), ds in datasets.items():
            method = "LESRCNN-S" if ck is not None and len(ck.scales) > 1 else "LESRCNN"
            results.append(evaluate(None if a.bicubic else model, ds, s, a.quantize, bar, method=method))
    text = format_results(results, a.format)
    print(text)
    if a.output:
        from .io import atomic_write_text
        atomic_write_text(a.output, text + "\n")
    return 0


# --- convert / info ----------------------------------------------------------------------------

def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert an official .pth checkpoint to our safetensors format")
    p.add_argument("src")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)


def cmd_convert(a) -> int:
    from pathlib import Path

    from . import weights as W

    out = Path(a.output)
    if out.exists() and not a.overwrite:
        raise LesrcnnError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == Path(a.src).resolve():
        raise LesrcnnError("refusing to overwrite the input checkpoint")
    ck = W.load(a.src)
    W.save(ck.model, out, {"converted_from": Path(a.src).name, **({"source_format": ck.metadata.get("format")}
                                                                  if ck.metadata.get("format") else {})})
    print(f"wrote {out} (x{'/x'.join(map(str, ck.scales))}, {ck.num_parameters:,} parameters)")
    return 0


def add_info(sub) -> None:
    p = sub.add_parser("info", help="what a checkpoint holds: architecture, scales, parameters")
    p.add_argument("file", nargs="?", help="checkpoint; default: the embedded weights")
    p.add_argument("--json", action="store_true")
    p.add_argument("--flops", action="store_true", help="also count MACs/FLOPs per block")
    p.add_argument("--size", default="256x256", help="LR input size HxW for --flops (default 256x256)")
    p.set_defaults(func=cmd_info)


def cmd_info(a) -> int:
    from . import weights as W

    ck = W.load(a.file)
    d = W.describe(ck)
    if a.flops:
        from .complexity import complexity_report
        d["complexity"] = complexity_report(ck, a.size)
    if a.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"file        {d['source']}")
    print(f"network     {d['architecture']}, variant {d['variant']}")
    print(f"scales      x{', x'.join(map(str, d['scales']))}")
    print(f"parameters  {d['parameters']:,} (mean shift excluded)")
    print(f"mean        {', '.join(f'{m:.4f}' for m in d['mean'])}")
    for k, v in d["metadata"].items():
        print(f"{k:<11} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    if a.flops:
        from .complexity import format_complexity
        print(format_complexity(d["complexity"]))
    return 0


# --- train -------------------------------------------------------------------------------------

def add_train(sub) -> None:
    p = sub.add_parser("train", help="train LESRCNN (the paper's recipe by default); torchrun for DDP")
    p.add_argument("--config", help="TOML/YAML/JSON file with the same keys; flags override it")
    p.add_argument("--data", action="append")
    p.add_argument("--scale", choices=["2", "3", "4", "multi"])
    p.add_argument("--out")
    for name, typ in (("steps", int), ("batch", int), ("patch", int), ("hr-patch", int), ("lr", float),
                      ("decay", int), ("warmup", int), ("clip", float), ("val-every", int), ("val-max-images", int),
                      ("save-every", int), ("seed", int), ("threads", int), ("max-minutes", float)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--schedule", choices=["step", "cosine"])
    p.add_argument("--loss", choices=["mse", "l1"])
    p.add_argument("--variant", choices=["full", "sn", "hn", "ieeb", "ieeb+rb"])
    p.add_argument("--init", choices=["random", "interp"])
    p.add_argument("--val", action="append")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from dataclasses import fields

    from .train import Config, load_config, run

    raw = load_config(a.config) if a.config else {}
    for f in fields(Config):
        v = getattr(a, f.name, None)
        if v is not None:
            raw[f.name] = v
    if "scale" in raw:
        raw["scale"] = str(raw["scale"])
    cfg = Config(**raw)
    run(cfg, resume=a.resume)
    return 0


# --- plumbing ----------------------------------------------------------------------------------

SUBCOMMANDS = [add_eval, add_convert, add_info, add_train]


def _optional(module: str, fn: str):
    """Subcommands that live in their own modules register here (upscale, export, bench)."""
    import importlib
    try:
        return getattr(importlib.import_module(f"lesrcnn.{module}"), fn)
    except (ImportError, AttributeError):
        return None


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"lesrcnn: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lesrcnn", description="LESRCNN super-resolution (Tian et al., KBS 2020)")
    p.add_argument("--version", action="version", version=f"lesrcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    extra = [_optional("upscale_cli", "add_upscale"), _optional("export", "add_export"), _optional("bench", "add_bench")]
    for add in [*SUBCOMMANDS[:1], *[e for e in extra[:1] if e], *SUBCOMMANDS[1:], *[e for e in extra[1:] if e]]:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LesrcnnError as e:
        print(f"lesrcnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lesrcnn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("lesrcnn: error: out of memory; use a smaller --tile", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"lesrcnn: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lesrcnn: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "out of memory" in msg.lower() or "can't allocate memory" in msg.lower():
            print("lesrcnn: error: out of memory; use a smaller --tile", file=sys.stderr)
        else:
            print(f"lesrcnn: error: {msg[:300]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
