"""Videos: every frame through the :class:`~lesrcnn.upscale.Upscaler`; sound, timing and colour kept.

Why it is built this way:

- Decoding, inference and encoding run in three threads joined by small bounded queues, so the
  network (by far the slowest stage) never waits for FFmpeg; PyAV releases the GIL in the
  codecs and in swscale, torch releases it in the network.
- The video is encoded in segments of about ``segment_seconds`` of input time. Each segment is a
  complete .mov file (exact time bases, negative DTS allowed), written atomically into a hidden
  work folder beside the output (``.NAME.lesrcnn-video/``) together with a manifest of the
  input's identity and every option that changes the pixels. A re-run skips the finished
  segments, so an interrupted job resumes, and because segments never depend on each other the
  result has the same frames as an uninterrupted run.
- The output file is a remux: the segments' video packets plus the input's audio and subtitle
  packets byte for byte, every frame keeping the input's timestamp (variable frame rate too),
  the display matrix (rotation) and the colour tags. It is written atomically.
- PyAV is an optional extra (``pip install lesrcnn[video]``); it is imported only when a video
  is actually handled.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from .errors import LesrcnnError

#: Extensions searched in folders (files named explicitly are probed whatever their name).
VIDEO_EXTS = frozenset({".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts",
                        ".mts", ".wmv", ".flv", ".3gp", ".ogv", ".nut", ".mxf"})
#: Extensions other files use too (TypeScript): in folders, only those that probe as video count.
_AMBIGUOUS_EXTS = frozenset({".ts"})
#: Input codec -> the encoder of the same family (used when --codec is not given).
FAMILY = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "vp8": "libvpx", "av1": "libsvtav1",
          "mpeg4": "mpeg4", "prores": "prores_ks", "ffv1": "ffv1"}
#: --codec spellings.
CODEC_ALIASES = {"h264": "libx264", "avc": "libx264", "x264": "libx264", "h265": "libx265", "hevc": "libx265",
                 "x265": "libx265", "vp9": "libvpx-vp9", "vp8": "libvpx", "av1": "libsvtav1", "prores": "prores_ks"}
#: Default --crf per encoder (visually transparent at these settings).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 8, "libsvtav1": 24}
CRF_RANGE = {"libx264": (0, 51), "libx265": (0, 51), "libvpx-vp9": (0, 63), "libvpx": (4, 63), "libsvtav1": (0, 63)}
DEFAULT_PRESET = {"libx264": "medium", "libx265": "medium", "libsvtav1": "8"}
#: Output container (by extension of -o) -> FFmpeg muxer.
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
          ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts", ".nut": "nut", ".3gp": "3gp", ".flv": "flv",
          ".mpg": "mpeg", ".mpeg": "mpeg", ".ogv": "ogg", ".mxf": "mxf"}
#: Segment files: exact time bases; MOV keeps negative DTS (B-frames), NUT takes what MOV does not.
_SEGMENT_MUXERS = {"libvpx": "nut", "libvpx-vp9": "nut", "libsvtav1": "nut", "ffv1": "nut"}
_IMAGE_DEMUXERS = ("image2", "_pipe", "gif", "apng", "webp")
MANIFEST_VERSION = 1
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
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


# --- probing ---------------------------------------------------------------------------------------

def probe_kind(path: str | os.PathLike) -> str | None:
    """"video" (a container with a moving-picture stream), "media" (a container without one, e.g.
    audio only) or None (not something FFmpeg opens, or a still image), from the file's content."""
    av = _av()
    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as c:
            if any(k in c.format.name for k in _IMAGE_DEMUXERS):
                return None
            return "video" if any(s.type == "video" and not _is_cover(s) for s in c.streams) else "media"
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None


def is_video(path: str | os.PathLike) -> bool:
    return probe_kind(path) == "video"


