"""``lesrcnn upscale``: files, folders, globs or stdin in; a file, a mirrored folder or stdout out."""
from __future__ import annotations

import argparse
import fnmatch
import glob
import io
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import LesrcnnError

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

8-bit output is quantised by truncation by default (--quantize truncate), exactly as the
released code and `lesrcnn eval` do, so the files score the PSNR that eval reports;
--quantize round is 0.02-0.07 dB better. 16-bit output is always rounded.

Exit status: 0 all written; 1 some images failed (each reported, the others written);
2 nothing done (bad option, missing weights, unreadable single input...)."""

EPILOG = """\
examples:
  lesrcnn upscale photo.jpg -o photo_x2.png -s 2 --weights lesrcnn_x2.pth
  lesrcnn upscale scans/ -o scans_x4/ -s 4 --format png
  lesrcnn upscale 'shots/**/*.png' -o out/ --suffix _x2 --tile 256
  cat in.png | lesrcnn upscale - -o - --format png > out.png"""


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


def add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images (files, folders, globs, stdin) x2/x3/x4",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, quoted globs, or - for stdin")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, folder, or - for stdout")
    p.add_argument("-s", "--scale", type=int, choices=(2, 3, 4), default=2, help="upscaling factor (default 2)")
    p.add_argument("--weights", metavar="NAME|FILE",
                   help="our .safetensors file or an official .pth (converted on the fly); "
                        "default: the embedded weights for the scale")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="default auto: CUDA, then MPS, then CPU")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="fp16/bf16 on CUDA only; tiles that overflow are redone in fp32 (default fp32)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="onnx needs `pip install lesrcnn[onnx]` (default torch)")
    p.add_argument("--tile", type=_int_at_least(0, "--tile"), metavar="N",
                   help="LR tile side in pixels; 0: no tiling; default: chosen from free memory")
    p.add_argument("--tile-overlap", type=_int_at_least(0, "--tile-overlap"), metavar="N",
                   help="LR context around each tile (default: receptive margin + 2, so tiled == untiled)")
    p.add_argument("--batch", type=_int_at_least(1, "--batch"), metavar="N",
                   help="tiles per forward pass (default: from free memory)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="average the 8 flips/rotations (x8 slower, slightly better)")
    p.add_argument("--format", default="same", choices=["same", "png", "jpg", "webp", "tiff", "bmp"],
                   help="output format; default: the output file's extension, or for folders the input's format")
    p.add_argument("--quality", type=int, metavar="Q", help="JPEG/WebP quality 1-100 (default 95; WebP 100 = lossless)")
    p.add_argument("--quantize", default="truncate", choices=["truncate", "round"],
                   help="float -> 8-bit conversion (default truncate: as the paper's code and `lesrcnn eval`)")
    p.add_argument("--suffix", default="", metavar="TEXT", help="appended to output file names in a folder, e.g. _x2")
    p.add_argument("--glob", metavar="PATTERN", help="only files of input folders matching this pattern, e.g. '*.jpg'")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (and allow OUT == INPUT)")
    p.add_argument("--skip-existing", action="store_true", help="skip images whose output already exists")
    p.add_argument("--max-pixels", type=_int_at_least(0, "--max-pixels"), metavar="N",
                   help="refuse inputs above N pixels (decompression bombs; default 100000000; 0: no limit)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary (errors still shown)")
    p.set_defaults(func=cmd_upscale)


# --- planning: which file goes where ------------------------------------------------------------

@dataclass
class Job:
    src: Path | None  # None: stdin
    dst: Path | None  # None: stdout
    fmt: str | None  # Pillow format name; None: the input's (known once read)
    label: str


def _has_magic(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _walk(folder: Path, pattern: str | None, exclude: Path | None) -> list[Path]:
    from .io import READ_EXTS

    found = []
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and
                         not (exclude is not None and _same_path(rootp / d, exclude)))
        for name in sorted(files):
            p = rootp / name
            if name.startswith(".") or p.suffix.lower() not in READ_EXTS:
                continue
            if pattern and not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(str(p.relative_to(folder)), pattern)):
                continue
            found.append(p)
    return found


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if _has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _sources(inputs: list[str], pattern: str | None, exclude: Path | None) -> list[tuple[Path, Path, bool]]:
    """(file, path relative to its input root, was named explicitly) for every INPUT."""
    from .io import READ_EXTS

    several = len(inputs) > 1
    out: list[tuple[Path, Path, bool]] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_file():
            out.append((p, Path(p.name), True))
        elif p.is_dir():
            files = _walk(p, pattern, exclude)
            if not files:
                raise LesrcnnError(f"no images found in {p}" + (f" matching {pattern!r}" if pattern else ""))
            root = Path(p.resolve().name) if several else Path()
            out += [(f, root / f.relative_to(p), False) for f in files]
        elif _has_magic(spec):
            base = _glob_base(spec)
            files = sorted(Path(f) for f in glob.glob(spec, recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in READ_EXTS)
            if exclude is not None:
                files = [f for f in files if not _is_under(f, exclude)]
            if not files:
                raise LesrcnnError(f"no images match {spec}")
            out += [(f, f.relative_to(base) if _is_under(f, base) else Path(f.name), False) for f in files]
        elif p.exists():
            raise LesrcnnError(f"{p}: not a file or folder")
        else:
            raise LesrcnnError(f"{p}: no such file or folder")
    return out


def _is_under(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def plan(a) -> list[Job]:
    from .io import EXTENSION, FORMATS, READ_EXTS, format_for_path, writable_format

    fmt = None if a.format == "same" else FORMATS[a.format]
    out = a.output
    if "-" in a.inputs:
        if len(a.inputs) > 1:
            raise LesrcnnError("- (stdin) must be the only INPUT")
        if out == "-":
            return [Job(None, None, fmt, "<stdin>")]
        if format_for_path(out) is None or Path(out).is_dir():
            raise LesrcnnError("with - (stdin) as INPUT, -o must be an image file name (.png, .jpg, .webp, .tif, "
                               ".bmp) or - (stdout)")
        return [_file_job(None, Path(out), fmt, a, "<stdin>")]
    outp = None if out == "-" else Path(out)
    exclude = outp if outp is not None and outp.is_dir() else None
    sources = _sources(a.inputs, a.glob, exclude)
    single = len(sources) == 1 and sources[0][2]
    if out == "-":
        if not single:
            raise LesrcnnError("-o - (stdout) takes exactly one input image")
        return [Job(sources[0][0], None, fmt or writable_format(format_for_path(sources[0][0])), str(sources[0][0]))]
    assert outp is not None
    file_out = single and not outp.is_dir() and format_for_path(outp) is not None
    if file_out:
        return [_file_job(sources[0][0], outp, fmt, a, str(sources[0][0]))]
    if not single and not outp.is_dir() and format_for_path(outp) is not None:
        raise LesrcnnError(f"{len(sources)} input images need -o to be a folder, not {outp.name}")
    if outp.exists() and not outp.is_dir():
        raise LesrcnnError(f"{outp} is a file; with {'several inputs' if not single else 'this output name'} "
                           f"-o must be a folder (or a file name ending in .png/.jpg/.webp/.tif/.bmp)")
    if single and outp.suffix.lower() in READ_EXTS and not outp.exists():
        raise LesrcnnError(f"{outp}: cannot write {outp.suffix} files; use .png, .jpg, .webp, .tif or .bmp")
    jobs = []
    for src, rel, _ in sources:
        f = fmt or writable_format(format_for_path(src))
        ext = src.suffix if format_for_path(src) == f else EXTENSION[f]  # keep .jpeg/.tiff spellings
        dst = outp / rel.with_name(f"{rel.stem}{a.suffix}{ext}")
        jobs.append(Job(src, dst, f, str(src)))
    return jobs


def _file_job(src: Path | None, dst: Path, fmt: str | None, a, label: str) -> Job:
    from .io import format_for_path

    by_ext = format_for_path(dst)
    if by_ext is None:
        raise LesrcnnError(f"{dst}: unknown image extension; use .png, .jpg, .webp, .tif or .bmp, or a folder")
    if fmt is not None and fmt != by_ext:
        raise LesrcnnError(f"--format {a.format} conflicts with the output name {dst.name}")
    return Job(src, dst, by_ext, label)


def check_jobs(jobs: list[Job], overwrite: bool, skip_existing: bool) -> tuple[list[Job], int]:
    """Refuse collisions and existing outputs (unless allowed); returns (jobs to run, skipped)."""
    seen: dict[Path, Job] = {}
    srcs = {j.src.resolve(): j for j in jobs if j.src is not None}
    for j in jobs:
        if j.dst is None:
            continue
        key = j.dst.resolve()
        if key in seen:
            raise LesrcnnError(f"{seen[key].label} and {j.label} would both be written to {j.dst}; "
                               f"use --suffix or a different --format")
        seen[key] = j
        other = srcs.get(key)
        if other is not None and other is not j:
            raise LesrcnnError(f"{j.label} would be written over the input {other.label}; choose another -o or --suffix")
    run, skipped, existing = [], 0, []
    for j in jobs:
        if j.dst is not None and j.dst.exists():
            if j.dst.is_dir():
                raise LesrcnnError(f"{j.dst} is a folder; cannot write an image there")
            if skip_existing:
                skipped += 1
                continue
            if not overwrite:
                existing.append(j)
                continue
        run.append(j)
    if existing:
        j = existing[0]
        what = "is an input" if j.src is not None and _same_path(j.src, j.dst) else "exists"
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise LesrcnnError(f"{j.dst}{more} {what}; pass --overwrite to replace, or --skip-existing")
    return run, skipped


# --- running -------------------------------------------------------------------------------------

def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _write(f"lesrcnn: warning: {message}")


def _write(line: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(line, file=sys.stderr)


def _oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or any(s in str(e).lower() for s in ("out of memory", "can't allocate memory"))


def cmd_upscale(a) -> int:
    from tqdm import tqdm

    from .io import DEEP_FORMATS, read_picture, write_picture, writable_format
    from .upscale import Upscaler

    if a.quality is not None and not 1 <= a.quality <= 100:
        raise LesrcnnError(f"--quality must be 1..100, got {a.quality}")
    if a.overwrite and a.skip_existing:
        raise LesrcnnError("--overwrite and --skip-existing exclude each other")
    jobs = plan(a)
    if a.device in ("auto", "cuda"):
        import torch
        torch.backends.cudnn.benchmark = True  # few tile shapes repeat: autotuned kernels pay off
    single = len(jobs) == 1  # one image: its failure is the command's error (exit 2)
    jobs, skipped = check_jobs(jobs, a.overwrite, a.skip_existing)
    if not jobs:
        if not a.quiet:
            print(f"lesrcnn: nothing to do ({skipped} output(s) exist already)", file=sys.stderr)
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _print_warning
        up = Upscaler(a.scale, a.weights, a.device, precision=a.precision, tile=a.tile, overlap=a.tile_overlap,
                      batch=a.batch, self_ensemble=a.self_ensemble, backend=a.backend, quantize=a.quantize,
                      max_pixels=a.max_pixels)
        for d in sorted({j.dst.parent for j in jobs if j.dst is not None}):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LesrcnnError(f"cannot create the output folder {d}: {e.strerror or e}") from None
        bars = not a.quiet
        t0 = time.perf_counter()
        mp_in = mp_out = 0.0
        done = failed = 0
        with tqdm(total=len(jobs), desc="upscale", unit="img", file=sys.stderr, dynamic_ncols=True,
                  disable=None if (bars and not single) else True) as bar:
            for job in jobs:
                tile_bar = None

                def progress(i: int, n: int) -> None:
                    nonlocal tile_bar
                    if not (bars and single) or n <= 1:
                        return
                    if tile_bar is None:
                        tile_bar = tqdm(total=n, desc="tiles", unit="tile", file=sys.stderr, dynamic_ncols=True,
                                        disable=None)
                    tile_bar.update(i - tile_bar.n)

                try:
                    src = job.src if job.src is not None else sys.stdin.buffer.read()
                    pic = read_picture(src, up.max_pixels, name=job.label)
                    fmt = job.fmt or writable_format(pic.format)
                    bits = 16 if pic.bits == 16 and fmt in DEEP_FORMATS else 8
                    res = up.upscale_picture(pic, bits, progress)
                    if job.dst is None:
                        buf = io.BytesIO()
                        write_picture(res, buf, fmt, a.quality)
                        sys.stdout.buffer.write(buf.getvalue())
                        sys.stdout.buffer.flush()
                    else:
                        write_picture(res, job.dst, fmt, a.quality)
                    done += 1
                    mp_in += pic.megapixels
                    mp_out += res.megapixels
                except (LesrcnnError, OSError, MemoryError, RuntimeError) as e:
                    msg = _describe(e, job)
                    if single:
                        raise LesrcnnError(msg) from None
                    failed += 1
                    _write(f"lesrcnn: error: {msg}")
                finally:
                    if tile_bar is not None:
                        tile_bar.close()
                bar.update(1)
        dt = time.perf_counter() - t0
    if not a.quiet:
        parts = [f"lesrcnn: {done} image{'s' if done != 1 else ''} x{a.scale}",
                 f"{_mp(mp_in)} MP -> {_mp(mp_out)} MP", f"{dt:.1f} s"]
        if skipped:
            parts.append(f"{skipped} skipped (exist)")
        parts.append(f"{failed} failed")
        print(", ".join(parts), file=sys.stderr)
    return 1 if failed else 0


def _mp(v: float) -> str:
    return f"{v:.2f}" if v >= 10 else f"{v:.3g}"


def _describe(e: BaseException, job: Job) -> str:
    if isinstance(e, LesrcnnError):
        return str(e)
    if _oom(e):
        return f"{job.label}: out of memory; use a smaller --tile"
    if isinstance(e, OSError):
        where = e.filename or job.dst or job.label
        return f"{job.label}: {e.strerror or str(e).splitlines()[0]} ({where})"
    s = str(e).strip()
    return f"{job.label}: {(s.splitlines()[0] if s else type(e).__name__)[:300]}"
