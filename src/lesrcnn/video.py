"""Videos: every frame through the :class:`~lesrcnn.upscale.Upscaler`; sound, timing and colour kept.

Decode, network and encode run in three threads, so the network never waits for FFmpeg. Finished
segments wait in a hidden folder (a re-run resumes) until the output is written atomically: a remux
of the segments and of the input's audio/subtitle packets, byte for byte."""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import importlib.util
import io
import itertools
import json
import operator
import os
import queue
import shutil
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from .errors import LesrcnnError, first_line, note, sigterm_as_interrupt

#: Output container (by extension of -o) -> FFmpeg muxer.
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
          ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts", ".nut": "nut", ".3gp": "3gp", ".flv": "flv",
          ".mpg": "mpeg", ".mpeg": "mpeg", ".ogv": "ogg", ".mxf": "mxf"}
#: Extensions searched in folders (files named explicitly are probed whatever their name).
VIDEO_EXTS = frozenset(MUXERS) | {".wmv"}
#: --codec spellings and input codecs -> encoder (the input's family is the default --codec).
ENCODERS = {"h264": "libx264", "avc": "libx264", "x264": "libx264", "h265": "libx265", "hevc": "libx265",
            "x265": "libx265", "vp9": "libvpx-vp9", "vp8": "libvpx", "av1": "libsvtav1",
            "prores": "prores_ks", "mpeg4": "mpeg4", "ffv1": "ffv1"}
#: Encoder -> (default --crf, lowest, highest); the defaults are visually transparent.
CRF = {"libx264": (18, 0, 51), "libx265": (20, 0, 51), "libvpx-vp9": (24, 0, 63), "libvpx": (8, 4, 63),
       "libsvtav1": (24, 0, 63)}
DEFAULT_PRESET = {"libx264": "medium", "libx265": "medium", "libsvtav1": "8"}
#: Segment files: exact time bases; MOV keeps negative DTS (B-frames), NUT takes what MOV does not.
_SEGMENT_MUXERS = {"libvpx": "nut", "libvpx-vp9": "nut", "libsvtav1": "nut", "ffv1": "nut"}
_IMAGE_DEMUXERS = ("image2", "_pipe", "gif", "apng", "webp")
_DROP_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "rotate", "duration",
              "number_of_frames", "number_of_bytes", "bps", "vendor_id"}
#: Test hook (documented in tests/test_video.py): after N finished segments the process sends
#: itself a real signal, "N" or "N:INT" / "N:TERM" / "N:KILL", to interrupt a job at a known point.
SIGNAL_AFTER_ENV = "LESRCNN_VIDEO_SIGNAL_AFTER"


def _av():
    try:
        import av
    except ImportError:
        raise LesrcnnError("videos need PyAV: `pip install lesrcnn[video]`") from None
    return av


def have_pyav() -> bool:
    return importlib.util.find_spec("av") is not None


# --- the input -------------------------------------------------------------------------------------

def probe_kind(path: str | os.PathLike) -> str | None:
    """"video" (a container with a moving-picture stream), "media" (a container without one, e.g.
    audio only) or None (not something FFmpeg opens, or a still image), from the file's content."""
    av = _av()
    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as c:
            if any(k in c.format.name for k in _IMAGE_DEMUXERS):
                return None
            return "video" if any(s.type == "video" and not _is_cover(s) for s in c.streams) else "media"
    except (av.FFmpegError, OSError, ValueError):
        return None


def is_video(path: str | os.PathLike) -> bool:
    return probe_kind(path) == "video"


def _is_cover(s) -> bool:
    """Attached pictures (album art) are video streams of one frame: not the video."""
    return bool(s.disposition & s.disposition.attached_pic)