def _is_cover(stream) -> bool:
    """Attached pictures (album art) are video streams of one frame: not the video."""
    try:
        return bool(stream.disposition & stream.disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


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
    frames: int  # frames the header announces (0: unknown)
    duration: float  # seconds (0: unknown)
    video_end: float  # the video stream's own duration (seconds; 0: unknown): truncation check
    color: dict = field(default_factory=dict)  # color_range, colorspace, color_primaries, color_trc
    matrix: list[int] | None = None  # display matrix (rotation / flips)
    copy: list[int] = field(default_factory=list)  # audio / subtitle streams copied as they are

    @property
    def estimate(self) -> int:
        return self.frames or int(round(self.duration * self.rate))


def open_source(path: str | os.PathLike, max_pixels: int | None) -> Source:
    """Probe ``path`` and decode its first frame; one-line LesrcnnError for every bad input."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise LesrcnnError(f"{path}: no such file")
    try:
        c = av.open(os.fspath(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise LesrcnnError(f"{path}: not a video FFmpeg can read ({_first_line(e)})") from None
    with c:
        vs = [s for s in c.streams if s.type == "video" and not _is_cover(s)]
        if not vs:
            raise LesrcnnError(f"{path}: no video stream")
        v = vs[0]
        if v.codec_context is None:
            raise LesrcnnError(f"{path}: unsupported video codec (PyAV's FFmpeg has no decoder for it)")
        name = v.codec_context.codec.canonical_name  # "av1", not the decoder's "libdav1d"
        first = _first_frame(c, v, path)
        if first is None:
            raise LesrcnnError(f"{path}: no {name} frame could be decoded (corrupt or unsupported video)")
        w, h = first.width, first.height
        if max_pixels and w * h > max_pixels:
            raise LesrcnnError(f"{path}: {w}x{h} frames are above --max-pixels {max_pixels} ({w * h} pixels)")
        fmt = first.format
        bits = max(comp.bits for comp in fmt.components) if fmt.components else 8
        color = {k: int(getattr(first, k)) for k in ("color_range", "colorspace", "color_primaries", "color_trc")}
        rate = v.average_rate or v.guessed_rate or Fraction(25)
        duration = float(v.duration * v.time_base) if v.duration else (c.duration or 0) / 1e6
        frames = int(v.frames or 0) if "mp4" in c.format.name else 0  # MP4/MOV: the sample count, exact
        return Source(path, v.index, name, w, h, fmt.name, bits, v.time_base, Fraction(rate), frames, duration,
                      _stream_seconds(v), color, _display_matrix(first),
                      [s.index for s in c.streams if s.type in ("audio", "subtitle") and s is not v])


def _stream_seconds(v) -> float:
    """The video stream's own duration as the muxer wrote it (Matroska/WebM's DURATION tag; 0 when
    absent). Not ``stream.duration``: FFmpeg fills that from the whole file, audio included."""
    tag = next((val for k, val in v.metadata.items() if k.upper() == "DURATION"), "")
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _first_frame(c, v, path: Path):
    av = _av()
    try:
        for packet in c.demux(v):
            try:
                for frame in packet.decode():
                    return frame
            except av.FFmpegError:
                continue
    except av.FFmpegError as e:
        raise LesrcnnError(f"{path}: cannot read the video ({_first_line(e)})") from None
    return None


def _display_matrix(frame) -> list[int] | None:
    av = _av()
    import struct

    for sd in frame.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            m = list(struct.unpack("=9i", bytes(sd)[:36]))  # native byte order, as FFmpeg stores it
            return None if m == [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30] else m
    return None


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


def _resolve_encoder(codec: str | None, src: Source, muxer: str) -> str:
    av = _av()
    fmt = av.format.ContainerFormat(muxer, "w")
    if codec is None:
        for name in (FAMILY.get(src.codec), "libx264"):
            if name and _encoder_ok(name) and _muxer_takes(fmt, name):
                return name
        raise LesrcnnError(f"the {muxer} container takes no codec this FFmpeg can encode; use --codec")
    name = CODEC_ALIASES.get(codec.lower(), codec)
    if not _encoder_ok(name):
        known = ", ".join(sorted({"h264", "hevc", "vp9", "vp8", "av1", "ffv1", "prores", "mpeg4"}))
        raise LesrcnnError(f"--codec {codec}: no such video encoder in PyAV's FFmpeg (try {known})")
    if not _muxer_takes(fmt, name):
        raise LesrcnnError(f"--codec {codec}: the {muxer} container cannot hold it; choose another output extension")
    return name


def _encoder_ok(name: str) -> bool:
    av = _av()
    try:
        return av.codec.Codec(name, "w").type == "video"
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False


def _muxer_takes(fmt, encoder: str) -> bool:
    av = _av()
    try:
        with av.open(_Null(), "w", format=fmt.name) as c:
            c.add_stream(encoder)
        return True
    except (ValueError, av.FFmpegError):
        return False


class _Null:
    """A write-only sink for trial containers that are never written."""

    def write(self, b) -> int:
        return len(b)

    def seek(self, *a) -> int:
        return 0

    def tell(self) -> int:
        return 0


def choose_encoding(src: Source, dst: Path, scale: int, codec: str | None = None, crf: float | None = None,
                    preset: str | None = None, pix_fmt: str | None = None) -> Encoding:
    """Encoder, pixel format and options for ``dst``; opens the encoder once to reject bad options now."""
    av = _av()
    muxer = MUXERS.get(dst.suffix.lower())
    if muxer is None:
        raise LesrcnnError(f"{dst}: unknown video extension; use .mp4, .mkv, .mov, .webm or .avi")
    encoder = _resolve_encoder(codec, src, muxer)
    supported = [f.name for f in (av.codec.Codec(encoder, "w").video_formats or [])]
    pix = pix_fmt or _default_pix_fmt(src, supported)
    if pix not in supported:
        raise LesrcnnError(f"--pix-fmt {pix}: {encoder} takes {', '.join(supported)}")
    w, h = src.width * scale, src.height * scale
    f = av.VideoFormat(pix)
    if (w % 2 and f.chroma_width(2) == 1) or (h % 2 and f.chroma_height(2) == 1):
        raise LesrcnnError(f"x{scale} of {src.width}x{src.height} is {w}x{h}, which {pix} cannot store (even sizes "
                           f"only); use --pix-fmt yuv444p or another scale")
    options = _options(encoder, crf, preset)
    seg_muxer = _SEGMENT_MUXERS.get(encoder, "mov")
    if not _muxer_takes(av.format.ContainerFormat(seg_muxer, "w"), encoder):
        raise LesrcnnError(f"--codec {encoder}: cannot be stored in {seg_muxer} segments; choose another codec")
    enc = Encoding(encoder, pix, options, w, h, muxer, seg_muxer, max(c.bits for c in f.components) > 8)
    _trial_open(enc, src)
    return enc


def _default_pix_fmt(src: Source, supported: list[str]) -> str:
    """The input's pixel format where the encoder takes it, else one of the same bit depth."""
    if src.pix_fmt in supported:
        return src.pix_fmt
    plain = src.pix_fmt.replace("yuvj", "yuv")
    deep = ["yuv420p10le", "yuv422p10le", "yuv444p10le", "yuv420p12le"] if src.bits > 8 else []
    for cand in [plain, *deep, "yuv420p"]:
        if cand in supported:
            return cand
    return supported[0]


