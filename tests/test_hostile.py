"""A hostile corpus, written by the tests: looping symlinks, paths that lead back to the input,
damaged and poisoned weights, names with newlines, tiny images, a full disk, broken pipes,
signals, kill -9 and two runs racing for one folder.

Every case asserts the exit status, exactly one ``lesrcnn: error`` line (no traceback, no
"unexpected" catch-all), no partial output, and inputs unchanged (sha256 before and after).
Most cases run the real entry point in this process (``run_main``: torch is imported once);
signals, pipes and races need real processes.
"""
from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, natural_image, run_main, sha256_tree
from lesrcnn import weights as W
from lesrcnn.model import build

TEMP_MARK = ".lesrcnn-tmp-"


def one_error(r, code: int = 2, contains: str | None = None) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lesrcnn: error")]
    assert len(lines) == 1, r.stderr
    assert "unexpected" not in lines[0], lines[0]
    if contains:
        assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARK in p.name or p.name.endswith(".tmp")]


def cli_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", **extra)


# --- 1. symlink loops --------------------------------------------------------------------------

def test_symlink_loops_end_a_looping_file_fails_alone_fifos_are_skipped(tmp_path, capfd):
    src = tmp_path / "loop"
    save(src / "a.png", natural_image(10, 12))
    save(src / "deep" / "b.png", natural_image(8, 9, seed=1))
    (src / "sub").symlink_to(".")  # a loop into itself
    (src / "deep" / "up").symlink_to("..")  # and one back to its parent
    (src / "x.png").symlink_to("y.png")
    (src / "y.png").symlink_to("x.png")  # a file symlink loop
    os.mkfifo(src / "fifo.png")  # reading it would block for ever: not a file to upscale
    before = sha256_tree(src)
    for i, spec in enumerate([str(src / "**" / "*.png"), str(src)]):
        out = tmp_path / f"out{i}"
        if i == 0:  # a process with a time limit: a walk that follows the loops never ends
            r = subprocess.run([sys.executable, "-m", "lesrcnn", "upscale", spec, "-o", str(out), "-q"],
                               capture_output=True, text=True, env=cli_env(), timeout=300)
        else:
            r = run_main(capfd, "upscale", spec, "-o", out, "-q")
        assert r.returncode == 1, r.stderr  # x.png and y.png fail, each on its own line
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lesrcnn: error")]
        assert len(errors) == 2 and all("symbolic links" in e for e in errors), r.stderr
        written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert written == ["a.png", "deep/b.png"]  # each real folder once: no nested copies
    assert sha256_tree(src) == before


# --- 3. outputs that lead back to an input ------------------------------------------------------

def test_an_output_path_through_a_missing_folder_never_replaces_the_input(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "a.png", natural_image(8, 8))
    save(tmp_path / "in" / "b.png", natural_image(8, 9, seed=1))
    save(tmp_path / "in" / "c.png", natural_image(9, 8, seed=2))
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    before = sha256_tree(tmp_path)
    for args in (["a.png", "-o", "new/../a.png"], ["in", "-o", "nothere/../in"], ["a.png", "-o", "hard.png"],
                 ["in", "-o", "x/y/../../in"], [str(tmp_path / "a.png"), "-o", "./new/./../a.png"]):
        one_error(run_main(capfd, "upscale", *args), 2, "is an input")
    assert sha256_tree(tmp_path) == before
    assert not (tmp_path / "new").exists() and not (tmp_path / "nothere").exists()


def test_eval_output_never_replaces_a_file(tmp_path, capfd):
    data = tmp_path / "Set"
    for i in range(2):
        save(data / f"im{i}.png", natural_image(30, 32, seed=i))
    (tmp_path / "res.txt").write_text("keep me")
    before = sha256_tree(tmp_path)
    one_error(run_main(capfd, "eval", "--bicubic", "--data", data, "-o", tmp_path / "res.txt"), 2, "exists")
    one_error(run_main(capfd, "eval", "--bicubic", "--data", data, "-o", data / "im0.png", "--overwrite"), 2,
              "is an input")
    assert sha256_tree(tmp_path) == before
    r = run_main(capfd, "eval", "--bicubic", "--data", data, "-o", tmp_path / "res.txt", "--overwrite")
    assert r.returncode == 0 and (tmp_path / "res.txt").read_text().startswith("dataset")


# --- 7, 11. weights that must be refused ---------------------------------------------------------