@dataclass
class Source:
    """What the output must keep of the input video stream (read from its first frame)."""
    path: Path
    index: int  # the video stream
    codec: str
    width: int
    height: int
    pix_fmt: str
    bits: int
    time_base: Fraction
    rate: Fraction
    frames: int  # frames the header announces (MP4/MOV; 0: unknown)
    estimate: int  # frames expected (0: unknown), for the progress bar
    video_end: float  # the video stream's own duration (seconds; 0: unknown): truncation check
    color: dict  # color_range, colorspace, color_primaries, color_trc
    matrix: list[int] | None  # display matrix (rotation / flips)
    copy: list[int]  # audio / subtitle streams copied as they are


def open_source(path: Path, max_pixels: int | None) -> Source:
    """Probe ``path`` and decode its first frame; one-line LesrcnnError for every bad input."""
    av = _av()
    if not path.is_file():
        raise LesrcnnError(f"{path}: no such file")
    try:
        c = av.open(os.fspath(path), metadata_errors="ignore")
    except (av.FFmpegError, ValueError) as e:
        raise LesrcnnError(f"{path}: not a video FFmpeg can read ({first_line(e)})") from None
    with c:
        v = next((s for s in c.streams if s.type == "video" and not _is_cover(s)), None)
        if v is None:
            raise LesrcnnError(f"{path}: no video stream")
        if v.codec_context is None:
            raise LesrcnnError(f"{path}: unsupported video codec (PyAV's FFmpeg has no decoder for it)")
        name = v.codec_context.codec.canonical_name  # "av1", not the decoder's "libdav1d"
        errors: list[str] = []
        first = next(_decoded(c, v, errors), None)
        if first is None:
            raise LesrcnnError(f"{path}: no {name} frame could be decoded (corrupt or unsupported video)"
                               + _problem_text(errors))
        w, h = first.width, first.height
        if max_pixels and w * h > max_pixels:
            raise LesrcnnError(f"{path}: {w}x{h} frames are above --max-pixels {max_pixels} ({w * h} pixels)")
        fmt = first.format
        rate = Fraction(v.average_rate or v.guessed_rate or 25)
        seconds = float(v.duration * v.time_base) if v.duration else (c.duration or 0) / 1e6
        frames = int(v.frames or 0) if "mp4" in c.format.name else 0  # MP4/MOV: the sample count, exact
        color = {k: int(getattr(first, k)) for k in ("color_range", "colorspace", "color_primaries",
                                                     "color_trc")}
        return Source(path, v.index, name, w, h, fmt.name, max((p.bits for p in fmt.components), default=8),
                      v.time_base, rate, frames, frames or round(seconds * rate), _stream_seconds(v), color,
                      _display_matrix(first), [s.index for s in c.streams if s.type in ("audio", "subtitle")])


def _stream_seconds(v) -> float:
    """The video stream's own duration as the muxer wrote it (Matroska/WebM's DURATION tag; 0 when
    absent). Not ``stream.duration``: FFmpeg fills that from the whole file, audio included."""
    tag = next((val for k, val in v.metadata.items() if k.upper() == "DURATION"), "")
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _display_matrix(frame) -> list[int] | None:
    sd = frame.side_data.get("DISPLAYMATRIX")  # nine int32, native byte order, as FFmpeg stores it
    m = None if sd is None else list(struct.unpack("=9i", bytes(sd)[:36]))
    return None if m == [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30] else m


# --- the encoding ----------------------------------------------------------------------------------

@dataclass
class Encoding:
    """How the upscaled frames are encoded and stored."""
    encoder: str
    pix_fmt: str
    options: dict
    width: int
    height: int
    muxer: str  # the output file's
    segment_muxer: str
    deep: bool  # frames go through 16-bit RGB


