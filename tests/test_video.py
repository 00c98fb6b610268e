"""Videos (lesrcnn.video): tiny clips made here with PyAV, upscaled with the embedded weights.

Interruptions are real: the CLI runs in a subprocess and, through the documented test hook
``LESRCNN_VIDEO_SIGNAL_AFTER=N:SIG`` (lesrcnn.video.SIGNAL_AFTER_ENV), sends itself SIGINT or
SIGKILL right after its N-th segment is finished, so the job stops at a known point.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from lesrcnn.cli import main  # noqa: E402
from lesrcnn.upscale import Upscaler  # noqa: E402
from lesrcnn.video import SIGNAL_AFTER_ENV, is_video, work_folder  # noqa: E402

W, H = 32, 24
FAST = ["--device", "cpu", "--backend", "torch", "-q"]  # no OpenVINO model compilation per command


@pytest.fixture(scope="module")
def up():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Upscaler(2, device="cpu", backend="torch", tile=0)
    torch.set_num_threads(threads)


def picture(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Smooth gradients and a moving bright square: different every frame, easy on codecs."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(x * 6 + i * 9) % 256, y * 8 % 256, (x + y) * 3 % 256], axis=2)
    img[6:14, 4 + i:12 + i] = 230
    return img.astype(np.uint8)


def make_clip(path: Path, n: int = 8, *, vfr: bool = False, audio: bool = True, pix_fmt: str = "yuv420p",
              subtitles: bool = False, rotation: int = 0, bt709: bool = False, crf: int = 10,
              size: tuple[int, int] = (W, H)) -> Path:
    """A short H.264 clip (10 fps, time base 1/1000) with AAC audio; VFR: frame gaps of 1, 2, 3 ticks."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=10, options={"crf": str(crf), "preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = *size, pix_fmt
        vs.time_base = vs.codec_context.time_base = tb
        if bt709:
            cc = vs.codec_context
            cc.color_range, cc.colorspace, cc.color_primaries, cc.color_trc = 1, 1, 1, 1
        if rotation:
            vs.set_display_rotation(rotation)
        a = out.add_stream("aac", rate=8000) if audio else None
        if a is not None:
            a.layout = "mono"
        s = out.add_mux_stream("subrip") if subtitles else None
        t = 0
        for i in range(n):
            f = av.VideoFrame.from_ndarray(picture(i, *size), format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=1 if bt709 else None, dst_color_range=1 if bt709 else None)
            f.pts, f.time_base = t, tb
            t += 100 * (1 + i % 3 if vfr else 1)
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        if a is not None:
            _sine(out, a, t / 1000)
        if s is not None:
            for k, (start, text) in enumerate([(0, b"hello"), (300, b"world")]):
                p = av.Packet(text)
                p.pts = p.dts = start
                p.duration, p.time_base, p.stream = 200, tb, s
                out.mux(p)
    return path


def _sine(out, a, seconds: float) -> None:
    sr, pos, total = 8000, 0, int(8000 * seconds)
    while pos < total:
        k = min(1024, total - pos)
        f = av.AudioFrame.from_ndarray((np.sin(np.arange(pos, pos + k) * 0.05) * 0.3).astype(np.float32)[None],
                                       format="fltp", layout="mono")
        f.sample_rate, f.pts, f.time_base = sr, pos, Fraction(1, sr)
        out.mux(a.encode(f))
        pos += k
    out.mux(a.encode(None))


def frames(path: Path, fmt: str = "rgb24") -> list[tuple[Fraction, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(f.pts * f.time_base, f.to_ndarray(format=fmt)) for f in c.decode(video=0)]


def packets(path: Path, kind: str) -> list[tuple[Fraction, bytes]]:
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(*streams) if p.size] if streams else []


