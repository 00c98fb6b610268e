"""``lesrcnn upscale``: files, folders, globs or stdin in; a file, a mirrored folder or stdout out."""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import glob
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import LesrcnnError, first_line, note
from .io import files_under, inode

DESCRIPTION = """\
Upscale images x2, x3 or x4 with LESRCNN.

INPUT is an image file, a folder (searched recursively for png/jpg/webp/tif/bmp/ppm files),
a quoted glob pattern ('photos/**/*.jpg') or - for stdin. OUT is a file when there is one
input image and OUT ends in an image extension (or is - for stdout); otherwise a folder that
mirrors the input tree (several inputs: one sub-folder per input folder). Images keep their
kind (gray, alpha, 16 bits, ICC profile, EXIF, DPI scaled). Outputs are written atomically and
never replace an existing file (an input above all) unless --overwrite is given.

Exit status: 0 all written; 1 some images failed (each reported on one line, the others
written); 2 nothing done (bad option, missing weights, unreadable single input...);
130/143 interrupted (Ctrl-C / SIGTERM; no partial file is left)."""

EPILOG = """\
examples:
  lesrcnn upscale photo.jpg -o photo_x2.png -s 2
  lesrcnn upscale 'shots/**/*.png' -o out/ --suffix _x2 --tile 256
  cat in.png | lesrcnn upscale - -o - --format png > out.png
  lesrcnn upscale -i photo.jpg -o out.png -s 4 -t 200 -x -g 0   (Real-ESRGAN / ncnn spellings)"""

#: Image formats that are read (or known) but not written: `-o out.gif` is a mistake, not a folder.
_NOT_WRITABLE = frozenset({".gif", ".ico", ".icns", ".jp2", ".j2k", ".jpx", ".heic", ".heif", ".avif", ".jxl",
                           ".svg", ".psd", ".exr", ".hdr", ".dng", ".raw", ".cr2", ".nef", ".arw", ".tga",
                           ".pcx", ".dds", ".eps", ".pdf", ".xbm", ".xpm", ".apng", ".ppm", ".pgm", ".pnm",
                           ".pbm", ".jpe", ".jfif", ".im", ".msp", ".sgi", ".qoi", ".blp", ".ftex"})


def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import add_engine_options, number
    from .video import add_video_arguments

    p = sub.add_parser("upscale", help="upscale images (files, folders, globs, stdin) x2/x3/x4",
                       description=DESCRIPTION, epilog=EPILOG)
    add = p.add_argument
    add("inputs", nargs="*", metavar="INPUT", help="image files, folders, quoted globs, or - for stdin")
    add("-i", "--input", action="append", metavar="INPUT", dest="more_inputs",
        help="an INPUT given as an option (repeatable), as Real-ESRGAN and the ncnn upscalers take it")
    add("-o", "--output", required=True, metavar="OUT", help="output file, folder, or - for stdout")
    add("-s", "--scale", type=int, choices=(2, 3, 4), default=2, help="upscaling factor")
    add_engine_options(p)  # --weights -g/--device --precision --backend -j/--threads
    add("--fp32", action="store_const", const="fp32", dest="precision",
        help="same as --precision fp32 (the Real-ESRGAN flag)")
    add("-t", "--tile", type=number(0), metavar="N",
        help="LR tile side in pixels; 0: no tiling; default: chosen from free memory")
    add("--tile-overlap", type=number(0), metavar="N",
        help="LR context around each tile (default: receptive margin + 2, so tiled == untiled)")
    add("--batch", type=number(1), metavar="N",
        help="tiles per forward pass (default: from free memory)")
    add("-x", "--self-ensemble", action="store_true",
        help="average the 8 flips/rotations (x8 slower, slightly better; ncnn's TTA mode)")
    add("-f", "--format", "--ext", default="same", metavar="FMT",
        choices=["same", "auto", "png", "jpg", "webp", "tiff", "bmp"],
        help="png, jpg, webp, tiff, bmp; same (or auto): the output file's extension, or the input's format")
    add("--quality", type=int, metavar="Q", help="JPEG/WebP quality 1-100 (default 95; WebP 100 = lossless)")
    add("--quantize", default="round", choices=["round", "truncate"],
        help="float -> 8-bit conversion; truncate is the released code's (what `lesrcnn eval` scores)")
    add("--suffix", default="", metavar="TEXT", help="appended to output file names in a folder, e.g. _x2")
    add("--glob", metavar="PATTERN", help="only files of input folders matching this pattern, e.g. '*.jpg'")
    add("--overwrite", action="store_true", help="replace existing outputs (and allow OUT == INPUT)")
    add("--skip-existing", action="store_true", help="skip images whose output already exists")
    add("--max-pixels", type=number(0), metavar="N",
        help="refuse inputs above N pixels (decompression bombs; default 100000000; 0: no limit)")
    add("-q", "--quiet", action="store_true", help="no progress bar, no summary (errors still shown)")
    add("--ray", nargs="?", const="local", metavar="ADDRESS",  # lesrcnn.ray (extra `ray`)
        help="run on Ray (a local instance, or the cluster at ADDRESS, e.g. auto); existing outputs are "
        "skipped unless --overwrite, so a rerun resumes")
    add_video_arguments(p)  # --codec --crf --preset --pix-fmt --resume --segment-seconds (video.py)
    p.set_defaults(func=cmd_upscale)
    return p