def _options(encoder: str, crf: float | None, preset: str | None) -> dict:
    opts: dict[str, str] = {}
    if encoder in DEFAULT_CRF:
        lo, hi = CRF_RANGE[encoder]
        value = DEFAULT_CRF[encoder] if crf is None else crf
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


def _trial_open(enc: Encoding, src: Source) -> None:
    av = _av()
    try:
        ctx = av.CodecContext.create(enc.encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = enc.width, enc.height, enc.pix_fmt
        ctx.time_base, ctx.framerate = src.time_base, src.rate
        ctx.options = dict(enc.options)
        ctx.open()
    except (av.FFmpegError, ValueError) as e:
        what = " ".join(f"{k}={v}" for k, v in enc.options.items())
        raise LesrcnnError(f"{enc.encoder} refuses {enc.width}x{enc.height} {enc.pix_fmt} {what}: "
                           f"{_first_line(e)}") from None


# --- the work folder: finished segments and what they were made from -------------------------------

def work_folder(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.lesrcnn-video"


def input_identity(path: Path) -> dict:
    """Size and hashes of the first and last MiB: cheap, and changes when the file does."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return {"size": size, "sha256_ends": h.hexdigest()}


def upscaler_identity(up) -> dict:
    """Everything of the Upscaler that changes output pixels (tile and batch do not)."""
    ck = getattr(up, "checkpoint", None)
    if ck is not None:
        h = hashlib.sha256()
        for k, t in ck.model.state_dict().items():
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        weights = h.hexdigest()[:16]
    else:
        weights = "onnx"
    return {"scale": up.scale, "weights": weights, "precision": up.precision, "backend": up.backend,
            "self_ensemble": up.self_ensemble, "quantize": up.quantize, "device": up.device.type}


class Work:
    """The hidden folder of finished segments; ``done`` maps segment number -> frames in it."""

    def __init__(self, folder: Path, manifest: dict, done: dict[int, int]):
        self.folder, self.manifest, self.done = folder, manifest, done

    @classmethod
    def open(cls, dst: Path, manifest: dict, resume: bool) -> "Work":
        folder = work_folder(dst)
        path = folder / "manifest.json"
        old = None
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(path.read_text())
        if old is not None and {k: v for k, v in old.items() if k != "segments"} == manifest:
            done = {int(k): int(v) for k, v in old.get("segments", {}).items()
                    if (folder / _seg_name(int(k))).is_file()}
            keep = {"manifest.json", *(_seg_name(k) for k in done)}
            for f in folder.iterdir():  # what a killed process was writing, or wrote but did not list
                if f.name not in keep and f.is_file():
                    f.unlink()
            return cls(folder, manifest, done)
        if resume:
            why = "no interrupted job found" if old is None else "the input or the options changed since"
            raise LesrcnnError(f"cannot resume {dst.name}: {why} (work folder {folder}); run without --resume")
        if folder.exists():
            _note(f"{dst.name}: the input or options changed; discarding the unfinished job in {folder}")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        work = cls(folder, manifest, {})
        work.save()
        return work

    def save(self) -> None:
        from .io import atomic_write_text

        data = dict(self.manifest, segments={str(k): v for k, v in sorted(self.done.items())})
        atomic_write_text(self.folder / "manifest.json", json.dumps(data, indent=1, sort_keys=True) + "\n")

    def segment(self, n: int) -> Path:
        return self.folder / _seg_name(n)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _seg_name(n: int) -> str:
    return f"segment_{n:06d}.seg"  # a .mov or .nut file (Encoding.segment_muxer)


def _note(line: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(f"lesrcnn: {line}", file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(f"lesrcnn: {line}", file=sys.stderr)


# --- the pipeline: decode -> upscale -> encode ------------------------------------------------------

_END, _ABORT = "end", "abort"


@dataclass
class Stats:
    frames: int = 0  # upscaled in this run
    skipped: int = 0  # in segments finished earlier
    decode_errors: list[str] = field(default_factory=list)
    first: Fraction | None = None  # time of the first decoded frame (seconds)
    last_end: Fraction | None = None  # end time of the last decoded frame (seconds)
    infer_s: float = 0.0
    wall_s: float = 0.0


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _ABORT


def _decoded(container, stream, stats: Stats) -> Iterator:
    """Frames in presentation order; packets that do not decode are counted, not fatal."""
    av = _av()
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as e:
            stats.decode_errors.append(f"reading stopped: {_first_line(e)}")
            packet = None
        try:
            yield from (stream.decode(None) if packet is None else packet.decode())
        except av.FFmpegError as e:
            stats.decode_errors.append(_first_line(e))
        if packet is None:
            return


def _decode_worker(src: Source, enc: Encoding, work: Work, seg_s: float, out: queue.Queue,
                   stop: threading.Event, stats: Stats) -> None:
    """Decode thread: (segment, pts, duration, RGB array) for frames of unfinished segments."""
    av = _av()
    fmt = "rgb48le" if enc.deep else "rgb24"
    seg_len = Fraction(seg_s).limit_denominator(1_000_000)  # 0.2 s is 1/5, not the float's 0.2000000000000000111
    try:
        with av.open(os.fspath(src.path), metadata_errors="ignore") as c:
            v = c.streams[src.index]
            v.thread_type = "AUTO"
            seg, prev_pts, first, i = 0, None, None, 0
            for frame in _decoded(c, v, stats):
                pts = frame.pts if frame.pts is not None else (0 if prev_pts is None else prev_pts + 1)
                if prev_pts is not None and pts <= prev_pts:
                    stats.decode_errors.append(f"frame {i}: timestamp {pts} not after {prev_pts}; dropped")
                    continue
                first = pts if first is None else first
                seg = max(seg, int((pts - first) * src.time_base / seg_len))
                dur = frame.duration or 0
                stats.last_end = (pts + dur) * src.time_base
                stats.first = first * src.time_base
                prev_pts, i = pts, i + 1
                if seg in work.done:
                    continue
                rgb = frame.reformat(width=src.width, height=src.height, format=fmt,
                                     src_color_range=src.color["color_range"] or None).to_ndarray()
                if not _put(out, (seg, pts, dur, rgb), stop):
                    return
        _put(out, _END, stop)
    except BaseException as e:  # handed to the main thread
        _put(out, _Failed(e), stop)


class _Aborted(Exception):
    """The main thread stopped the job: drop the segment being written."""


def _encode_worker(src: Source, enc: Encoding, work: Work, inq: queue.Queue, stop: threading.Event,
                   errors: list) -> None:
    """Encode thread: one atomic segment file per segment; the manifest lists it once complete."""
    try:
        item = _get(inq, stop)
        while isinstance(item, tuple):
            item = _write_segment(src, enc, work, item, inq, stop)
    except _Aborted:
        pass
    except BaseException as e:  # handed to the main thread
        errors.append(e)
        stop.set()


def _write_segment(src: Source, enc: Encoding, work: Work, item: tuple, inq: queue.Queue,
                   stop: threading.Event):
    """Encode the frames of segment ``item[0]``; returns the first item that is not one of them."""
    av = _av()
    from .io import atomic_output

    n, frames = item[0], 0
    with atomic_output(work.segment(n)) as f, av.open(f, "w", format=enc.segment_muxer) as oc:
        s = oc.add_stream(enc.encoder, rate=src.rate, options=dict(enc.options))
        s.width, s.height, s.pix_fmt = enc.width, enc.height, enc.pix_fmt
        s.time_base = s.codec_context.time_base = src.time_base
        for k, v in src.color.items():
            setattr(s.codec_context, k, v)
        durations: dict[int, int] = {}  # encoders drop frame durations; the last one sets the file's length
        while isinstance(item, tuple) and item[0] == n:
            durations[item[1]] = item[2]
            _mux_timed(oc, s.encode(_to_frame(item, src, enc)), durations)
            frames += 1
            item = _get(inq, stop)
        if item == _ABORT:
            raise _Aborted
        _mux_timed(oc, s.encode(None), durations)
    work.done[n] = frames
    work.save()
    _test_signal(work)
    return item


def _mux_timed(oc, packets, durations: dict[int, int]) -> None:
    for p in packets:
        if not p.duration and p.pts is not None:
            p.duration = durations.pop(p.pts, 0)
        oc.mux(p)


def _to_frame(item: tuple, src: Source, enc: Encoding):
    """Upscaled RGB -> a frame in the output pixel format, with the input's timestamp and colour."""
    av = _av()
    _, pts, dur, rgb = item
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype.itemsize == 2 else "rgb24")
    out = frame.reformat(format=enc.pix_fmt, dst_colorspace=src.color["colorspace"] or None,
                         dst_color_range=src.color["color_range"] or None)
    out.pts, out.time_base, out.duration = pts, src.time_base, dur
    with contextlib.suppress(AttributeError):  # settable since PyAV 16; the codec context carries them too
        out.color_primaries, out.color_trc = src.color["color_primaries"], src.color["color_trc"]
    return out


def _test_signal(work: Work) -> None:
    spec = os.environ.get(SIGNAL_AFTER_ENV)
    if not spec:
        return
    count, _, name = spec.partition(":")
    work.__dict__["_finished"] = work.__dict__.get("_finished", 0) + 1
    if work.__dict__["_finished"] == int(count):
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'INT'}"))