def choose_encoding(src: Source, dst: Path, scale: int, codec: str | None = None, crf: float | None = None,
                    preset: str | None = None, pix_fmt: str | None = None) -> Encoding:
    """Encoder, pixel format and options for ``dst``; opens the encoder once to reject bad options now."""
    av = _av()
    muxer = MUXERS.get(dst.suffix.lower())
    if muxer is None:
        raise LesrcnnError(f"{dst}: unknown video extension; use .mp4, .mkv, .mov, .webm or .avi")
    encoder = _resolve_encoder(codec, src, muxer)
    supported = [f.name for f in (av.codec.Codec(encoder, "w").video_formats or [])]
    deep = ["yuv420p10le", "yuv422p10le", "yuv444p10le", "yuv420p12le"] if src.bits > 8 else []
    wanted = [src.pix_fmt, src.pix_fmt.replace("yuvj", "yuv"), *deep, "yuv420p"]  # the same bit depth first
    pix = pix_fmt or next((p for p in wanted if p in supported), supported[0])
    if pix not in supported:
        raise LesrcnnError(f"--pix-fmt {pix}: {encoder} takes {', '.join(supported)}")
    w, h = src.width * scale, src.height * scale
    f = av.VideoFormat(pix)
    if (w % 2 and f.chroma_width(2) == 1) or (h % 2 and f.chroma_height(2) == 1):
        raise LesrcnnError(f"x{scale} of {src.width}x{src.height} is {w}x{h}, which {pix} cannot store "
                           f"(even sizes only); use --pix-fmt yuv444p or another scale")
    seg_muxer = _SEGMENT_MUXERS.get(encoder, "mov")
    if not _muxer_takes(seg_muxer, encoder):
        raise LesrcnnError(f"--codec {encoder}: cannot be stored in {seg_muxer} segments; "
                           f"choose another codec")
    enc = Encoding(encoder, pix, _options(encoder, crf, preset), w, h, muxer, seg_muxer,
                   max(c.bits for c in f.components) > 8)
    try:
        with av.open(io.BytesIO(), "w", format=seg_muxer) as trial:
            _segment_stream(trial, src, enc).codec_context.open()
    except (av.FFmpegError, ValueError) as e:
        what = " ".join(f"{k}={v}" for k, v in enc.options.items())
        raise LesrcnnError(f"{encoder} refuses {w}x{h} {pix} {what}: {first_line(e)}") from None
    return enc


def _resolve_encoder(codec: str | None, src: Source, muxer: str) -> str:
    if codec is None:
        for name in (ENCODERS.get(src.codec), "libx264"):
            if name and _encoder_ok(name) and _muxer_takes(muxer, name):
                return name
        raise LesrcnnError(f"the {muxer} container takes no codec this FFmpeg can encode; use --codec")
    name = ENCODERS.get(codec.lower(), codec)
    if not _encoder_ok(name):
        known = "av1, ffv1, h264, hevc, mpeg4, prores, vp8, vp9"
        raise LesrcnnError(f"--codec {codec}: no such video encoder in PyAV's FFmpeg (try {known})")
    if not _muxer_takes(muxer, name):
        raise LesrcnnError(f"--codec {codec}: the {muxer} container cannot hold it; "
                           f"choose another output extension")
    return name


def _encoder_ok(name: str) -> bool:
    try:
        return _av().codec.Codec(name, "w").type == "video"
    except ValueError:  # UnknownCodecError
        return False


def _muxer_takes(muxer: str, encoder: str) -> bool:
    av = _av()
    try:
        with av.open(io.BytesIO(), "w", format=muxer) as c:
            c.add_stream(encoder)
        return True
    except (ValueError, av.FFmpegError):
        return False


def _options(encoder: str, crf: float | None, preset: str | None) -> dict:
    opts: dict[str, str] = {}
    if encoder in CRF:
        default, lo, hi = CRF[encoder]
        value = default if crf is None else crf
        if not lo <= value <= hi:
            raise LesrcnnError(f"--crf for {encoder} must be {lo}..{hi}, got {value:g}")
        opts["crf"] = f"{value:g}"
        if encoder.startswith("libvpx"):
            opts["b"] = "0"
    elif crf is not None:
        raise LesrcnnError(f"--crf does not apply to {encoder} (x264, x265, vp8, vp9, av1 only)")
    if encoder in DEFAULT_PRESET:
        opts["preset"] = str(preset or DEFAULT_PRESET[encoder])
    elif preset is not None:
        raise LesrcnnError(f"--preset does not apply to {encoder} (x264, x265, av1 only)")
    if encoder == "libx265":
        opts["x265-params"] = "log-level=error"
    if encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # errors only: SVT-AV1 prints its settings to stderr otherwise
    return opts


