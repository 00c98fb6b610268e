"""``lesrcnn serve``: a web page and an HTTP API for upscaling (FastAPI + uvicorn, extra ``serve``).

Routes: POST /v1/upscale (a multipart ``file`` or the raw image; ``scale``, ``weights`` as form
fields or in the query), GET /healthz, GET /v1/info, GET / (the page). Every refusal is a JSON
``{"error": ...}`` with a 4xx status, never a traceback. At most ``concurrency`` tiled
inferences run and ``queue`` requests are admitted at a time: memory stays bounded.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import socket
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

from .errors import LesrcnnError

SCALES = (2, 3, 4)


@dataclass(frozen=True)
class Limits:
    max_upload: int = 25 * 1024 * 1024  # bytes of one request body
    max_pixels: int = 4_000_000  # input pixels (x4 of that is a 64 MP output)
    concurrency: int = 1  # inferences at a time
    queue: int = 32  # requests admitted at a time (reading, waiting or running); more: 503
    timeout: float = 120.0  # seconds from admission to the answer; more: 504
    read_timeout: float = 30.0  # seconds to receive the body; more: 408
    tile: int = 256  # LR tile side (tiled == untiled; bounds activation memory)


class ApiError(Exception):
    """A refusal, shaped like Starlette's HTTPException so that one handler answers both."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def check_pixels(data: bytes, max_pixels: int, name: str) -> None:
    """Refuse an image whose header declares too many pixels, before anything is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"{name}: too many pixels (decompression bomb guard)") from None
    except Exception:  # not an image, damaged header: read_picture words it
        return
    if w * h > max_pixels:
        raise ApiError(413, f"{name}: {w}x{h} = {w * h / 1e6:.1f} MP is above the server's limit of "
                            f"{max_pixels / 1e6:g} MP")


def parse_scale(v) -> int:
    try:
        s = int(str(v).strip())
    except ValueError:
        s = 0
    if s not in SCALES:
        raise ApiError(400, f"scale must be 2, 3 or 4, got {str(v)[:20]!r}")
    return s


async def read_body(request, limits: Limits) -> bytes:
    """The body, at most ``max_upload`` bytes (413 beyond, after draining a bounded amount so
    that the client reads the answer), within ``read_timeout`` (408)."""
    chunks, size = [], 0

    async def pull() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_upload * 4:
                break  # stop draining; the connection closes after the answer
            if size <= limits.max_upload:
                chunks.append(chunk)
    try:
        await asyncio.wait_for(pull(), limits.read_timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the upload took longer than {limits.read_timeout:g} s") from None
    except Exception:  # the client went away mid-body
        raise ApiError(400, "the upload was interrupted") from None
    if size > limits.max_upload:
        raise ApiError(413, f"upload larger than the limit of {limits.max_upload / 2**20:g} MB")
    return b"".join(chunks)


async def parse_upload(request, body: bytes) -> tuple[bytes, str, dict]:
    """(image bytes, file name, form fields) from a multipart form or a raw body."""
    from starlette.requests import Request

    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        return body, "upload", {}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=8, max_part_size=4096)
    except Exception as e:
        raise ApiError(400, f"bad multipart form: {getattr(e, 'detail', None) or e}") from None
    f = form.get("file")
    if f is None or isinstance(f, str):
        raise ApiError(400, "the form has no file in field 'file'")
    data = await f.read()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    return data, (f.filename or "upload")[:200], fields


class Service:
    """The request path: admission (the queue bound), body, checks, an inference slot."""

    def __init__(self, limits: Limits, weights: str | None, device: str):
        from .integrations import available_weight_sets

        self.limits, self.device = limits, device
        self.sets = {name: name for name in available_weight_sets()}
        if weights is not None:
            self.sets["default"] = weights  # --weights FILE serves as the default set
        self._ups: dict = {}
        self._guard = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=limits.concurrency, thread_name_prefix="lesrcnn-infer")
        self.slots = asyncio.Semaphore(limits.concurrency)
        self.admitted = self.running = 0

    def upscaler(self, scale: int, weights: str):
        """The Upscaler of (scale, weight set), loaded on first use, and its lock (one image at a
        time: with --concurrency above 1, other scales and weight sets run beside it)."""
        from .integrations import resolve_weights
        from .upscale import Upscaler

        with self._guard:
            if (scale, weights) not in self._ups:
                up = Upscaler(scale, resolve_weights(self.sets[weights]), self.device, tile=self.limits.tile,
                              max_pixels=self.limits.max_pixels)
                self._ups[scale, weights] = up, threading.Lock()
            return self._ups[scale, weights]

    def upscale_bytes(self, data: bytes, scale: int, weights: str, name: str) -> bytes:
        """Decode, upscale, encode PNG: the worker-thread part of a request."""
        from .io import read_picture, write_picture

        up, lock = self.upscaler(scale, weights)
        pic = read_picture(data, self.limits.max_pixels, name=name)
        with lock:
            res = up.upscale_picture(pic, 16 if pic.bits == 16 else 8)
        buf = io.BytesIO()
        write_picture(res, buf, "PNG")
        return buf.getvalue()

    async def handle(self, request):
        from fastapi.responses import Response

        if self.admitted >= self.limits.queue:
            raise ApiError(503, f"busy: {self.admitted} requests in progress; retry later")
        self.admitted += 1
        try:
            png, scale = await asyncio.wait_for(self._process(request), self.limits.timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"not done within {self.limits.timeout:g} s; try a smaller image") from None
        finally:
            self.admitted -= 1
        return Response(png, media_type="image/png", headers={"X-Lesrcnn-Scale": str(scale)})

    async def _process(self, request) -> tuple[bytes, int]:
        data, name, fields = await parse_upload(request, await read_body(request, self.limits))
        if not data:
            raise ApiError(400, "no image in the request (empty body or empty file)")
        scale = parse_scale(fields.get("scale", request.query_params.get("scale", 2)))
        weights = fields.get("weights", request.query_params.get("weights", "default"))
        if weights not in self.sets:
            raise ApiError(400, f"unknown weights {weights[:40]!r}; choose from {', '.join(self.sets)}")
        check_pixels(data, self.limits.max_pixels, name)
        await self.slots.acquire()  # a request that times out while waiting here never runs
        self.running += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, self.upscale_bytes, data, scale, weights, name)
        fut.add_done_callback(self._release)  # the slot frees when the work ends, not the request
        try:
            return await asyncio.shield(fut), scale  # a timeout leaves the thread to finish
        except LesrcnnError as e:
            raise ApiError(400, str(e)) from None
        except (MemoryError, RuntimeError) as e:
            raise ApiError(503, f"the server could not process this image ({type(e).__name__})") from None

    def _release(self, fut) -> None:
        self.running -= 1
        self.slots.release()
        if not fut.cancelled():
            fut.exception()  # retrieved, so a timed-out request's error is not logged as unhandled


def create_app(limits: Limits = Limits(), weights: str | None = None, device: str = "cpu"):
    """The ASGI app. The default weight set's x2 model loads here, so that a broken installation
    fails at start rather than on the first request."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from . import __version__

    warnings.simplefilter("ignore")  # Pillow's bomb warnings and image notes: the API answers instead
    service = Service(limits, weights, device)
    service.upscaler(2, "default")
    app = FastAPI(title="LESRCNN", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    page = (resources.files("lesrcnn") / "web" / "index.html").read_text(encoding="utf-8")

    async def refusal(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    async def internal_error(request, exc):  # no traceback ever reaches a client
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    app.add_exception_handler(HTTPException, refusal)
    app.add_exception_handler(ApiError, refusal)
    app.add_exception_handler(Exception, internal_error)
    app.add_route("/", lambda request: HTMLResponse(page))
    app.add_route("/v1/upscale", service.handle, methods=["POST"])  # reads the body itself (limits)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "running": service.running, "admitted": service.admitted}

    @app.get("/v1/info")
    async def info():
        return {"version": __version__, "scales": list(SCALES), "weights": list(service.sets),
                "max_upload_bytes": limits.max_upload, "max_pixels": limits.max_pixels}

    return app


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="web page and HTTP API for upscaling (needs lesrcnn[serve])",
                       description="A web page and an HTTP API (POST /v1/upscale, GET /healthz) for "
                                   "upscaling; binds to this machine only unless --host says otherwise.")
    d = Limits()
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--weights", metavar="FILE", help="checkpoint served as the 'default' weight set "
                                                     "(default: the embedded weights)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="inference device")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload / 2**20,
                   help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="largest input image, in pixels (413 above)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="inferences running at once")
    p.add_argument("--queue", type=int, default=d.queue, help="requests admitted at once (503 above)")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request (504 above)")
    p.add_argument("--tile", type=int, default=d.tile, help="LR tile side for inference (bounds memory)")
    p.set_defaults(func=run)
    return p


def run(a) -> int:
    import uvicorn  # missing: cli.main names the extra to install

    for name, v, lo in (("--port", a.port, 0), ("--concurrency", a.concurrency, 1), ("--queue", a.queue, 1),
                        ("--max-pixels", a.max_pixels, 1), ("--tile", a.tile, 0)):
        if v < lo:
            raise LesrcnnError(f"{name} must be >= {lo}, got {v}")
    if a.port > 65535 or a.max_upload_mb <= 0 or a.timeout <= 0:
        raise LesrcnnError("--port must be <= 65535, --max-upload-mb and --timeout > 0")
    try:  # a taken port or a bad host is one line here, not uvicorn's log
        socket.create_server((a.host, a.port)).close()
    except OSError as e:
        raise LesrcnnError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e}") from None
    limits = Limits(max_upload=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels,
                    concurrency=a.concurrency, queue=a.queue, timeout=a.timeout, tile=a.tile)
    app = create_app(limits, a.weights, a.device)
    print(f"lesrcnn: serving on http://{a.host}:{a.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_keep_alive=5,
                limit_concurrency=limits.queue * 2 + 16)
    return 0