def _run(up, src: Source, enc: Encoding, work: Work, seg_s: float, bar, stats: Stats) -> None:
    """The three stages; the network runs here, in the calling thread (so Ctrl-C lands here)."""
    qd: queue.Queue = queue.Queue(maxsize=4)
    qe: queue.Queue = queue.Queue(maxsize=4)
    stop, errors = threading.Event(), []
    dec = threading.Thread(target=_decode_worker, args=(src, enc, work, seg_s, qd, stop, stats),
                           name="lesrcnn-decode", daemon=True)
    encw = threading.Thread(target=_encode_worker, args=(src, enc, work, qe, stop, errors),
                            name="lesrcnn-encode", daemon=True)
    dec.start()
    encw.start()
    t0 = time.perf_counter()
    try:
        while True:
            item = _get(qd, stop)
            if isinstance(item, _Failed):
                raise item.exc
            if not isinstance(item, tuple):
                break
            t = time.perf_counter()
            big = up.run(item[3])
            stats.infer_s += time.perf_counter() - t
            if not _put(qe, (*item[:3], big), stop):
                break
            stats.frames += 1
            bar.update(1)
        _put(qe, _END, stop)
        encw.join()
    except BaseException:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                qe.get_nowait()
        encw.join()
        raise
    finally:
        stop.set()
        dec.join()
        stats.wall_s = time.perf_counter() - t0
    if errors:
        e = errors[0]
        raise LesrcnnError(f"{src.path}: encoding failed: {_first_line(e)}") if not isinstance(e, LesrcnnError) else e


