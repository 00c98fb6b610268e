"""``lesrcnn upscale``: files, folders, globs or stdin in; a file, a mirrored folder or stdout out."""
from __future__ import annotations

import argparse
import errno
import io
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import LesrcnnError, one_line

DESCRIPTION = """\
Upscale images x2, x3 or x4 with LESRCNN.

INPUT is an image file, a folder (searched recursively for png/jpg/webp/tif/bmp/ppm files),
a quoted glob pattern ('photos/**/*.jpg') or - for stdin. OUT is a file when there is one
input image and OUT ends in an image extension (or is - for stdout); otherwise a folder that
mirrors the input tree (several inputs: one sub-folder per input folder).

Images keep what they are: grayscale stays grayscale (computed as R=G=B, returned as BT.601
luma), alpha is upscaled bicubically and kept, 16-bit PNG/TIFF stay 16-bit, EXIF orientation is
applied, ICC profile, EXIF and DPI (scaled) are carried over; palette images become RGB(A), CMYK
becomes RGB (with a warning).

8-bit output is rounded (--quantize round). --quantize truncate is the released code's
conversion, which `lesrcnn eval` keeps for the paper's numbers (0.02-0.07 dB lower).

Outputs are written atomically and never replace an existing file (an input above all)
unless --overwrite is given; two runs writing one folder never replace each other's files.

Exit status: 0 all written; 1 some images failed (each reported on one line, the others
written); 2 nothing done (bad option, missing weights, unreadable single input...);
130/143 interrupted (Ctrl-C / SIGTERM; no partial file is left)."""

EPILOG = """\
examples:
  lesrcnn upscale photo.jpg -o photo_x2.png -s 2
  lesrcnn upscale scans/ -o scans_x4/ -s 4 --format png
  lesrcnn upscale 'shots/**/*.png' -o out/ --suffix _x2 --tile 256
  cat in.png | lesrcnn upscale - -o - --format png > out.png
  lesrcnn upscale -i photo.jpg -o out.png -s 4 -t 200 -x -g 0   (Real-ESRGAN / ncnn spellings)"""

#: Extensions of image formats that can be read (or are known) but not written: `-o out.gif`
#: is a mistake, not a folder name.
_NOT_WRITABLE = frozenset({".gif", ".ico", ".icns", ".jp2", ".j2k", ".jpx", ".heic", ".heif", ".avif", ".jxl",
                           ".svg", ".psd", ".exr", ".hdr", ".dng", ".raw", ".cr2", ".nef", ".arw", ".tga",
                           ".pcx", ".dds", ".eps", ".pdf", ".xbm", ".xpm", ".apng", ".ppm", ".pgm", ".pnm",
                           ".pbm", ".jpe", ".jfif", ".im", ".msp", ".sgi", ".qoi", ".blp", ".ftex"})


def _int_at_least(lo: int, what: str):
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            try:
                f = float(v)  # 1e8, 2.5e7
            except ValueError:
                f = math.nan
            if not f.is_integer():
                raise argparse.ArgumentTypeError(f"{what} must be an integer, got {v!r}") from None
            n = int(f)
        if n < lo:
            raise argparse.ArgumentTypeError(f"{what} must be >= {lo}, got {n}")
        return n
    return parse


def _threads(v: str) -> int:
    """``-j N``, or the ncnn upscalers' ``-j load:proc:save`` (the proc count is taken)."""
    parts = v.split(":")
    pick = parts[1] if len(parts) == 3 else parts[0]
    return _int_at_least(1, "--threads")(pick)