def _weights_corpus(d: Path) -> dict[str, str]:
    """file name -> what the one error line must say."""
    from safetensors.torch import save_file

    d.mkdir()
    sd = {k: v.clone() for k, v in build(2).state_dict().items()}
    meta = {"format": "lesrcnn", "scales": "2", "mean": "0.4488,0.4371,0.4040", "variant": "full"}
    nan = dict(sd, **{"head.weight": sd["head.weight"].clone().index_fill_(0, torch.tensor([0]), float("nan"))})
    inf = dict(sd, **{"tail.weight": sd["tail.weight"].clone().fill_(float("inf"))})
    save_file(nan, d / "nan.safetensors", metadata=meta)
    save_file(inf, d / "inf.safetensors", metadata=meta)
    save_file(sd, d / "nanmean.safetensors", metadata=dict(meta, mean="nan,0.4,0.4"))
    save_file({k: v.to(torch.int32) for k, v in sd.items()}, d / "int32.safetensors", metadata=meta)
    torch.save({"upsample.up.body.0.weight": torch.empty(256, 64, 3, 3, device="meta"),
                "conv1.0.weight": torch.empty(64, 3, 3, 3, device="meta")}, d / "meta.pth")
    good = (d / "good.safetensors")
    W.save(build(2), good)
    raw = good.read_bytes()
    (d / "hdr2e40.safetensors").write_bytes((2**40).to_bytes(8, "little") + raw[8:])
    buf = io.BytesIO()
    torch.save({"upsample.up.body.0.weight": torch.zeros(256, 64, 3, 3), "conv1.0.weight": torch.zeros(64, 3, 3, 3)},
               buf)
    pth = buf.getvalue()
    rng = random.Random(0)
    for i in range(3):  # flipped bytes in a zip checkpoint: KeyError, IndexError, struct.error in torch
        b = bytearray(pth)
        for _ in range(30):
            b[rng.randrange(len(b))] = rng.randrange(256)
        (d / f"garbage{i}.pth").write_bytes(bytes(b))
    (d / "truncated.pth").write_bytes(pth[: len(pth) // 2])
    (d / "legacy_garbage.pth").write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s." + bytes(range(256)))
    (d / "empty.pth").write_bytes(b"")

    class Evil:
        def __reduce__(self):
            return (open, (str(d / "pwned"), "w"))

    import pickle
    for protocol in (2, 4):
        with open(d / f"evil{protocol}.pth", "wb") as f:
            pickle.dump({"conv1.0.weight": Evil()}, f, protocol=protocol)
    return {"nan.safetensors": "nan", "inf.safetensors": "inf", "nanmean.safetensors": "mean",
            "int32.safetensors": "int32", "meta.pth": "meta", "hdr2e40.safetensors": "header",
            "garbage0.pth": "", "garbage1.pth": "", "garbage2.pth": "", "truncated.pth": "",
            "legacy_garbage.pth": "", "empty.pth": "", "evil2.pth": "refused", "evil4.pth": "nothing in it was run"}


def test_bad_weights_are_refused_at_load_with_one_line(tmp_path, capfd):
    cases = _weights_corpus(tmp_path / "w")
    img = save(tmp_path / "a.png", natural_image(8, 8))
    before = sha256_tree(tmp_path)
    for name, want in cases.items():
        w = tmp_path / "w" / name
        line = one_error(run_main(capfd, "upscale", img, "-o", tmp_path / "o.png", "--weights", w), 2, want)
        assert name in line and len(line) < 400, line  # ours, naming the file; not torch's essay
        assert not (tmp_path / "o.png").exists()
    for name in ("nan.safetensors", "evil2.pth", "hdr2e40.safetensors"):
        one_error(run_main(capfd, "info", tmp_path / "w" / name), 2, name)
    assert not (tmp_path / "w" / "pwned").exists()
    assert sha256_tree(tmp_path) == before


# --- 12. odd images, names and limits ------------------------------------------------------------

def test_names_with_newlines_tiny_eval_images_and_pixel_limits(tmp_path, capfd):
    d = tmp_path / "odd"
    d.mkdir()
    (d / "bad\nname.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save(d / "ok.png", natural_image(8, 8))
    before = sha256_tree(d)
    r = run_main(capfd, "upscale", d, "-o", tmp_path / "o1", "-q")
    line = one_error(r, 1, "bad\\nname.png")  # escaped: still one line
    r = run_main(capfd, "upscale", d / "bad\nname.png", "-o", tmp_path / "o2.png")
    one_error(r, 2, "bad\\nname.png")
    assert not (tmp_path / "o2.png").exists() and line
    r = run_main(capfd, "upscale", d / "ok.png", "-o", tmp_path / "o3.png", "--max-pixels", "10")
    line = one_error(r, 2, "10 pixels")
    assert "0.0 MP" not in line and not (tmp_path / "o3.png").exists()
    tiny = tmp_path / "tiny"
    save(tiny / "t.png", natural_image(5, 5))
    r = run_main(capfd, "eval", "--bicubic", "--data", tiny, "-s", "4")
    one_error(r, 2, "too small")
    assert "Warning" not in r.stderr and "kernel" not in r.stderr.lower()
    assert sha256_tree(d) == before


def test_a_full_disk_names_the_file_and_leaves_no_temporaries(tmp_path):
    import resource

    src = tmp_path / "in"
    save(src / "a.png", (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    save(src / "b.png", (np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8))
    before = sha256_tree(src)
    out = tmp_path / "out"

    def small_disk():  # writes beyond 4 KiB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run([sys.executable, "-m", "lesrcnn", "upscale", str(src), "-o", str(out), "-q"],
                       capture_output=True, text=True, env=cli_env(PYTHONDONTWRITEBYTECODE="1"),
                       preexec_fn=small_disk, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lesrcnn: error")]
    assert len(errors) == 2, r.stderr
    for name, line in zip(("a.png", "b.png"), errors):
        assert str(out / name) in line and TEMP_MARK not in line, line
    assert not [p for p in out.rglob("*") if p.is_file()] and sha256_tree(src) == before


# --- 9. stdout that closes early -------------------------------------------------------------------

def test_a_reader_that_quits_early_is_an_error_not_success(tmp_path):
    big = save(tmp_path / "n.png", (np.random.default_rng(0).random((160, 160, 3)) * 255).astype(np.uint8))
    for unbuffered in ("1", ""):
        p = subprocess.Popen([sys.executable, "-m", "lesrcnn", "upscale", str(big), "-o", "-", "-q", "--format", "bmp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(PYTHONUNBUFFERED=unbuffered))
        assert p.stdout.read(100)
        p.stdout.close()  # the reader quits (like `| head -c 100`)
        err = p.stderr.read().decode()
        p.wait(timeout=300)
        one_error(subprocess.CompletedProcess([], p.returncode, "", err), 2, "pipe")


# --- 13. signals, kill -9, two runs on one folder ------------------------------------------------------

def _slow_writer(tmp_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    """An upscale whose encoding (lossless WebP of noise) lasts long enough to be caught writing."""
    src = save(tmp_path / "noise.png", (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8))
    return subprocess.Popen([sys.executable, "-m", "lesrcnn", "upscale", str(src), "-o", str(out), "-s", "4",
                             "--quality", "100", "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())


def _catch_writing(p: subprocess.Popen, folder: Path, timeout: float = 240) -> bool:
    """Wait until ``p`` has a temporary file in ``folder`` (True) or has ended (False)."""
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < timeout:
        if folder.is_dir() and any(TEMP_MARK in n for n in os.listdir(folder)):
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_while_writing_leaves_no_partial_output(tmp_path, sig):
    out_dir = tmp_path / "out"
    out = out_dir / "big.webp"
    for _ in range(3):  # the write lasts about a second; catch it (rarely missed on a loaded machine)
        p = _slow_writer(tmp_path, out)
        if _catch_writing(p, out_dir):
            break
        p.wait()
        out.unlink(missing_ok=True)
    else:
        pytest.fail("never caught the upscale while it was writing")
    p.send_signal(sig)
    err = p.communicate(timeout=120)[1]
    assert not out.exists()  # never a half-written file at the final name
    if sig == signal.SIGTERM:  # like Ctrl-C: the temporary file is removed on the way out
        assert p.returncode == 143 and "Traceback" not in err and "terminated" in err, err
        assert not temps(out_dir)
        return
    assert p.returncode == -9 and temps(out_dir)  # kill -9 cannot clean up ...
    time.sleep(2.5)  # ... so the next run on that folder does, once the temp is unlocked and stale
    r = _slow_writer(tmp_path, out_dir / "other.png")
    assert r.wait(timeout=300) == 0, r.stderr.read()
    assert not temps(out_dir) and Image.open(out_dir / "other.png").size == (192, 192)


def test_two_runs_into_one_folder_never_replace_each_others_outputs(tmp_path):
    src = tmp_path / "in"
    for i in range(4):
        save(src / f"i{i}.png", (np.random.default_rng(i).random((20, 20, 3)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    runs = {q: subprocess.Popen([sys.executable, "-m", "lesrcnn", "upscale", str(src), "-o", str(out),
                                 "--quantize", q, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cli_env()) for q in ("round", "truncate")}
    results = {q: (p.wait(timeout=600), p.stderr.read()) for q, p in runs.items()}
    from lesrcnn.upscale import Upscaler

    ref = {q: Upscaler(2, quantize=q, backend="torch") for q in runs}
    for q, (code, err) in results.items():
        assert code in (0, 1, 2) and "Traceback" not in err, err
    for i in range(4):
        name = f"i{i}.png"
        claimed = [q for q, (code, err) in results.items() if code != 2 and name not in err]
        assert len(claimed) == 1, (name, results)  # exactly one run wrote it; the other was told
        want = ref[claimed[0]].upscale_array(np.asarray(Image.open(src / name)))
        assert np.array_equal(np.asarray(Image.open(out / name)), want), name
    assert sorted(p.name for p in out.iterdir()) == [f"i{i}.png" for i in range(4)]