# --- the output file: segments + the input's other streams, remuxed ----------------------------------

_DROP_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "rotate", "duration",
              "number_of_frames", "number_of_bytes", "bps", "vendor_id"}


def _tags(meta, drop=_DROP_TAGS) -> dict:
    """Tags worth carrying over: not the ones that describe the old encoding or its size."""
    return {k: v for k, v in meta.items() if k.lower() not in drop and not k.startswith("_STATISTICS")}


def _check_copies(src: Source, enc: Encoding, dst: Path) -> None:
    """Fail now, not after hours of work, when the output container cannot hold the audio/subtitles."""
    av = _av()
    with av.open(os.fspath(src.path), metadata_errors="ignore") as inp, \
            av.open(_Null(), "w", format=enc.muxer) as trial:
        for i in src.copy:
            s = inp.streams[i]
            try:
                trial.add_stream_from_template(s)
            except (ValueError, av.FFmpegError):
                name = s.codec_context.name if s.codec_context else "?"
                raise LesrcnnError(f"{src.path}: its {s.type} stream #{i} ({name}) "
                                   f"cannot be copied into a {dst.suffix} file; use .mkv") from None
        dropped = [f"#{s.index} {s.type}" for s in inp.streams
                   if s.index != src.index and s.index not in src.copy and not _is_cover(s)]
        if dropped:
            _note(f"{src.path.name}: streams not copied: {', '.join(dropped)}")