def info(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        f = next(c.decode(video=0))
        return {"size": (v.width, v.height), "pix_fmt": v.pix_fmt, "duration": c.duration / 1e6,
                "rotation": f.rotation, "color": (f.color_range, f.colorspace, f.color_primaries, f.color_trc)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# --- what the output keeps ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [("cfr.mp4", dict(rotation=90, bt709=True)),
                                     ("vfr.mkv", dict(vfr=True, subtitles=True))])
def test_timing_audio_subtitles_rotation_colour_kept(tmp_path, up, name, kw):
    src = make_clip(tmp_path / name, **kw)
    dst = tmp_path / f"out_{name}"
    r = up.upscale_video(src, dst, progress=False, segment_seconds=0.3)
    assert r.complete and r.frames == 8
    fin, fout = frames(src), frames(dst)
    assert [t for t, _ in fout] == [t for t, _ in fin]  # every timestamp, VFR included
    assert packets(dst, "audio") == packets(src, "audio") != []  # copied byte for byte
    assert packets(dst, "subtitle") == packets(src, "subtitle")
    a, b = info(src), info(dst)
    assert b["size"] == (2 * W, 2 * H)
    assert abs(b["duration"] - a["duration"]) <= 0.1 + 1e-6  # within one frame
    assert (b["rotation"], b["color"], b["pix_fmt"]) == (a["rotation"], a["color"], a["pix_fmt"])
    if kw.get("rotation"):
        assert b["rotation"] == 90 and b["color"] == (1, 1, 1, 1)
    assert not work_folder(dst).exists()


def test_10bit_stays_10bit(tmp_path, up):
    src = make_clip(tmp_path / "deep.mkv", n=4, pix_fmt="yuv420p10le", audio=False)
    dst = up.upscale_video(src, tmp_path / "deep_x2.mkv", progress=False).dst
    assert info(dst)["pix_fmt"] == "yuv420p10le"
    with av.open(str(dst)) as c:
        y = next(c.decode(video=0)).to_ndarray(format="gray16le")  # 10 bits scaled to 16
    assert np.any((y >> 6) % 4 != 0)  # values an 8-bit pipeline could not produce


def test_frame_matches_image_upscale(tmp_path, up):
    src = make_clip(tmp_path / "q.mp4", n=3, audio=False, crf=0)
    dst = up.upscale_video(src, tmp_path / "q_x2.mkv", crf=0, pix_fmt="yuv444p", progress=False).dst
    for (_, lr), (_, sr) in zip(frames(src), frames(dst)):
        assert psnr(sr, up.upscale_array(lr)) >= 40


def test_hevc_segments_shorter_than_its_b_frame_delay(tmp_path, up):
    src = make_clip(tmp_path / "in.mp4", n=5, audio=False)
    for i in range(2):  # libx265 leaves their DTS unset: random, sometimes right
        dst = tmp_path / f"{i}.mp4"
        up.upscale_video(src, dst, codec="hevc", segment_seconds=0.2, progress=False)
        assert [t for t, _ in frames(dst)] == [t for t, _ in frames(src)]


# --- resuming -----------------------------------------------------------------------------------------

@pytest.fixture
def default_sigterm():
    """The API takes SIGTERM over only where nobody else handles it, and an earlier test in this process
    may have left a handler (Ray installs one): start from Python's default, restore it after."""
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, old)


def test_ctrl_c_or_sigterm_then_resume_equals_uninterrupted(tmp_path, up, monkeypatch, default_sigterm):
    src = make_clip(tmp_path / "in.mp4", n=8)
    ref = up.upscale_video(src, tmp_path / "ref.mp4", segment_seconds=0.2, progress=False).dst
    dst = tmp_path / "out.mp4"
    for sig in ("TERM", "INT"):  # a real signal after the 1st segment of each run (of 4 segments)
        monkeypatch.setenv(SIGNAL_AFTER_ENV, f"1:{sig}")
        with pytest.raises(KeyboardInterrupt):
            up.upscale_video(src, dst, segment_seconds=0.2, progress=False)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the API's SIGTERM handler is gone
    monkeypatch.delenv(SIGNAL_AFTER_ENV)
    assert not dst.exists()  # never a half file
    assert sorted(p.name for p in work_folder(dst).glob("segment_*")) == ["segment_000000.seg", "segment_000001.seg"]
    r = up.upscale_video(src, dst, segment_seconds=0.2, progress=False, resume=True)
    assert (r.frames, r.resumed) == (8, 4)
    assert packets(dst, "video") == packets(ref, "video")  # the same encoded frames, bit for bit
    assert [t for t, _ in frames(dst)] == [t for t, _ in frames(ref)]
    assert packets(dst, "audio") == packets(src, "audio")
    assert not work_folder(dst).exists()