def _segment_stream(oc, src: Source, enc: Encoding):
    """The video stream of a segment file: the input's time base, frame rate and colour tags."""
    return oc.add_stream(enc.encoder, rate=src.rate, options=dict(enc.options), width=enc.width,
                         height=enc.height, pix_fmt=enc.pix_fmt, time_base=src.time_base, **src.color)


# --- the work folder: finished segments and what they were made from -------------------------------

def work_folder(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.lesrcnn-video"


def _manifest(src: Source, up, enc: Encoding, segment_seconds: float) -> dict:
    """The input's identity (size and a hash of its first and last MiB: cheap, and they change when
    the file does) and everything that changes output pixels (tile and batch do not)."""
    from .backends import digest

    size = src.path.stat().st_size
    h = hashlib.sha256()
    with open(src.path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    weights = "onnx" if up.checkpoint is None else digest(up.checkpoint.model)[:16]
    upscaler = {k: getattr(up, k) for k in ("scale", "precision", "backend", "self_ensemble", "quantize")}
    return {"version": 2, "input": {"size": size, "sha256_ends": h.hexdigest()},
            "upscaler": dict(upscaler, weights=weights, device=up.device.type),
            "encoding": {"encoder": enc.encoder, "pix_fmt": enc.pix_fmt, "options": enc.options},
            "segment_seconds": segment_seconds}


class Work:
    """The hidden folder of finished segments; ``done`` maps segment number -> frames in it."""

    def __init__(self, dst: Path, manifest: dict, resume: bool):
        self.folder, self.manifest, self.done = work_folder(dst), manifest, {}
        old: dict = {}
        with contextlib.suppress(OSError, ValueError):
            old = json.loads((self.folder / "manifest.json").read_text())
        segments = old.pop("segments", {}) if isinstance(old, dict) else {}
        if old == manifest:
            self.done = {int(k): int(v) for k, v in segments.items() if self.segment(int(k)).is_file()}
            keep = {"manifest.json", *(self.segment(n).name for n in self.done)}
            for f in self.folder.iterdir():  # what a killed process was writing, or wrote but did not list
                if f.name not in keep and f.is_file():
                    f.unlink()
            return
        if resume:
            why = "the input or the options changed since" if old else "no interrupted job found"
            raise LesrcnnError(f"cannot resume {dst.name}: {why} (work folder {self.folder}); "
                               f"run without --resume")
        if self.folder.exists():
            note(f"{dst.name}: the input or options changed; discarding the unfinished job in {self.folder}")
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self.save()

    def save(self) -> None:
        from .io import atomic_write_text

        data = dict(self.manifest, segments={str(k): v for k, v in sorted(self.done.items())})
        atomic_write_text(self.folder / "manifest.json", json.dumps(data, indent=1, sort_keys=True) + "\n")

    def segment(self, n: int) -> Path:
        return self.folder / f"segment_{n:06d}.seg"  # a .mov or .nut file (Encoding.segment_muxer)


# --- the pipeline: decode -> upscale -> encode ------------------------------------------------------

class _Aborted(Exception):
    """Another stage stopped the job: drop the segment being written."""


@dataclass
class VideoResult:
    src: Path
    dst: Path
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    encoder: str
    pix_fmt: str
    resumed: int = 0  # frames made by an earlier, interrupted run
    frames: int = 0  # in the output
    problems: list[str] = field(default_factory=list)  # what did not decode (the rest is written)
    seconds: float = 0.0  # the whole call
    wall_s: float = 0.0  # decode, network and encode
    infer_seconds: float = 0.0  # of that, in the network
    first: Fraction | None = None  # time of the first decoded frame (seconds)
    last_end: Fraction | None = None  # end time of the last decoded frame (seconds)

    @property
    def complete(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        fps = (self.frames - self.resumed) / self.seconds if self.seconds > 0 else 0.0
        return ", ".join([f"{self.src.name} -> {self.dst.name}: {self.frames} frames",
                          f"{self.size_in[0]}x{self.size_in[1]} -> {self.size_out[0]}x{self.size_out[1]}",
                          f"{self.encoder} {self.pix_fmt}", f"{self.seconds:.1f} s ({fps:.2f} fps)",
                          *([f"{self.resumed} frames from the interrupted run"] if self.resumed else [])])


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    """Put ``item`` in a bounded queue; _Aborted once ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            return q.put(item, timeout=0.1)
    raise _Aborted


def _items(q: queue.Queue, stop: threading.Event) -> Iterator:
    """A queue's items up to None, the end (an exception there is raised); _Aborted once ``stop`` is set."""
    while not stop.is_set():
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
    raise _Aborted


def _demux(container, streams: list, errors: list[str], what: str) -> Iterator:
    """Packets up to the end or the first read error (recorded, not raised: what came is kept)."""
    try:
        yield from container.demux(*streams)
    except _av().FFmpegError as e:
        errors.append(f"{what}: {first_line(e)}")


def _decoded(container, stream, errors: list[str]) -> Iterator:
    """Frames in presentation order; packets that do not decode are recorded, not fatal."""
    av = _av()
    for packet in _demux(container, [stream], errors, "reading stopped"):
        try:
            yield from packet.decode()
        except av.FFmpegError as e:
            errors.append(first_line(e))
    with contextlib.suppress(av.FFmpegError):  # after a read error: the frames the decoder still holds
        yield from stream.decode(None)


def _decode(src: Source, enc: Encoding, done: set[int], seg_s: float, out: queue.Queue, stop: threading.Event,
            r: VideoResult) -> None:
    """(segment, pts, duration, RGB array) for the frames of unfinished segments, into ``out``."""
    av = _av()
    fmt = "rgb48le" if enc.deep else "rgb24"
    seg_len = Fraction(seg_s).limit_denominator(1_000_000)  # 0.2 s is 1/5, not 0.2000000000000000111
    try:
        with av.open(os.fspath(src.path), metadata_errors="ignore") as c:
            v = c.streams[src.index]
            v.thread_type = "AUTO"
            seg, prev = 0, None
            for i, frame in enumerate(_decoded(c, v, r.problems)):
                pts = frame.pts if frame.pts is not None else (0 if prev is None else prev + 1)
                if prev is not None and pts <= prev:
                    r.problems.append(f"frame {i}: timestamp {pts} not after {prev}; dropped")
                    continue
                r.first = pts * src.time_base if r.first is None else r.first
                seg = max(seg, int((pts * src.time_base - r.first) / seg_len))
                dur, prev = frame.duration or 0, pts
                r.last_end = (pts + dur) * src.time_base
                if seg not in done:
                    rgb = frame.reformat(width=src.width, height=src.height, format=fmt,
                                         src_color_range=src.color["color_range"] or None).to_ndarray()
                    _put(out, (seg, pts, dur, rgb), stop)
        _put(out, None, stop)
    except BaseException as e:  # raised by the main thread in its place, after the frames before it
        _put(out, e, stop)


def _encode(src: Source, enc: Encoding, work: Work, items: Iterator) -> None:
    """One atomic segment file per segment; the manifest lists it once it is complete."""
    av = _av()
    from .io import atomic_output

    for finished, (n, group) in enumerate(itertools.groupby(items, key=operator.itemgetter(0)), 1):
        durations: dict[int, int] = {}  # encoders drop frame durations; the last one sets the file's length
        with atomic_output(work.segment(n)) as f, av.open(f, "w", format=enc.segment_muxer) as oc:
            s = _segment_stream(oc, src, enc)
            for frame in itertools.chain((_to_frame(item, src, enc) for item in group), [None]):
                if frame is not None:
                    durations[frame.pts] = frame.duration
                for p in s.encode(frame):
                    p.duration = p.duration or durations.get(p.pts, 0)
                    # libx265 leaves DTS unset where a segment is shorter than its B-frame delay
                    if None not in (p.pts, p.dts) and not 0 <= p.pts - p.dts < 1 << 31:
                        p.dts = p.pts
                    oc.mux(p)
        work.done[n] = len(durations)
        work.save()
        count, _, sig = os.environ.get(SIGNAL_AFTER_ENV, "").partition(":")
        if count and int(count) == finished:  # the test hook
            os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'INT'}"))


def _to_frame(item: tuple, src: Source, enc: Encoding):
    """Upscaled RGB -> a frame in the output pixel format, with the input's timestamp and colour."""
    _, pts, dur, rgb = item
    frame = _av().VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype.itemsize == 2 else "rgb24")
    out = frame.reformat(format=enc.pix_fmt, dst_colorspace=src.color["colorspace"] or None,
                         dst_color_range=src.color["color_range"] or None)
    out.pts, out.time_base, out.duration = pts, src.time_base, dur
    out.color_primaries, out.color_trc = src.color["color_primaries"], src.color["color_trc"]  # prores_ks
    return out


def _run(up, src: Source, enc: Encoding, work: Work, seg_s: float, bar, r: VideoResult) -> None:
    """The three stages; the network runs in the calling thread (so Ctrl-C lands here)."""
    from concurrent.futures import ThreadPoolExecutor

    qd: queue.Queue = queue.Queue(maxsize=4)
    qe: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(_decode, src, enc, set(work.done), seg_s, qd, stop, r)
        encoder = pool.submit(_encode, src, enc, work, _items(qe, stop))
        encoder.add_done_callback(lambda _: stop.set())  # it ends after the end (None), or when it fails
        try:
            for seg, pts, dur, rgb in _items(qd, stop):
                t = time.perf_counter()
                big = up.run(rgb)
                r.infer_seconds += time.perf_counter() - t
                _put(qe, (seg, pts, dur, big), stop)
                bar.update(1)
            _put(qe, None, stop)
            encoder.exception()  # waits for the last segment
        except _Aborted:
            pass  # the encoder failed: raised below
        finally:
            stop.set()  # the stages drop what they hold (the segment being written too)
    r.wall_s = time.perf_counter() - t0
    e = encoder.exception()
    if isinstance(e, LesrcnnError):
        raise e
    if e is not None and not isinstance(e, _Aborted):
        raise LesrcnnError(f"{src.path}: encoding failed: {first_line(e)}")


# --- the output file: segments + the input's other streams, remuxed ----------------------------------

def _tags(meta, drop=_DROP_TAGS) -> dict:
    """Tags worth carrying over: not the ones that describe the old encoding or its size."""
    return {k: v for k, v in meta.items() if k.lower() not in drop and not k.startswith("_STATISTICS")}


def _add_copies(inp, out, src: Source, dst: Path) -> dict:
    """The input's audio/subtitle streams, as they are, added to ``out``: input index -> output stream."""
    av = _av()
    copies = {}
    for i in src.copy:
        s = inp.streams[i]
        try:
            copies[i] = out.add_stream_from_template(s)
        except (ValueError, av.FFmpegError):
            name = s.codec_context.name if s.codec_context else "?"
            raise LesrcnnError(f"{src.path}: its {s.type} stream #{i} ({name}) "
                               f"cannot be copied into a {dst.suffix} file; use .mkv") from None
        copies[i].metadata.update(_tags(s.metadata, {"encoder"}))
        copies[i].disposition = s.disposition
    return copies


def _check_copies(src: Source, enc: Encoding, dst: Path) -> None:
    """Fail now, not after hours of work, when the output container cannot hold the audio/subtitles."""
    av = _av()
    with av.open(os.fspath(src.path), metadata_errors="ignore") as inp, \
            av.open(io.BytesIO(), "w", format=enc.muxer) as trial:
        _add_copies(inp, trial, src, dst)
        dropped = [f"#{s.index} {s.type}" for s in inp.streams
                   if s.index != src.index and s.index not in src.copy and not _is_cover(s)]
    if dropped:
        note(f"{src.path.name}: streams not copied: {', '.join(dropped)}")


def _assemble(src: Source, enc: Encoding, work: Work, r: VideoResult) -> None:
    av = _av()
    from .io import atomic_output

    segs = [work.segment(n) for n in sorted(work.done)]
    with av.open(os.fspath(src.path), metadata_errors="ignore") as inp, atomic_output(r.dst) as f, \
            av.open(f, "w", format=enc.muxer) as out, av.open(os.fspath(segs[0])) as first:
        out.metadata.update(_tags(inp.metadata))
        template, vin = first.streams.video[0], inp.streams[src.index]
        # opaque: the segments' own codec, which may be decode-only (libdav1d); framerate: Matroska's
        # default frame duration, MP4's nominal rate
        vs = out.add_stream_from_template(template, opaque=True, framerate=src.rate,
                                          disposition=vin.disposition)
        vs.metadata.update(_tags(vin.metadata))
        vs.set_display_matrix(src.matrix)  # rotation (None: none)
        copies = _add_copies(inp, out, src, r.dst)
        video = _segment_packets(segs, vs, template.codec_context.extradata)
        packets = heapq.merge(video, _copied_packets(inp, copies, r.problems),
                              key=lambda p: (p.pts if p.dts is None else p.dts) * p.time_base)
        for packet in packets:
            out.mux(packet)


def _segment_packets(segs: list[Path], vs, extradata) -> Iterator:
    """The segments' packets in order; DTS nudged up where a segment's reorder delay overlaps the last."""
    av = _av()
    last = None
    for path in segs:
        with av.open(os.fspath(path)) as c:
            s = c.streams.video[0]
            if s.codec_context.extradata != extradata:
                raise LesrcnnError(f"{path}: encoded with other headers than the first segment; delete "
                                   f"{path.parent} and start again")
            for p in c.demux(s):
                if p.size == 0:
                    continue
                tb = p.time_base
                if p.dts is not None and last is not None and p.dts * tb <= last:
                    d = int(last / tb) + 1
                    if p.pts is not None and d > p.pts:
                        raise LesrcnnError(f"{path}: cannot join segments (timestamps overlap)")
                    p.dts = d
                last = p.dts * tb if p.dts is not None else last
                p.stream = vs
                yield p


def _copied_packets(inp, copies: dict, errors: list[str]) -> Iterator:
    """The audio/subtitle packets, byte for byte, addressed to their output streams."""
    if not copies:  # (demux() of no stream is every stream)
        return
    for p in _demux(inp, [inp.streams[i] for i in copies], errors, "audio/subtitles cut short"):
        if p.size and (p.dts is not None or p.pts is not None):
            p.stream = copies[p.stream.index]
            yield p


# --- the API -----------------------------------------------------------------------------------------

def upscale_video(up, src, dst, *, codec: str | None = None, crf: float | None = None,
                  preset: str | None = None, pix_fmt: str | None = None, resume: bool = False,
                  overwrite: bool = False, segment_seconds: float = 10.0,
                  progress: bool = True) -> VideoResult:
    """Upscale every frame of video ``src`` with ``up`` into ``dst`` (container from its extension).

    ``codec`` defaults to the input's family where PyAV encodes it, else H.264; ``pix_fmt`` to the
    input's (10-bit stays 10-bit). Calling again with the same arguments resumes an interrupted
    call. ``result.problems`` lists what did not decode (the rest is written)."""
    from tqdm import tqdm

    from .io import check_output

    src, dst = Path(src), Path(dst)
    if segment_seconds <= 0:
        raise LesrcnnError(f"segment length must be > 0 s, got {segment_seconds}")
    check_output(dst, overwrite, [src])
    source = open_source(src, up.max_pixels)
    enc = choose_encoding(source, dst, up.scale, codec, crf, preset, pix_fmt)
    _check_copies(source, enc, dst)
    work = Work(dst, _manifest(source, up, enc, segment_seconds), resume)
    r = VideoResult(src, dst, (source.width, source.height), (enc.width, enc.height), enc.encoder,
                    enc.pix_fmt, resumed=sum(work.done.values()))
    if r.resumed:
        note(f"{src.name}: resuming after {r.resumed} frames ({len(work.done)} segments) "
              f"from {work.folder.name}")
    t0 = time.perf_counter()
    with tqdm(total=source.estimate or None, initial=r.resumed, desc=src.name[:24], unit="frame",
              file=sys.stderr, dynamic_ncols=True, disable=None if progress else True) as bar, \
            sigterm_as_interrupt():
        try:
            _run(up, source, enc, work, segment_seconds, bar, r)
        except KeyboardInterrupt:
            note(f"{src.name}: stopped; {len(work.done)} finished segment(s) kept in {work.folder}; "
                  f"run the same command again to resume")
            raise
    if not work.done:
        raise LesrcnnError(f"{src}: no frame could be decoded" + _problem_text(r.problems))
    _assemble(source, enc, work, r)
    shutil.rmtree(work.folder, ignore_errors=True)
    r.frames = sum(work.done.values())
    r.problems += _missing(source, r)
    r.seconds = time.perf_counter() - t0
    return r


def _missing(src: Source, r: VideoResult) -> list[str]:
    """What the header promised and did not come (a truncated file decodes without an error)."""
    if src.frames and r.frames < src.frames:
        return [f"{src.frames - r.frames} of {src.frames} frames did not decode (damaged or truncated file)"]
    if src.video_end and r.last_end is not None:
        got = float(r.last_end - r.first)
        if got + 2 / float(src.rate) + 0.05 < src.video_end:
            return [f"the video stops at {got:.2f} s of {src.video_end:.2f} s (damaged or truncated file)"]
    return []


def _problem_text(errors: list[str]) -> str:
    return f" ({len(errors)} unreadable packet(s); first: {errors[0]})" if errors else ""


# --- the command line (hooked into `lesrcnn upscale`) -----------------------------------------------

def add_video_arguments(p) -> None:
    g = p.add_argument_group("videos (mp4, mkv, mov, webm, avi...; need `pip install lesrcnn[video]`)")
    g.add_argument("--codec", metavar="NAME", help="video codec: h264, hevc, vp9, vp8, av1, ffv1, prores, "
                   "mpeg4 or an FFmpeg encoder name (default: the input's family where PyAV can encode it, "
                   "else h264)")
    g.add_argument("--crf", type=float, metavar="Q", help="constant quality, lower is better; 0 is lossless "
                   "with h264 (default: h264 18, hevc 20, vp9/av1 24)")
    g.add_argument("--preset", metavar="NAME", help="encoder speed vs size: ultrafast..veryslow for "
                   "h264/hevc, 0-13 for av1 (default: medium; av1 8)")
    g.add_argument("--pix-fmt", metavar="FMT", help="output pixel format, e.g. yuv420p, yuv420p10le, yuv444p "
                   "(default: the input's, so 10-bit stays 10-bit)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted video job, and fail if "
                   "there is none or its options differ (re-running the same command resumes too)")
    g.add_argument("--segment-seconds", type=float, default=10.0, metavar="S", help="videos are encoded in "
                   "independent segments of about S seconds: the most work an interruption loses")