def _assemble(src: Source, enc: Encoding, work: Work, dst: Path, stats: Stats) -> None:
    av = _av()
    from .io import atomic_output

    segs = [work.segment(n) for n in sorted(work.done)]
    with av.open(os.fspath(src.path), metadata_errors="ignore") as inp, atomic_output(dst) as f, \
            av.open(f, "w", format=enc.muxer) as out:
        out.metadata.update(_tags(inp.metadata))
        with av.open(os.fspath(segs[0])) as first:
            try:
                vs = out.add_stream_from_template(first.streams.video[0])
            except av.codec.codec.UnknownCodecError:  # decoded by a decoder-only library (libdav1d)
                vs = out.add_stream_from_template(first.streams.video[0], opaque=True)
            extradata = first.streams.video[0].codec_context.extradata
        vs.codec_context.framerate = src.rate  # Matroska's default frame duration, MP4's nominal rate
        vin = inp.streams[src.index]
        vs.metadata.update(_tags(vin.metadata))
        vs.disposition = vin.disposition
        if src.matrix and hasattr(vs, "set_display_matrix"):  # PyAV >= 18
            vs.set_display_matrix(src.matrix)
        elif src.matrix:
            _note(f"{src.path.name}: rotation not kept (needs PyAV >= 18)")
        copies = {}
        for i in src.copy:
            s = inp.streams[i]
            copies[i] = out.add_stream_from_template(s)
            copies[i].metadata.update(_tags(s.metadata, {"encoder"}))
            copies[i].disposition = s.disposition
        video = _segment_packets(segs, vs, extradata)
        for packet in heapq.merge(video, _input_packets(inp, copies, stats), key=_packet_time):
            out.mux(packet)


def _packet_time(p) -> Fraction:
    return (p.dts if p.dts is not None else p.pts) * p.time_base


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


def _input_packets(inp, copies: dict, stats: Stats) -> Iterator:
    av = _av()
    if not copies:
        return
    packets = inp.demux(*[inp.streams[i] for i in copies])
    while True:
        try:
            p = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as e:
            stats.decode_errors.append(f"audio/subtitles cut short: {_first_line(e)}")
            return
        if p.size == 0 or (p.dts is None and p.pts is None):
            continue
        p.stream = copies[p.stream.index]
        yield p


# --- the API -----------------------------------------------------------------------------------------

