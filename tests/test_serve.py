"""`lesrcnn serve`: the real server in a subprocess, real HTTP, and a real browser (Chromium)."""
from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error, natural_image, run_cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lesrcnn.io import Picture, read_picture, write_picture  # noqa: E402
from lesrcnn.upscale import Upscaler  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the whole module: (base url, its process)."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("serve") / "stderr.txt", "w+")  # a file: a full pipe would block it
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "lesrcnn", "serve", "--port", str(port), "--timeout", "900"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            proc.wait()
            log.seek(0)
            pytest.fail(f"server did not start: {log.read()[-2000:]}")
        time.sleep(0.3)
    yield base, proc
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log.seek(0)
    err = log.read()
    log.close()
    assert "Traceback" not in err, err


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    write_picture(Picture(color=a), buf, "PNG")
    return buf.getvalue()


def _assert_alive(base: str) -> None:
    r = httpx.get(f"{base}/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_page_health_info(server):
    base, _ = server
    _assert_alive(base)
    page = httpx.get(base + "/", timeout=10)
    assert page.status_code == 200 and "LESRCNN" in page.text and 'type="file"' in page.text
    info = httpx.get(base + "/v1/info", timeout=10).json()
    assert info["scales"] == [2, 3, 4] and "default" in info["weights"]
    missing = httpx.get(base + "/nope", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()


def test_upscale_equals_the_library(server, tmp_path):
    base, _ = server
    img = natural_image(24, 20, seed=7)
    data = png_bytes(img)
    r = httpx.post(f"{base}/v1/upscale", files={"file": ("a.png", data, "image/png")}, data={"scale": "3"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
    got = read_picture(r.content).color
    (tmp_path / "a.png").write_bytes(data)
    Upscaler(3, None, "cpu").upscale_file(tmp_path / "a.png", tmp_path / "b.png")
    assert np.array_equal(got, read_picture(tmp_path / "b.png").color)  # the same pixels as the CLI/API
    raw = httpx.post(f"{base}/v1/upscale?scale=2", content=data, timeout=60)
    assert raw.status_code == 200 and read_picture(raw.content).color.shape == (48, 40, 3)


def test_keeps_16_bit_and_alpha(server):
    base, _ = server
    rng = np.random.default_rng(1)
    color = (natural_image(10, 12, seed=2).astype(np.uint16) * 257)
    alpha = rng.integers(0, 65535, (10, 12), dtype=np.uint16)
    buf = io.BytesIO()
    write_picture(Picture(color=color, alpha=alpha), buf, "PNG")
    r = httpx.post(f"{base}/v1/upscale?scale=2", content=buf.getvalue(), timeout=60)
    assert r.status_code == 200, r.text
    pic = read_picture(r.content)
    assert pic.bits == 16 and pic.alpha is not None and pic.color.shape == (20, 24, 3)


def _png_bomb(w: int, h: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A valid PNG of w x h black pixels that compresses to almost nothing."""
    bpp = {(8, 2): 3, (1, 0): 1 / 8}[(bit_depth, color_type)]
    row = b"\0" * (1 + int(np.ceil(w * bpp)))
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD = {  # case -> (the request's keywords, made when the case runs; the status it must get)
    "empty body": (lambda: dict(content=b""), 400),
    "text": (lambda: dict(content=b"hello, this is not an image\n" * 20), 400),
    "truncated png": (lambda: dict(content=png_bytes(natural_image(64, 64))[:900]), 400),
    "bomb 6000x6000": (lambda: dict(content=_png_bomb(6000, 6000)), 413),
    "bomb 20000x20000 1-bit": (lambda: dict(content=_png_bomb(20000, 20000, 1, 0)), 413),
    "50 MB upload": (lambda: dict(content=os.urandom(1024) * (50 * 1024)), 413),
    "scale 5": (lambda: dict(content=png_bytes(natural_image(8, 8)), params={"scale": "5"}), 400),
    "unknown weights": (lambda: dict(content=png_bytes(natural_image(8, 8)), params={"weights": "nope"}), 400),
    "form without file": (lambda: dict(data={"scale": "2"}, files={"other": ("x.png", b"abc", "image/png")}), 400),
    "broken multipart": (lambda: dict(content=b"--xx\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                                      headers={"content-type": "multipart/form-data; boundary=xx"}), 400),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_json_4xx_and_the_server_stays_up(server, case):
    base, _ = server
    make, status = BAD[case]
    r = httpx.post(f"{base}/v1/upscale", timeout=60, **make())
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"] and "Traceback" not in body["error"]
    _assert_alive(base)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_twenty_concurrent_uploads(server):
    base, proc = server
    data = [png_bytes(natural_image(256, 256, seed=i)) for i in range(20)]

    def post(d: bytes):
        return httpx.post(f"{base}/v1/upscale?scale=2", content=d, timeout=900)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        rs = list(pool.map(post, data))
    dt = time.perf_counter() - t0
    assert [r.status_code for r in rs] == [200] * 20, [r.text[:200] for r in rs if r.status_code != 200]
    assert all(read_picture(r.content).color.shape == (512, 512, 3) for r in rs)
    peak = _vm_hwm_mb(proc.pid)
    print(f"\n20 concurrent 256x256 x2 uploads: {dt:.1f} s, server peak RSS (VmHWM) {peak:.0f} MB")
    assert peak < 1500  # one tiled inference at a time: bounded, whatever the queue holds
    _assert_alive(base)


def test_real_browser(server, tmp_path):
    """Chromium (the distribution's) via Playwright: pick a real photo, wait for the result."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    base, _ = server
    demo = REPO / "examples" / "demo.png"
    w, h = read_picture(demo).width, read_picture(demo).height
    shot = tmp_path / "serve.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(base + "/")
            page.select_option("#scale", "2")
            page.set_input_files("#file", str(demo))
            page.wait_for_selector("#result-size[data-width]", timeout=60_000)
            size = page.eval_on_selector("#after", "e => [e.naturalWidth, e.naturalHeight]")
            assert size == [2 * w, 2 * h]
            assert page.get_attribute("#download", "download") == "demo_x2.png"
            assert "error" not in (page.get_attribute("#status", "class") or "")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert read_picture(shot).width > 0
    if os.environ.get("LESRCNN_SCREENSHOT"):  # how docs/serve.png is made
        Path(os.environ["LESRCNN_SCREENSHOT"]).write_bytes(shot.read_bytes())


def test_port_in_use_is_one_line():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        r = run_cli("serve", "--port", str(taken.getsockname()[1]), timeout=120)
    assert_one_line_error(r, 2, "address already in use")