# --- planning: which file goes where ------------------------------------------------------------

@dataclass
class Job:
    src: Path | None  # None: stdin
    dst: Path | None  # None: stdout
    fmt: str | None  # Pillow format name; None: the input's (known once read), or a video
    label: str
    video: bool = False


class PartlyWritten(LesrcnnError):
    """A damaged video, written as far as it decodes: a failure (exit 1), never the command's (exit 2)."""


def _cannot_list(e: OSError) -> None:
    note(f"warning: {e.filename}: cannot list the folder ({e.strerror or e})")


def _glob_match(parts: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """A relative path against a glob's parts, per component as the shell does (``**``: any depth)."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_glob_match(parts[1:], names[i:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and _glob_match(parts[1:], names[1:])


def input_files(spec: str, pattern: str | None = None,
                exclude: Path | None = None) -> tuple[Path, list[Path]]:
    """(base, every non-hidden file) of a folder or quoted glob INPUT; ``pattern`` filters a folder's
    files by name or relative path. Unlike glob.glob it ends on symbolic-link loops."""
    p = Path(spec)
    if p.is_dir():
        return p, [f for f in files_under(p, exclude, onerror=_cannot_list) if not pattern or
                   fnmatch.fnmatch(f.name, pattern) or fnmatch.fnmatch(f.relative_to(p).as_posix(), pattern)]
    n = next((i for i, part in enumerate(p.parts) if glob.has_magic(part)), len(p.parts))
    base, parts = Path(*p.parts[:n]), p.parts[n:]
    depth = None if "**" in parts else len(parts) - 1
    files = files_under(base, exclude, depth, _cannot_list) if base.is_dir() else []
    return base, [f for f in files if _glob_match(parts, f.relative_to(base).parts)]


def _sources(inputs: list[str], pattern: str | None,
             exclude: Path | None) -> list[tuple[Path, Path, bool, bool]]:
    """(file, path relative to its input root, was named explicitly, is a video) for every INPUT.
    Videos go by extension (.ts, TypeScript too, and explicit files of other extensions by content)."""
    from .io import READ_EXTS
    from .video import VIDEO_EXTS, have_pyav, is_video, probe_kind

    out: list[tuple[Path, Path, bool, bool]] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_file():
            ext = p.suffix.lower()
            video = ext not in READ_EXTS and (ext in VIDEO_EXTS or  # else by content (other media too)
                                              (have_pyav() and probe_kind(p) is not None))
            out.append((p, Path(p.name), True, video))
            continue
        if not p.is_dir() and not glob.has_magic(spec):
            try:
                os.stat(p)
                why = "not a file or folder"  # a FIFO, a device
            except OSError as e:
                why = (e.strerror or "cannot be read") if os.path.lexists(p) else "no such file or folder"
            raise LesrcnnError(f"{p}: {why}")
        base, files = input_files(spec, pattern, exclude)  # the pattern filters folders only
        videos = [f for f in files if f.suffix.lower() in VIDEO_EXTS]
        if videos and not have_pyav():
            note(f"warning: {spec}: {len(videos)} video(s) skipped; "
                   f"`pip install lesrcnn[video]` to upscale them")
            videos = []
        videos = {f for f in videos if f.suffix.lower() != ".ts" or is_video(f)}
        files = [f for f in files if f.suffix.lower() in READ_EXTS or f in videos]
        if not files and p.is_dir():
            raise LesrcnnError(f"no images found in {p}" + (f" matching {pattern!r}" if pattern else ""))
        if not files:
            raise LesrcnnError(f"no images match {spec}")
        root = Path(Path(os.path.realpath(p)).name) if p.is_dir() and len(inputs) > 1 else Path()
        out += [(f, root / f.relative_to(base), False, f in videos) for f in files]
    return out


def _file_keys(p: Path | None) -> set:
    """Every identity of a path: lexical absolute form (``new/../a.png`` is ``a.png`` even while
    ``new`` does not exist), resolved form, and (device, inode) when it exists (hard links)."""
    if p is None:
        return set()
    lexical = os.path.normpath(os.path.abspath(p))
    keys: set = {lexical, os.path.realpath(p), os.path.realpath(lexical)}
    with contextlib.suppress(OSError, ValueError):
        keys.add(inode(p))
    return keys


def plan(a) -> list[Job]:
    from .io import EXTENSION, FORMATS, format_for_path, writable_format
    from .video import MUXERS

    fmt = None if a.format in ("same", "auto") else FORMATS[a.format]
    outp = None
    if a.output != "-":  # as the file system will see it once missing folders exist: new/../x is x
        outp = Path(a.output) if os.path.lexists(Path(a.output).parent) else Path(os.path.normpath(a.output))
    if "-" in a.inputs:
        if len(a.inputs) > 1:
            raise LesrcnnError("- (stdin) must be the only INPUT")
        if outp is not None and (format_for_path(outp) is None or Path(a.output).is_dir()):
            raise LesrcnnError("with - (stdin) as INPUT, -o must be an image file name (.png, .jpg, .webp, "
                               ".tif, .bmp) or - (stdout)")
        sources, label = [(None, None, True, False)], "<stdin>"
    else:
        sources = _sources(a.inputs, a.glob, outp if outp is not None and outp.is_dir() else None)
        label = str(sources[0][0])
    src, single, video = sources[0][0], len(sources) == 1 and sources[0][2], sources[0][3]
    if outp is None and any(s[3] for s in sources):
        raise LesrcnnError("videos cannot be written to - (stdout); give -o a file or folder name")
    if outp is None and not single:
        raise LesrcnnError("-o - (stdout) takes exactly one input image")
    if outp is None:
        fmt = fmt or (None if src is None else writable_format(format_for_path(src)))
        return [Job(src, None, fmt, label)]
    if single and video and not outp.is_dir() and outp.suffix:
        if outp.suffix.lower() not in MUXERS:
            raise LesrcnnError(f"{outp}: not a video file name; use .mp4, .mkv, .mov, .webm or .avi")
        return [Job(src, outp, None, label, video=True)]
    if outp.suffix.lower() in _NOT_WRITABLE and not outp.is_dir():
        raise LesrcnnError(f"{outp}: cannot write {outp.suffix} files; name a .png, .jpg, .webp, .tif or "
                           f".bmp file, or a folder")
    if not outp.is_dir() and format_for_path(outp) is not None:
        if not single:
            raise LesrcnnError(f"{len(sources)} input images need -o to be a folder, not {outp.name}")
        if fmt is not None and fmt != format_for_path(outp):
            raise LesrcnnError(f"--format {a.format} conflicts with the output name {outp.name}")
        return [Job(src, outp, format_for_path(outp), label)]
    if os.path.lexists(outp) and not outp.is_dir():
        raise LesrcnnError(f"{outp} is a file; with {'several inputs' if not single else 'this output name'} "
                           f"-o must be a folder (or a file name ending in .png/.jpg/.webp/.tif/.bmp)")
    jobs = []
    for src, rel, _, video in sources:
        if video:
            f, ext = None, (src.suffix if src.suffix.lower() in MUXERS else ".mkv")  # keep the container
        else:
            f = fmt or writable_format(format_for_path(src))
            ext = src.suffix if format_for_path(src) == f else EXTENSION[f]  # keep .jpeg/.tiff spellings
        jobs.append(Job(src, outp / rel.with_name(f"{rel.stem}{a.suffix}{ext}"), f, str(src), video))
    return jobs


def check_jobs(jobs: list[Job], overwrite: bool, skip_existing: bool) -> tuple[list[Job], int]:
    """Refuse collisions, outputs that are inputs, and existing outputs (unless allowed);
    returns (jobs to run, skipped)."""
    inputs = {k: j for j in reversed(jobs) for k in _file_keys(j.src)}  # the first job wins
    owners: dict = {}
    run, skipped, existing = [], 0, []
    for j in jobs:
        keys = _file_keys(j.dst)
        clash = next((owners[k] for k in keys if k in owners), None)
        if clash is not None:
            raise LesrcnnError(f"{clash.label} and {j.label} would both be written to {j.dst}; "
                               f"use --suffix or a different --format")
        owners.update(dict.fromkeys(keys, j))
        other = next((inputs[k] for k in keys if k in inputs), None)
        if other is not None and other is not j:
            raise LesrcnnError(f"{j.label} would be written over the input {other.label}; "
                               f"choose another -o or --suffix")
        if j.dst is None or (other is None and not os.path.lexists(j.dst)):  # plan() normalised new/../x
            run.append(j)
        elif os.path.isdir(j.dst):
            raise LesrcnnError(f"{j.dst} is a folder; cannot write a file there")
        elif skip_existing and other is None:
            skipped += 1
        elif overwrite:
            run.append(j)
        else:
            existing.append((j, other is not None))
    if existing:
        j, is_input = existing[0]
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        what = "is an input; pass --overwrite to replace" if is_input else \
            "exists; pass --overwrite to replace, or --skip-existing"
        raise LesrcnnError(f"{j.dst}{more} {what}")
    return run, skipped


# --- running -------------------------------------------------------------------------------------

def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    note(f"warning: {message}")


def cmd_upscale(a) -> int:
    a.inputs = [*a.inputs, *(a.more_inputs or [])]
    if not a.inputs:
        raise LesrcnnError("no INPUT given (a file, folder, quoted glob, or - for stdin)")
    if a.quality is not None and not 1 <= a.quality <= 100:
        raise LesrcnnError(f"--quality must be 1..100, got {a.quality}")
    if a.overwrite and a.skip_existing:
        raise LesrcnnError("--overwrite and --skip-existing exclude each other")
    if a.ray and not a.overwrite:
        a.skip_existing = True  # --ray resumes: what exists is done
    jobs = plan(a)
    single = len(jobs) == 1  # one file: its failure is the command's error (exit 2)
    jobs, skipped = check_jobs(jobs, a.overwrite, a.skip_existing)
    if not jobs and not a.quiet:
        print(f"lesrcnn: nothing to do ({skipped} output(s) exist already)", file=sys.stderr)
    failed = 0
    if a.ray and any(not j.video for j in jobs):
        from .ray import run_cli_jobs

        written, lost, failed = run_cli_jobs([j for j in jobs if not j.video], a)
        if not a.quiet:
            print(f"lesrcnn: {written} image{'s' if written != 1 else ''} x{a.scale} on Ray, "
                  f"{skipped + lost} skipped (exist), {failed} failed", file=sys.stderr)
        jobs, skipped = [j for j in jobs if j.video], 0  # videos run here
    if jobs:
        failed += _run_here(jobs, a, single, skipped)
    return 1 if failed else 0


def _run_here(jobs: list[Job], a, single: bool, skipped: int) -> int:
    """Run ``jobs`` in this process, warnings one line each; the number that failed."""
    import torch

    from .upscale import Upscaler

    if a.threads:
        torch.set_num_threads(a.threads)  # -j is for our torch path too, not only the runtimes
    torch.backends.cudnn.benchmark = True  # few tile shapes repeat: autotuned CUDA kernels pay off
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _print_warning
        up = Upscaler(a.scale, a.weights, a.device, precision=a.precision, tile=a.tile,
                      overlap=a.tile_overlap, batch=a.batch, self_ensemble=a.self_ensemble, backend=a.backend,
                      quantize=a.quantize, max_pixels=a.max_pixels, threads=a.threads)
        _prepare_folders(jobs)
        t0 = time.perf_counter()
        done, failed, lost, mp_in, mp_out = _run_jobs(up, jobs, a, single)
        dt = time.perf_counter() - t0
    if not a.quiet and any(not j.video for j in jobs):  # each video has said how it went
        mp_in, mp_out = (f"{v:.2f}" if v >= 10 else f"{v:.3g}" for v in (mp_in, mp_out))
        skips = f"{skipped + lost} skipped (exist), " if skipped + lost else ""
        print(f"lesrcnn: {done} image{'s' if done != 1 else ''} x{a.scale}, {mp_in} MP -> {mp_out} MP, "
              f"{dt:.1f} s, {skips}{failed} failed", file=sys.stderr)
    return failed


def _prepare_folders(jobs: list[Job]) -> None:
    """Create output folders; remove what a killed earlier run left there (stale temp files)."""
    from .io import clean_stale_temps

    for d in sorted({j.dst.parent for j in jobs if j.dst is not None}):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LesrcnnError(f"cannot create the output folder {d}: {e.strerror or e}") from None
        clean_stale_temps(d, 2.0)  # ours, held (locked) by no live writer, 2 s old: a killed run's


def _run_jobs(up, jobs: list[Job], a, single: bool) -> tuple[int, int, int, float, float]:
    """(images written, failed, skipped because another run wrote them meanwhile, input MP, output MP)."""
    from tqdm import tqdm

    done = failed = lost = 0
    mp_in = mp_out = 0.0
    for job in tqdm(jobs, desc="upscale", unit="file", file=sys.stderr, dynamic_ncols=True,
                    disable=True if a.quiet or single else None):
        partly = False
        try:
            if job.video:
                _run_video(up, job, a)
            else:
                mp = _run_one(up, job, a, single)
                done, mp_in, mp_out = done + 1, mp_in + mp[0], mp_out + mp[1]
            continue
        except FileExistsError:
            if a.skip_existing:
                lost += 1
                continue
            message = f"{job.dst}: written meanwhile by another run; pass --overwrite to replace it"
        except BrokenPipeError:
            raise  # stdout closed: cli.main says so once
        except (LesrcnnError, OSError, MemoryError, RuntimeError) as e:
            message, partly = _describe(e, job), isinstance(e, PartlyWritten)
        if single and not partly:
            raise LesrcnnError(message) from None
        note(f"error: {message}")
        failed += 1
    return done, failed, lost, mp_in, mp_out


def _run_video(up, job: Job, a) -> None:
    """A damaged video is written as far as it decodes, then raises PartlyWritten."""
    from .video import upscale_video

    r = upscale_video(up, job.src, job.dst, codec=a.codec, crf=a.crf, preset=a.preset, pix_fmt=a.pix_fmt,
                      resume=a.resume, overwrite=a.overwrite, segment_seconds=a.segment_seconds,
                      progress=not a.quiet)
    if not a.quiet:
        note(r.summary())
    if r.problems:
        raise PartlyWritten(f"{job.src}: {'; '.join(r.problems)}; {job.dst.name} holds the {r.frames} frames "
                            f"that decoded")


def _run_one(up, job: Job, a, single: bool) -> tuple[float, float]:
    from tqdm import tqdm

    from .io import DEEP_FORMATS, read_picture, write_picture, writable_format

    if job.src is not None:
        os.stat(job.src)  # a looping or dangling symlink fails here, for this file alone
    pic = read_picture(sys.stdin.buffer.read() if job.src is None else job.src, up.max_pixels, name=job.label)
    fmt = job.fmt or writable_format(pic.format)
    show = single and not a.quiet
    if show:  # a large image takes a while: say what is going on before it starts
        note(f"upscaling {job.label}: {pic.width}x{pic.height} -> {pic.width * a.scale}x"
               f"{pic.height * a.scale} on {up.device} ...")
    with tqdm(desc="tiles", unit="tile", file=sys.stderr, dynamic_ncols=True, delay=1e-3,
              disable=None if show else True) as bar:  # shown once it moves (several tiles on a terminal)

        def progress(i: int, n: int) -> None:
            if n > 1:
                bar.total = n
                bar.update(i - bar.n)

        res = up.upscale_picture(pic, 16 if pic.bits == 16 and fmt in DEEP_FORMATS else 8, progress)
    if job.dst is not None:
        write_picture(res, job.dst, fmt, a.quality, overwrite=a.overwrite)
    else:
        buf = io.BytesIO()
        write_picture(res, buf, fmt, a.quality)
        sys.stdout.flush()
        with open(sys.stdout.fileno(), "wb", closefd=False) as out:  # buffered: all of it, or an error
            out.write(buf.getbuffer())
    return pic.megapixels, res.megapixels


def _describe(e: BaseException, job: Job) -> str:
    """One line naming the input (and the output file when writing failed)."""
    if isinstance(e, LesrcnnError):
        msg = str(e)
        return msg if msg.startswith(job.label) or (job.dst is not None and str(job.dst) in msg) \
            else f"{job.label}: {msg}"
    if isinstance(e, MemoryError) or any(s in str(e).lower() for s in ("out of memory", "can't allocate")):
        return f"{job.label}: out of memory; use a smaller --tile"
    if isinstance(e, OSError):
        ours = not e.filename or ".lesrcnn-tmp-" in str(e.filename)  # our temporary file: name the output
        where = (job.dst or job.label) if ours else e.filename
        return f"{job.label}: {e.strerror or str(e).splitlines()[0]} ({where})"
    return f"{job.label}: {first_line(e)}"