def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import device_arg

    p = sub.add_parser("upscale", help="upscale images (files, folders, globs, stdin) x2/x3/x4",
                       description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders, quoted globs, or - for stdin")
    p.add_argument("-i", "--input", action="append", metavar="INPUT", dest="more_inputs",
                   help="an INPUT given as an option (repeatable), as Real-ESRGAN and the ncnn upscalers take it")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, folder, or - for stdout")
    p.add_argument("-s", "--scale", type=int, choices=(2, 3, 4), default=2, help="upscaling factor")
    p.add_argument("--weights", metavar="NAME|FILE",
                   help="our .safetensors file or an official .pth (converted on the fly); "
                        "default: the embedded weights for the scale")
    p.add_argument("-g", "--device", type=device_arg, default="auto",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps, or a GPU index N (-1: CPU)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
                   help="fp16/bf16 on CUDA only; tiles that overflow are redone in fp32; int8 on the CPU "
                        "(OpenVINO or ONNX Runtime; quantised once per weights, cached) (default fp32)")
    p.add_argument("--fp32", action="store_const", const="fp32", dest="precision",
                   help="same as --precision fp32 (the Real-ESRGAN flag)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"],
                   help="auto: the fastest installed for the device (`lesrcnn bench` says which); onnx needs "
                        "`pip install lesrcnn[onnx]`, openvino `pip install lesrcnn[openvino]` (default auto)")
    p.add_argument("-t", "--tile", type=_int_at_least(0, "--tile"), metavar="N",
                   help="LR tile side in pixels; 0: no tiling; default: chosen from free memory")
    p.add_argument("--tile-overlap", type=_int_at_least(0, "--tile-overlap"), metavar="N",
                   help="LR context around each tile (default: receptive margin + 2, so tiled == untiled)")
    p.add_argument("--batch", type=_int_at_least(1, "--batch"), metavar="N",
                   help="tiles per forward pass (default: from free memory)")
    p.add_argument("-x", "--self-ensemble", action="store_true",
                   help="average the 8 flips/rotations (x8 slower, slightly better; ncnn's TTA mode)")
    p.add_argument("-f", "--format", "--ext", default="same", metavar="FMT",
                   choices=["same", "auto", "png", "jpg", "webp", "tiff", "bmp"],
                   help="output format: png, jpg, webp, tiff, bmp; same (or auto): the output file's extension, "
                        "or for folders the input's format (default same)")
    p.add_argument("--quality", type=int, metavar="Q", help="JPEG/WebP quality 1-100 (default 95; WebP 100 = lossless)")
    p.add_argument("--quantize", default="round", choices=["round", "truncate"],
                   help="float -> 8-bit conversion; truncate is the released code's (what `lesrcnn eval` scores)")
    p.add_argument("-j", "--threads", type=_threads, metavar="N",
                   help="CPU threads (N, or ncnn's load:proc:save); default: torch's choice")
    p.add_argument("--suffix", default="", metavar="TEXT", help="appended to output file names in a folder, e.g. _x2")
    p.add_argument("--glob", metavar="PATTERN", help="only files of input folders matching this pattern, e.g. '*.jpg'")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (and allow OUT == INPUT)")
    p.add_argument("--skip-existing", action="store_true", help="skip images whose output already exists")
    p.add_argument("--max-pixels", type=_int_at_least(0, "--max-pixels"), metavar="N",
                   help="refuse inputs above N pixels (decompression bombs; default 100000000; 0: no limit)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary (errors still shown)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",  # lesrcnn.ray (extra `ray`)
                   help="run on Ray (a local instance, or the cluster at ADDRESS, e.g. auto); existing outputs "
                        "are skipped unless --overwrite, so a rerun resumes")
    from .video import add_video_arguments
    add_video_arguments(p)  # --codec --crf --preset --pix-fmt --resume --segment-seconds (video.py)
    p.set_defaults(func=cmd_upscale)
    return p


# --- planning: which file goes where ------------------------------------------------------------

@dataclass
class Job:
    src: Path | None  # None: stdin
    dst: Path | None  # None: stdout
    fmt: str | None  # Pillow format name; None: the input's (known once read)
    label: str