def test_killed_cli_resumes(tmp_path, up, capsys):
    src = make_clip(tmp_path / "in.mkv", n=6, vfr=True)
    args = [str(src), "-o", str(tmp_path / "out.mkv"), "--segment-seconds", "0.25", "--backend", "torch",
            "--device", "cpu", "--tile", "0", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **{SIGNAL_AFTER_ENV: "1:KILL"})
    cut = subprocess.run([sys.executable, "-m", "lesrcnn", "upscale", *args], capture_output=True, text=True,
                         env=env, timeout=300)
    assert cut.returncode == -9, cut.stderr
    dst = tmp_path / "out.mkv"
    assert not dst.exists() and (work_folder(dst) / "segment_000000.seg").is_file()
    assert main(["upscale", *args]) == 0, capsys.readouterr().err  # the same command again: resumes
    ref = tmp_path / "ref.mkv"
    assert main(["upscale", *args[:2], str(ref), *args[3:]]) == 0  # uninterrupted
    assert packets(dst, "video") == packets(ref, "video")
    assert [t for t, _ in frames(dst)] == [t for t, _ in frames(src)]


def test_resume_refuses_changed_options(tmp_path, up, capsys):
    src = make_clip(tmp_path / "in.mkv", n=2, audio=False)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.mkv"), "--resume", *FAST]) == 2
    assert "cannot resume" in capsys.readouterr().err


# --- bad input: one line, exit 2 (1 when part of the video was written), no half file --------------------

def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lesrcnn: error")]
    assert len(err) == 1, err
    return err[0]


def test_truncated_video_keeps_what_decodes(tmp_path, capsys):
    src = make_clip(tmp_path / "t.mkv", n=8, audio=False)
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * 0.6)])
    dst = tmp_path / "t_x2.mkv"
    assert main(["upscale", str(src), "-o", str(dst), *FAST]) == 1
    msg = _one_error(capsys)
    assert "truncated" in msg and "frames that decoded" in msg
    assert 0 < len(frames(dst)) < 8


def test_bad_inputs(tmp_path, capsys):
    audio_only = tmp_path / "sound.m4a"
    with av.open(str(audio_only), "w") as out:
        a = out.add_stream("aac", rate=8000)
        _sine(out, a, 0.3)
    garbage = tmp_path / "noise.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))  # fixed: FFmpeg probes a rare random file as audio
    clip = make_clip(tmp_path / "ok.mp4", n=2, audio=False)
    odd = make_clip(tmp_path / "odd.mkv", n=1, audio=False, pix_fmt="yuv444p", size=(W + 1, H + 1))
    cases = [([str(audio_only)], "no video stream"), ([str(garbage)], "not a video"),
             ([str(clip), "--max-pixels", "100"], "--max-pixels"), ([str(clip), "--codec", "nope"], "no such video"),
             ([str(clip), "--crf", "99"], "--crf"), ([str(odd), "-s", "3", "--pix-fmt", "yuv420p"], "even sizes")]
    for args, words in cases:
        dst = tmp_path / "out.mp4"
        assert main(["upscale", *args, "-o", str(dst), *FAST]) == 2, args
        msg = _one_error(capsys)
        assert words in msg, msg
        assert not dst.exists() and not work_folder(dst).exists()