@dataclass
class VideoResult:
    src: Path
    dst: Path
    frames: int  # in the output
    resumed: int  # of them, made by an earlier, interrupted run
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    encoder: str
    pix_fmt: str
    seconds: float
    infer_seconds: float
    problems: list[str]
    stats: Stats | None = None  # where the time went (benchmarks/bench_video.py)

    @property
    def complete(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        fps = (self.frames - self.resumed) / self.seconds if self.seconds > 0 else 0.0
        parts = [f"lesrcnn: {self.src.name} -> {self.dst.name}: {self.frames} frames",
                 f"{self.size_in[0]}x{self.size_in[1]} -> {self.size_out[0]}x{self.size_out[1]}",
                 f"{self.encoder} {self.pix_fmt}", f"{self.seconds:.1f} s ({fps:.2f} fps)"]
        if self.resumed:
            parts.append(f"{self.resumed} frames from the interrupted run")
        return ", ".join(parts)


def upscale_video(up, src, dst, *, codec: str | None = None, crf: float | None = None, preset: str | None = None,
                  pix_fmt: str | None = None, resume: bool = False, overwrite: bool = False,
                  segment_seconds: float = 10.0, progress: bool = True) -> VideoResult:
    """Upscale every frame of video ``src`` with ``up`` into ``dst`` (container from its extension).

    Audio and subtitles are copied, timestamps, rotation and colour tags kept; ``codec`` (default:
    the input's family where PyAV encodes it, else H.264), ``crf``, ``preset``, ``pix_fmt`` (default:
    the input's, so 10-bit stays 10-bit). An interrupted call resumes when called again with the
    same arguments. ``result.problems`` lists what did not decode (the rest is written)."""
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    if segment_seconds <= 0:
        raise LesrcnnError(f"segment length must be > 0 s, got {segment_seconds}")
    if dst.exists() and not overwrite:
        raise LesrcnnError(f"{dst} exists; pass --overwrite to replace it")
    if dst.exists() and src.exists() and src.resolve() == dst.resolve():
        raise LesrcnnError(f"{dst} is the input; choose another output name")
    source = open_source(src, up.max_pixels)
    enc = choose_encoding(source, dst, up.scale, codec, crf, preset, pix_fmt)
    _check_copies(source, enc, dst)
    manifest = {"version": MANIFEST_VERSION, "input": input_identity(src), "upscaler": upscaler_identity(up),
                "encoding": {"encoder": enc.encoder, "pix_fmt": enc.pix_fmt, "options": enc.options},
                "segment_seconds": segment_seconds}
    work = Work.open(dst, manifest, resume)
    stats = Stats(skipped=sum(work.done.values()))
    if stats.skipped:
        _note(f"{src.name}: resuming after {stats.skipped} frames ({len(work.done)} segments) from {work.folder.name}")
    t0 = time.perf_counter()
    with tqdm(total=source.estimate or None, initial=stats.skipped, desc=src.name[:24], unit="frame",
              file=sys.stderr, dynamic_ncols=True, disable=None if progress else True) as bar, \
            _sigterm_as_interrupt():
        try:
            _run(up, source, enc, work, segment_seconds, bar, stats)
        except KeyboardInterrupt:
            _note(f"{src.name}: stopped; {len(work.done)} finished segment(s) kept in {work.folder}; "
                  f"run the same command again to resume")
            raise
    if not work.done:
        raise LesrcnnError(f"{src}: no frame could be decoded" + _problem_text(stats.decode_errors))
    _assemble(source, enc, work, dst, stats)
    work.remove()
    frames = sum(work.done.values())
    problems = list(stats.decode_errors)
    problems += _missing(source, stats, frames)
    return VideoResult(src, dst, frames, stats.skipped, (source.width, source.height), (enc.width, enc.height),
                       enc.encoder, enc.pix_fmt, time.perf_counter() - t0, stats.infer_s, problems, stats)


def _missing(src: Source, stats: Stats, frames: int) -> list[str]:
    """What the header promised and did not come (a truncated file decodes without an error)."""
    if src.frames and frames < src.frames:
        return [f"{src.frames - frames} of {src.frames} frames did not decode (damaged or truncated file)"]
    if src.video_end and stats.last_end is not None and stats.first is not None:
        got = float(stats.last_end - stats.first)
        if got + 2 / float(src.rate) + 0.05 < src.video_end:
            return [f"the video stops at {got:.2f} s of {src.video_end:.2f} s (damaged or truncated file)"]
    return []


def _problem_text(errors: list[str]) -> str:
    if not errors:
        return ""
    return f" ({len(errors)} unreadable packet(s); first: {errors[0]})"


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the job like Ctrl-C (finished segments kept), when we may set handlers."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --- the command line (hooked into `lesrcnn upscale`) -----------------------------------------------

def add_video_arguments(p) -> None:
    g = p.add_argument_group("videos (mp4, mkv, mov, webm, avi...; need `pip install lesrcnn[video]`)")
    g.add_argument("--codec", metavar="NAME",
                   help="video codec: h264, hevc, vp9, vp8, av1, ffv1, prores, mpeg4 or an FFmpeg encoder name "
                        "(default: the input's family where PyAV can encode it, else h264)")
    g.add_argument("--crf", type=float, metavar="Q",
                   help="constant quality, lower is better; 0 is lossless with h264 (default: h264 18, hevc 20, "
                        "vp9/av1 24)")
    g.add_argument("--preset", metavar="NAME",
                   help="encoder speed vs size: ultrafast..veryslow for h264/hevc, 0-13 for av1 "
                        "(default: medium; av1 8)")
    g.add_argument("--pix-fmt", metavar="FMT",
                   help="output pixel format, e.g. yuv420p, yuv420p10le, yuv444p (default: the input's, so 10-bit "
                        "stays 10-bit)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted video job, and fail if there is none or its options differ "
                        "(re-running the same command resumes too)")
    g.add_argument("--segment-seconds", type=float, default=10.0, metavar="S",
                   help="videos are encoded in independent segments of about S seconds: the most work an "
                        "interruption loses (default: 10)")


def split_video_inputs(a) -> list[tuple[Path, Path]]:
    """The videos among ``a.inputs`` (files by content, folders and globs by extension, then content)
    with their outputs; inputs left holding no image are removed from ``a.inputs``."""
    from .io import READ_EXTS

    if "-" in a.inputs:
        return []
    outp = None if a.output == "-" else Path(a.output)
    several = len(a.inputs) > 1
    found: list[tuple[Path, Path]] = []
    keep, explicit = [], False
    for spec in a.inputs:
        p = Path(spec)
        if p.is_file():
            ext = p.suffix.lower()
            if ext not in READ_EXTS and (ext in VIDEO_EXTS or (have_pyav() and probe_kind(p))):
                found.append((p, Path(p.name)))
                explicit = True
                continue
        elif p.is_dir() or any(ch in spec for ch in "*?["):
            videos, images = _find_videos(spec, getattr(a, "glob", None), outp)
            root = Path(p.resolve().name) if p.is_dir() and several else Path()
            found += [(f, root / rel) for f, rel in videos]
            if videos and not images:
                continue
        keep.append(spec)
    a.inputs = keep
    if not found:
        return []
    if outp is None:
        raise LesrcnnError("videos cannot be written to - (stdout); give -o a file or folder name")
    single = explicit and len(found) == 1 and not keep
    if single and not outp.is_dir() and outp.suffix:
        if outp.suffix.lower() not in MUXERS:
            raise LesrcnnError(f"{outp}: not a video file name; use .mp4, .mkv, .mov, .webm or .avi")
        return [(found[0][0], outp)]
    if outp.exists() and not outp.is_dir():
        raise LesrcnnError(f"{outp} is a file; with several inputs -o must be a folder")
    suffix = getattr(a, "suffix", "") or ""
    return [(src, outp / rel.with_name(f"{rel.stem}{suffix}{src.suffix if src.suffix.lower() in MUXERS else '.mkv'}"))
            for src, rel in found]


def _find_videos(spec: str, pattern: str | None, exclude: Path | None) -> tuple[list[tuple[Path, Path]], bool]:
    """(video, path relative to the folder or glob base) in a folder or glob; and whether images are there too."""
    from .io import READ_EXTS
    from .upscale_cli import input_files  # one walker: each real folder once (symlink loops end)

    base, files = input_files(spec, pattern, exclude if exclude is not None and exclude.is_dir() else None)
    images = any(f.suffix.lower() in READ_EXTS for f in files)
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTS]
    if videos and not have_pyav():
        _note(f"warning: {spec}: {len(videos)} video(s) skipped; `pip install lesrcnn[video]` to upscale them")
        videos = []
    videos = [f for f in videos if f.suffix.lower() not in _AMBIGUOUS_EXTS or is_video(f)]  # others fail loudly
    return [(f, f.relative_to(base) if f.is_relative_to(base) else Path(f.name)) for f in videos], images


