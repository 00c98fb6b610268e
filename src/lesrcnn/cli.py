"""The ``lesrcnn`` command: one explicit registry of subcommands, each defined in its own module.

Only the command being run is imported: ``lesrcnn --help`` is instant and lists every command,
and a missing optional extra fails when used, naming it. Every error is one line on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys

from . import __version__
from .errors import LesrcnnError, Terminated, first_line, one_line, sigterm_as_interrupt

#: name -> (module, summary). The module's ``add_parser(sub)`` (``add_<name>`` where it holds two
#: commands) sets ``func``: a function of the parsed arguments returning the exit status.
COMMANDS: dict[str, tuple[str, str]] = {
    "upscale": ("lesrcnn.upscale_cli", "upscale images (files, folders, globs, stdin) x2/x3/x4"),
    "eval": ("lesrcnn.evaluate", "PSNR/SSIM on benchmark folders with the paper's protocol"),
    "info": ("lesrcnn.weights_cli", "what a checkpoint holds: network, scales, parameters, provenance"),
    "convert": ("lesrcnn.weights_cli", "convert an official .pth checkpoint to our safetensors format"),
    "export": ("lesrcnn.export", "export to ONNX (fp32, fp16 or INT8), verified with ONNX Runtime"),
    "bench": ("lesrcnn.bench", "inference speed on this machine, per backend"),
    "train": ("lesrcnn.train", "train LESRCNN (the paper's recipe by default); torchrun for DDP"),
    "serve": ("lesrcnn.serve", "HTTP upscaling service with a web page (needs lesrcnn[serve])"),
}

#: Third-party modules that an optional extra installs: import name -> extra.
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "openvino": "openvino",
          "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
          "starlette": "serve", "av": "video", "ray": "ray", "spandrel": "spandrel",
          "torchvision": "spandrel"}


def number(low: float, kind: type = int, strict: bool = False):
    """An argparse type: an integer (1e8 is one too) or, with ``kind=float``, a finite number; at
    least ``low`` (above it with ``strict``)."""
    def parse(v: str):
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or (kind is int and not x.is_integer()):
            raise argparse.ArgumentTypeError(f"{'an integer' if kind is int else 'a number'} expected, got {v!r}")
        if x < low or (strict and x == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {v}")
        return kind(x)
    return parse


def device_arg(v: str) -> str:
    """auto, cpu, cuda, cuda:N, mps, or a GPU index N as the ncnn upscalers take it (-1: the CPU)."""
    s = v.strip().lower()
    if s.lstrip("-").isdigit():
        return "cpu" if int(s) < 0 else f"cuda:{int(s)}"
    if s in ("auto", "cpu", "cuda", "mps") or (s.startswith("cuda:") and s[5:].isdigit()):
        return s
    raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda, cuda:N, N (a GPU index) or mps, "
                                     f"got {v!r}")


def threads_arg(v: str) -> int:
    """``-j N``, or the ncnn upscalers' ``-j load:proc:save`` (the proc count is taken)."""
    parts = v.split(":")
    return number(1)(parts[1] if len(parts) == 3 else parts[0])


def add_engine_options(p: argparse.ArgumentParser, device: str = "auto") -> None:
    """What runs the network, as `upscale` and `eval` take it: weights, device, precision, backend, threads."""
    add = p.add_argument
    add("--weights", metavar="NAME|FILE", help="lesrcnn-s or real (embedded), our .safetensors file or an "
        "official .pth (converted on the fly); default: the embedded lesrcnn-s")
    add("-g", "--device", type=device_arg, default=device,
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps, or a GPU index N (-1: CPU)")
    add("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
        help="fp16/bf16 on CUDA only (tiles that overflow are redone in fp32); int8 on the CPU (OpenVINO "
        "or ONNX Runtime; quantised once per weights, cached)")
    add("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"],
        help="auto: the fastest installed for the device (`lesrcnn bench` says which); onnx and openvino "
        "need `pip install lesrcnn[onnx]` / `lesrcnn[openvino]`")
    add("-j", "--threads", type=threads_arg, metavar="N",
        help="CPU threads (N, or ncnn's load:proc:save); default: torch's choice")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, unless its help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default in ("", argparse.SUPPRESS) or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, pointing to the command's own help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"lesrcnn: error: {one_line(message)} (see `{self.prog} --help`)\n")


def _adder(name: str):
    module = COMMANDS[name][0]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise  # a dependency: main() names the extra that installs it
        raise LesrcnnError(f"`lesrcnn {name}` is not part of this installation ({module} is "
                           f"missing)") from None
    return getattr(mod, f"add_{name}", None) or mod.add_parser


def _command(argv: list[str]) -> str | None:
    tok = next((t for t in argv if t == "--" or not t.startswith("-")), None)
    return tok if tok in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser of ``command`` (the others as one-line entries for ``lesrcnn --help``)."""
    p = _Parser(prog="lesrcnn", description="LESRCNN super-resolution (Tian et al., KBS 2020)",
                epilog="`lesrcnn COMMAND --help` shows a command's options and their defaults.")
    p.add_argument("--version", action="version", version=f"lesrcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, (_, summary) in COMMANDS.items():
        if name == command:
            _adder(name)(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    p.set_defaults(commands=sub)
    return p


def _run(argv: list[str]) -> int:
    name = _command(argv)
    parser = build_parser(name)
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.commands.choices.get(name, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    status = int(args.func(args) or 0)
    sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
    return status


def _error(message: object) -> int:
    print(f"lesrcnn: error: {one_line(message)}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    """After a broken pipe: later writes (and the flush at exit) must not raise again."""
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        with sigterm_as_interrupt():
            return _run(argv)
    except LesrcnnError as e:
        return _error(e)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): `with` blocks have removed temp files
        print(f"lesrcnn: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:
        _silence_stdout()
        if _command(argv) == "upscale":  # image bytes on stdout: a short write is lost data
            return _error("the output pipe was closed early; the output is incomplete")
        return 141  # text (`lesrcnn info | head`): the reader had enough, as with SIGPIPE in Unix tools
    except ModuleNotFoundError as e:
        top = (e.name or "?").split(".")[0]
        if top in EXTRAS:
            return _error(f"this needs an optional extra: pip install 'lesrcnn[{EXTRAS[top]}]' ({top} is not "
                          f"installed)")
        return _error(f"the Python module {e.name} is missing ({first_line(e)}); reinstall lesrcnn")
    except OSError as e:
        return _error(f"{e.strerror}: {e.filename}" if e.strerror and e.filename else first_line(e))
    except (MemoryError, RuntimeError) as e:
        low = first_line(e).lower()
        oom = isinstance(e, MemoryError) or "out of memory" in low or "can't allocate" in low
        return _error("out of memory; use a smaller --tile" if oom else first_line(e))
    except Exception as e:  # a bug: still one line (LESRCNN_DEBUG=1 shows the traceback)
        if os.environ.get("LESRCNN_DEBUG"):
            raise
        return _error(f"unexpected {type(e).__name__}: {first_line(e)} (please report; LESRCNN_DEBUG=1 "
                      f"shows the traceback)")