def test_unsupported_codec(tmp_path, capsys):
    src = tmp_path / "odd.nut"
    with av.open(str(src), "w") as out:  # AVS2: muxable, but PyAV's FFmpeg has no decoder for it
        s = out.add_mux_stream("avs2", width=W, height=H)
        for i in range(2):
            p = av.Packet(b"\x00\x00\x01" + bytes(range(64)))
            p.pts = p.dts = 40 * i
            p.time_base, p.stream = Fraction(1, 1000), s
            out.mux(p)
    dst = tmp_path / "o.mkv"
    assert main(["upscale", str(src), "-o", str(dst), *FAST]) == 2
    assert "unsupported video codec" in _one_error(capsys)
    assert not dst.exists()


# --- finding videos -------------------------------------------------------------------------------------

def test_folder_mixing_images_and_videos(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mix"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(picture(0)).save(folder / "still.png")
    make_clip(folder / "sub" / "clip.mkv", n=2, audio=False)
    (folder / "notes.txt").write_text("not media")
    out = tmp_path / "out"
    assert main(["upscale", str(folder), "-o", str(out), *FAST]) == 0, capsys.readouterr().err
    assert Image.open(out / "still.png").size == (2 * W, 2 * H)
    assert info(out / "sub" / "clip.mkv")["size"] == (2 * W, 2 * H)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))  # one bad video: exit 1
    assert main(["upscale", str(folder), "-o", str(tmp_path / "again"), *FAST]) == 1
    assert "broken.mp4" in _one_error(capsys)
    assert (tmp_path / "again" / "sub" / "clip.mkv").is_file() and (tmp_path / "again" / "still.png").is_file()


def test_detected_by_content(tmp_path):
    from PIL import Image

    clip = make_clip(tmp_path / "clip.mp4", n=2, audio=False)
    renamed = clip.rename(tmp_path / "clip.data")
    Image.fromarray(picture(0)).save(tmp_path / "still.png")
    assert is_video(renamed)
    assert not is_video(tmp_path / "still.png")


def test_without_pyav_images_still_work(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = tmp_path / "mix"
    folder.mkdir()
    Image.fromarray(picture(0)).save(folder / "still.png")
    clip = make_clip(folder / "clip.mp4", n=1, audio=False)
    monkeypatch.setitem(sys.modules, "av", None)  # as if the [video] extra were not installed
    out = tmp_path / "out"
    assert main(["upscale", str(folder), "-o", str(out), *FAST]) == 0
    assert (out / "still.png").is_file() and not (out / "clip.mp4").exists()
    assert "lesrcnn[video]" in capsys.readouterr().err
    assert main(["upscale", str(clip), "-o", str(tmp_path / "x.mp4"), *FAST]) == 2
    assert "lesrcnn[video]" in _one_error(capsys)


def test_output_names_and_what_counts_as_a_video(tmp_path, capsys):
    from PIL import Image

    clip = make_clip(tmp_path / "c.mp4", n=2, audio=False)
    assert main(["upscale", str(clip), "-o", str(tmp_path / "c.png"), *FAST]) == 2
    assert "not a video file name" in _one_error(capsys)
    assert main(["upscale", str(clip), "-o", "-", *FAST]) == 2
    assert "stdout" in _one_error(capsys)
    folder = tmp_path / "mix"
    folder.mkdir()
    Image.fromarray(picture(0)).save(folder / "still.png")
    (folder / "notes.ts").write_text("export const x = 1;\n")  # TypeScript, not a video
    data = clip.rename(tmp_path / "c.data")  # a video by its content: an output container of ours
    out = tmp_path / "out"
    assert main(["upscale", str(folder), str(data), "-o", str(out), *FAST]) == 0, capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["c.mkv", "mix/still.png"]
    assert info(out / "c.mkv")["size"] == (2 * W, 2 * H)