def _has_magic(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _files_under(root: Path, exclude: Path | None = None, max_depth: int | None = None) -> list[Path]:
    """Every non-hidden file below ``root``, following directory symlinks but entering each real
    directory (st_dev, st_ino) once, so symlink loops end."""
    seen: set[tuple[int, int]] = set()
    skip = _file_keys(exclude) if exclude is not None else set()
    found: list[Path] = []

    def visit(d: Path, depth: int) -> None:
        try:
            st = d.stat()
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            _write(f"lesrcnn: warning: {one_line(d)}: cannot list the folder ({e.strerror or e})")
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        for e in entries:
            if e.name.startswith("."):
                continue
            p = d / e.name
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                if _regular_or_broken(e):
                    found.append(p)
            elif (max_depth is None or depth < max_depth) and not (skip and _file_keys(p) & skip):
                visit(p, depth + 1)

    visit(root, 0)
    return found


def _regular_or_broken(e: os.DirEntry) -> bool:
    """Regular files (through symlinks), and symlinks that resolve to nothing (they fail alone,
    with their reason); never FIFOs or devices, which would block or never end."""
    try:
        return e.is_file() or (e.is_symlink() and not os.path.exists(e.path))
    except OSError:
        return True


def _glob_regex(parts: tuple[str, ...]) -> re.Pattern:
    """A glob (``*``, ``?``, ``[...]``, ``**`` for any depth) as a regex on POSIX relative paths."""
    rx = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            rx.append(".*" if last else "(?:[^/]+/)*")
            continue
        j, out = 0, []
        while j < len(part):
            c = part[j]
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[" and _class_end(part, j) > 0:
                k = _class_end(part, j)
                body, neg = part[j + 1:k], part[j + 1] == "!"
                body = re.sub(r"([\\&~|\[\]^])", r"\\\1", body[1:] if neg else body)  # literal in a class
                out.append("[" + ("^" if neg else "") + body + "]")
                j = k
            else:
                out.append(re.escape(c))
            j += 1
        rx.append("".join(out) + ("" if last else "/"))
    return re.compile("".join(rx) + r"\Z", re.DOTALL)


def _class_end(part: str, j: int) -> int:
    """Index of the ``]`` closing the character class opened at ``part[j]`` (-1: none, a literal [)."""
    k = j + 1
    if part[k:k + 1] == "!":
        k += 1
    if part[k:k + 1] == "]":
        k += 1
    return part.find("]", k)


def _glob_base(pattern: str) -> Path:
    base = []
    for part in Path(pattern).parts:
        if _has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def input_files(spec: str, pattern: str | None = None, exclude: Path | None = None) -> tuple[Path, list[Path]]:
    """(base, every non-hidden file) of a folder or quoted glob INPUT, each real folder walked once
    (symlink loops end); ``pattern`` filters a folder's files by name or relative path. The one
    walker for every kind of input (images here, videos in :mod:`lesrcnn.video`)."""
    import fnmatch

    p = Path(spec)
    if p.is_dir():
        return p, [f for f in _files_under(p, exclude) if not pattern or fnmatch.fnmatch(f.name, pattern) or
                   fnmatch.fnmatch(f.relative_to(p).as_posix(), pattern)]
    base = _glob_base(spec)
    parts = Path(spec).parts[len(base.parts):]
    rx = _glob_regex(parts)
    files = _files_under(base, exclude, None if "**" in parts else len(parts) - 1) if base.is_dir() else []
    return base, [f for f in files if rx.match(f.relative_to(base).as_posix())]


def _images(spec: str, pattern: str | None, exclude: Path | None) -> tuple[Path, list[Path]]:
    from .io import READ_EXTS

    base, files = input_files(spec, pattern, exclude)
    return base, [f for f in files if f.suffix.lower() in READ_EXTS]


def _sources(inputs: list[str], pattern: str | None, exclude: Path | None) -> list[tuple[Path, Path, bool]]:
    """(file, path relative to its input root, was named explicitly) for every INPUT."""
    several = len(inputs) > 1
    out: list[tuple[Path, Path, bool]] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_file():
            out.append((p, Path(p.name), True))
        elif p.is_dir():
            files = _images(spec, pattern, exclude)[1]
            if not files:
                raise LesrcnnError(f"no images found in {p}" + (f" matching {pattern!r}" if pattern else ""))
            root = Path(Path(os.path.realpath(p)).name) if several else Path()
            out += [(f, root / f.relative_to(p), False) for f in files]
        elif _has_magic(spec):
            base, files = _images(spec, None, exclude)
            if not files:
                raise LesrcnnError(f"no images match {spec}")
            out += [(f, f.relative_to(base), False) for f in files]
        elif os.path.lexists(p):
            raise LesrcnnError(f"{p}: {_why_unreadable(p)}")
        else:
            raise LesrcnnError(f"{p}: no such file or folder")
    return out


def _why_unreadable(p: Path) -> str:
    try:
        os.stat(p)
    except OSError as e:
        return e.strerror or "cannot be read"
    return "not a file or folder"


def _file_keys(p: Path | None) -> set:
    """Every identity of a path: lexical absolute form (``new/../a.png`` is ``a.png`` even while
    ``new`` does not exist), resolved form, and (device, inode) when it exists (hard links)."""
    if p is None:
        return set()
    lexical = os.path.normpath(os.path.abspath(p))
    keys: set = {lexical, os.path.realpath(p), os.path.realpath(lexical)}
    try:
        st = os.stat(p)
        keys.add((st.st_dev, st.st_ino))
    except (OSError, ValueError):
        pass
    return keys


def _output_path(out: str) -> Path:
    """OUT as the file system will see it once missing folders exist: ``new/../x`` is ``x``."""
    p = Path(out)
    return p if os.path.lexists(p.parent) else Path(os.path.normpath(out))


def _check_extension(outp: Path) -> None:
    if outp.suffix.lower() in _NOT_WRITABLE and not outp.is_dir():
        raise LesrcnnError(f"{outp}: cannot write {outp.suffix} files; name a .png, .jpg, .webp, .tif or .bmp file, "
                           f"or a folder")


def plan(a) -> list[Job]:
    from .io import EXTENSION, FORMATS, format_for_path, writable_format

    fmt = None if a.format in ("same", "auto") else FORMATS[a.format]
    if "-" in a.inputs:
        if len(a.inputs) > 1:
            raise LesrcnnError("- (stdin) must be the only INPUT")
        if a.output == "-":
            return [Job(None, None, fmt, "<stdin>")]
        if format_for_path(a.output) is None or Path(a.output).is_dir():
            raise LesrcnnError("with - (stdin) as INPUT, -o must be an image file name (.png, .jpg, .webp, .tif, "
                               ".bmp) or - (stdout)")
        return [_file_job(None, _output_path(a.output), fmt, a, "<stdin>")]
    outp = None if a.output == "-" else _output_path(a.output)
    sources = _sources(a.inputs, a.glob, outp if outp is not None and outp.is_dir() else None)
    single = len(sources) == 1 and sources[0][2]
    if outp is None:
        if not single:
            raise LesrcnnError("-o - (stdout) takes exactly one input image")
        return [Job(sources[0][0], None, fmt or writable_format(format_for_path(sources[0][0])), str(sources[0][0]))]
    _check_extension(outp)
    if single and not outp.is_dir() and format_for_path(outp) is not None:
        return [_file_job(sources[0][0], outp, fmt, a, str(sources[0][0]))]
    if not single and not outp.is_dir() and format_for_path(outp) is not None:
        raise LesrcnnError(f"{len(sources)} input images need -o to be a folder, not {outp.name}")
    if os.path.lexists(outp) and not outp.is_dir():
        raise LesrcnnError(f"{outp} is a file; with {'several inputs' if not single else 'this output name'} "
                           f"-o must be a folder (or a file name ending in .png/.jpg/.webp/.tif/.bmp)")
    jobs = []
    for src, rel, _ in sources:
        f = fmt or writable_format(format_for_path(src))
        ext = src.suffix if format_for_path(src) == f else EXTENSION[f]  # keep .jpeg/.tiff spellings
        jobs.append(Job(src, outp / rel.with_name(f"{rel.stem}{a.suffix}{ext}"), f, str(src)))
    return jobs


def _file_job(src: Path | None, dst: Path, fmt: str | None, a, label: str) -> Job:
    from .io import format_for_path

    by_ext = format_for_path(dst)
    if by_ext is None:
        raise LesrcnnError(f"{dst}: unknown image extension; use .png, .jpg, .webp, .tif or .bmp, or a folder")
    if fmt is not None and fmt != by_ext:
        raise LesrcnnError(f"--format {a.format} conflicts with the output name {dst.name}")
    return Job(src, dst, by_ext, label)


def _exists(p: Path) -> bool:
    return os.path.lexists(p) or os.path.lexists(os.path.normpath(os.path.abspath(p)))


def check_jobs(jobs: list[Job], overwrite: bool, skip_existing: bool) -> tuple[list[Job], int]:
    """Refuse collisions, outputs that are inputs, and existing outputs (unless allowed);
    returns (jobs to run, skipped)."""
    inputs: dict = {}
    for j in jobs:
        for k in _file_keys(j.src):
            inputs.setdefault(k, j)
    owners: dict = {}
    run, skipped, existing = [], 0, []
    for j in jobs:
        if j.dst is None:
            run.append(j)
            continue
        keys = _file_keys(j.dst)
        clash = next((owners[k] for k in keys if k in owners), None)
        if clash is not None:
            raise LesrcnnError(f"{clash.label} and {j.label} would both be written to {j.dst}; "
                               f"use --suffix or a different --format")
        owners.update(dict.fromkeys(keys, j))
        other = next((inputs[k] for k in keys if k in inputs), None)
        if other is not None and other is not j:
            raise LesrcnnError(f"{j.label} would be written over the input {other.label}; choose another -o or --suffix")
        if other is None and not _exists(j.dst):
            run.append(j)
        elif os.path.isdir(j.dst):
            raise LesrcnnError(f"{j.dst} is a folder; cannot write an image there")
        elif skip_existing and other is None:
            skipped += 1
        elif overwrite:
            run.append(j)
        else:
            existing.append((j, other is not None))
    if existing:
        j, is_input = existing[0]
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise LesrcnnError(f"{j.dst}{more} {'is an input' if is_input else 'exists'}; pass --overwrite to replace"
                           + ("" if is_input else ", or --skip-existing"))
    return run, skipped


# --- running -------------------------------------------------------------------------------------

#: A temporary file of ours that no live writer holds (locked) is stale after this many seconds.
STALE_TEMP_S = 2.0


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _write(f"lesrcnn: warning: {message}")


def _write(line: str) -> None:
    line = one_line(line)
    try:
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(line, file=sys.stderr)


def _oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or any(s in str(e).lower() for s in ("out of memory", "can't allocate memory"))


def _make_upscaler(a):
    from .upscale import Upscaler

    return Upscaler(a.scale, a.weights, a.device, precision=a.precision, tile=a.tile, overlap=a.tile_overlap,
                    batch=a.batch, self_ensemble=a.self_ensemble, backend=a.backend, quantize=a.quantize,
                    max_pixels=a.max_pixels, threads=a.threads)


def _prepare_folders(jobs: list[Job]) -> None:
    """Create output folders; remove what a killed earlier run left there (stale temp files)."""
    from .io import clean_stale_temps

    for d in sorted({j.dst.parent for j in jobs if j.dst is not None}):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LesrcnnError(f"cannot create the output folder {d}: {e.strerror or e}") from None
        clean_stale_temps(d, STALE_TEMP_S)


def cmd_upscale(a) -> int:
    a.inputs = [*a.inputs, *(a.more_inputs or [])]
    if not a.inputs:
        raise LesrcnnError("no INPUT given (a file, folder, quoted glob, or - for stdin)")
    if a.quality is not None and not 1 <= a.quality <= 100:
        raise LesrcnnError(f"--quality must be 1..100, got {a.quality}")
    if a.overwrite and a.skip_existing:
        raise LesrcnnError("--overwrite and --skip-existing exclude each other")
    from .video import run_video_jobs, split_video_inputs
    videos = split_video_inputs(a)  # videos, found by content, go to video.py; images stay in a.inputs
    video_rc = run_video_jobs(videos, a) if videos else 0
    if videos and not a.inputs:
        return video_rc
    if getattr(a, "ray", None) and not a.overwrite:
        a.skip_existing = True  # --ray resumes: what exists is done
    jobs = plan(a)
    single = len(jobs) == 1  # one image: its failure is the command's error (exit 2)
    jobs, skipped = check_jobs(jobs, a.overwrite, a.skip_existing)
    if not jobs:
        if not a.quiet:
            print(f"lesrcnn: nothing to do ({skipped} output(s) exist already)", file=sys.stderr)
        return video_rc
    if getattr(a, "ray", None):
        from .ray import run_cli_jobs
        return _ray_summary(a, *run_cli_jobs(jobs, a), skipped) or video_rc
    if a.device == "auto" or a.device.startswith("cuda"):
        import torch
        torch.backends.cudnn.benchmark = True  # few tile shapes repeat: autotuned kernels pay off
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _print_warning
        up = _make_upscaler(a)
        _prepare_folders(jobs)
        t0 = time.perf_counter()
        stats = _run_jobs(up, jobs, a, single)
        dt = time.perf_counter() - t0
    done, failed, mp_in, mp_out, lost = stats
    if not a.quiet:
        parts = [f"lesrcnn: {done} image{'s' if done != 1 else ''} x{a.scale}",
                 f"{_mp(mp_in)} MP -> {_mp(mp_out)} MP", f"{dt:.1f} s"]
        if skipped + lost:
            parts.append(f"{skipped + lost} skipped (exist)")
        parts.append(f"{failed} failed")
        print(", ".join(parts), file=sys.stderr)
    return 1 if failed or video_rc else 0


def _ray_summary(a, written: int, lost: int, failed: int, skipped: int) -> int:
    if not a.quiet:
        print(f"lesrcnn: {written} image{'s' if written != 1 else ''} x{a.scale} on Ray, "
              f"{skipped + lost} skipped (exist), {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _run_jobs(up, jobs: list[Job], a, single: bool) -> tuple[int, int, float, float, int]:
    """(written, failed, input MP, output MP, skipped because another run wrote them meanwhile)."""
    from tqdm import tqdm

    done = failed = lost = 0
    mp_in = mp_out = 0.0
    with tqdm(total=len(jobs), desc="upscale", unit="img", file=sys.stderr, dynamic_ncols=True,
              disable=None if (not a.quiet and not single) else True) as bar:
        for job in jobs:
            try:
                mp = _run_one(up, job, a, single)
                done += 1
                mp_in, mp_out = mp_in + mp[0], mp_out + mp[1]
            except FileExistsError as e:
                if a.skip_existing:
                    lost += 1
                else:
                    failed += _fail(f"{job.dst}: written meanwhile by another run; pass --overwrite to replace it",
                                    single)
            except BrokenPipeError:
                raise  # stdout closed: cli.main says so once
            except (LesrcnnError, OSError, MemoryError, RuntimeError) as e:
                failed += _fail(_describe(e, job), single)
            bar.update(1)
    return done, failed, mp_in, mp_out, lost


def _fail(message: str, single: bool) -> int:
    if single:
        raise LesrcnnError(message) from None
    _write(f"lesrcnn: error: {message}")
    return 1


def _run_one(up, job: Job, a, single: bool) -> tuple[float, float]:
    from tqdm import tqdm

    from .io import DEEP_FORMATS, read_picture, write_picture, writable_format

    if job.src is not None:
        os.stat(job.src)  # a looping or dangling symlink fails here, for this file alone
    src = job.src if job.src is not None else sys.stdin.buffer.read()
    pic = read_picture(src, up.max_pixels, name=job.label)
    fmt = job.fmt or writable_format(pic.format)
    bits = 16 if pic.bits == 16 and fmt in DEEP_FORMATS else 8
    show = single and not a.quiet
    if show:  # a large image takes a while: say what is going on before it starts
        s = a.scale
        _write(f"lesrcnn: upscaling {job.label}: {pic.width}x{pic.height} -> {pic.width * s}x{pic.height * s} "
               f"on {getattr(up, 'device', 'cpu')} ...")
    tile_bar = None

    def progress(i: int, n: int) -> None:
        nonlocal tile_bar
        if not show or n <= 1:
            return
        if tile_bar is None:
            tile_bar = tqdm(total=n, desc="tiles", unit="tile", file=sys.stderr, dynamic_ncols=True, disable=None)
        tile_bar.update(i - tile_bar.n)

    try:
        res = up.upscale_picture(pic, bits, progress)
    finally:
        if tile_bar is not None:
            tile_bar.close()
    if job.dst is None:
        buf = io.BytesIO()
        write_picture(res, buf, fmt, a.quality)
        _write_stdout(buf.getvalue())
    else:
        write_picture(res, job.dst, fmt, a.quality, overwrite=a.overwrite)
    return pic.megapixels, res.megapixels


def _write_stdout(data: bytes) -> None:
    """All of ``data`` to stdout, or an error: an unbuffered stdout (PYTHONUNBUFFERED=1) may take
    part of a write and return the count, which must not pass for success."""
    out = sys.stdout.buffer
    view = memoryview(data)
    while view:
        n = out.write(view)
        if not n:
            raise OSError(errno.EIO, "short write to stdout", "<stdout>")
        view = view[n:]
    out.flush()


def _mp(v: float) -> str:
    return f"{v:.2f}" if v >= 10 else f"{v:.3g}"


def _describe(e: BaseException, job: Job) -> str:
    """One line naming the input (and the output file when writing failed)."""
    if isinstance(e, LesrcnnError):
        msg = str(e)
        return msg if msg.startswith(job.label) or (job.dst is not None and str(job.dst) in msg) \
            else f"{job.label}: {msg}"
    if _oom(e):
        return f"{job.label}: out of memory; use a smaller --tile"
    if isinstance(e, OSError):
        where = e.filename if e.filename and ".lesrcnn-tmp-" not in str(e.filename) else (job.dst or job.label)
        return f"{job.label}: {e.strerror or str(e).splitlines()[0]} ({where})"
    s = str(e).strip()
    return f"{job.label}: {(s.splitlines()[0] if s else type(e).__name__)[:300]}"