def run_video_jobs(jobs: list[tuple[Path, Path]], a) -> int:
    """Upscale each video; 0 all written, 1 some failed or were damaged (each said on one line).
    A single video's failure is raised (exit 2)."""
    from .upscale import Upscaler

    single = len(jobs) == 1 and not a.inputs
    todo = []
    for src, dst in jobs:
        if dst.exists() and getattr(a, "skip_existing", False):
            continue
        if dst.exists() and not a.overwrite:
            raise LesrcnnError(f"{dst} exists; pass --overwrite to replace, or --skip-existing")
        todo.append((src, dst))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, *rest, **kw: _note(f"warning: {m}")
        up = Upscaler(a.scale, a.weights, a.device, precision=a.precision, tile=a.tile,
                      overlap=getattr(a, "tile_overlap", None), batch=getattr(a, "batch", None),
                      self_ensemble=a.self_ensemble, backend=a.backend, quantize=a.quantize,
                      max_pixels=getattr(a, "max_pixels", None))
        failed = 0
        for src, dst in todo:
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                r = upscale_video(up, src, dst, codec=a.codec, crf=a.crf, preset=a.preset, pix_fmt=a.pix_fmt,
                                  resume=a.resume, overwrite=a.overwrite, segment_seconds=a.segment_seconds,
                                  progress=not a.quiet)
            except (LesrcnnError, OSError, RuntimeError, MemoryError) as e:
                if single:
                    raise
                failed += 1
                _note(f"error: {e if isinstance(e, LesrcnnError) else f'{src}: {_first_line(e)}'}")
                continue
            if not a.quiet:
                _note(r.summary()[len("lesrcnn: "):])
            if r.problems:
                failed += 1
                _note(f"error: {src}: {'; '.join(r.problems)}; {dst.name} holds the {r.frames} frames that decoded")
    return 1 if failed else 0
