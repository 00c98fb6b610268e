"""``lesrcnn serve``: a web page and an HTTP API for upscaling (FastAPI + uvicorn, extra ``serve``).
Every refusal is a JSON ``{"error": ...}`` with a 4xx status, never a traceback; bounded inferences,
queue and body size keep memory bounded whatever the clients send."""
from __future__ import annotations

import argparse
import asyncio
import io
import socket
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from .errors import LesrcnnError

READ_TIMEOUT = 30.0  # seconds to receive a request body; more: 408


def check_pixels(data: bytes, max_pixels: int, name: str) -> None:
    """Refuse an image whose header declares too many pixels, before it waits for an inference slot."""
    from PIL import Image
    from starlette.exceptions import HTTPException

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise HTTPException(413, f"{name}: too many pixels (decompression bomb guard)") from None
    except Exception:  # not an image, damaged header: read_picture words it
        return
    if w * h > max_pixels:
        raise HTTPException(413, f"{name}: {w}x{h} = {w * h / 1e6:.1f} MP is above the server's limit of "
                                 f"{max_pixels / 1e6:g} MP")


async def read_upload(request, max_upload: int) -> tuple[bytes, str, dict]:
    """(image bytes, file name, parameters: the query's and the form's fields) from a multipart form
    or a raw body of at most ``max_upload`` bytes (413 beyond, after draining a bounded amount so
    that the client reads the answer), received within READ_TIMEOUT (408)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    chunks, size = [], 0

    async def pull() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload * 4:
                break  # stop draining; the connection closes after the answer
            if size <= max_upload:
                chunks.append(chunk)
    try:
        await asyncio.wait_for(pull(), READ_TIMEOUT)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the upload took longer than {READ_TIMEOUT:g} s") from None
    except Exception:  # the client went away mid-body
        raise HTTPException(400, "the upload was interrupted") from None
    if size > max_upload:
        raise HTTPException(413, f"upload larger than the limit of {max_upload / 2**20:g} MB")
    body, params = b"".join(chunks), dict(request.query_params)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        return body, "upload", params

    async def receive() -> dict:  # the form parser reads the body received above
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=8, max_part_size=4096)
    except Exception as e:
        raise HTTPException(400, f"bad multipart form: {getattr(e, 'detail', None) or e}") from None
    f = form.get("file")
    if f is None or isinstance(f, str):
        raise HTTPException(400, "the form has no file in field 'file'")
    data = await f.read()
    params.update((k, v) for k, v in form.items() if isinstance(v, str))
    await form.close()
    return data, (f.filename or "upload")[:200], params


class Service:
    """The models, loaded once each, and the bounds on the requests that use them."""

    def __init__(self, a: argparse.Namespace):
        from .weights import embedded_path

        self.a, self.admitted, self.max_upload = a, 0, int(a.max_upload_mb * 2**20)
        # weight-set name -> weights.load's spec; --weights FILE (or None: embedded) is "default"
        self.sets = {"default": a.weights, **({"real": "real"} if embedded_path("real").is_file() else {})}
        self._ups, self._guard = {}, threading.Lock()  # (scale, weight set) -> (Upscaler, its lock)
        # Its threads are the inference slots. A request that times out while queued here is
        # cancelled and never runs; one that is running keeps its slot until the work ends.
        self.pool = ThreadPoolExecutor(max_workers=a.concurrency, thread_name_prefix="lesrcnn-infer")

    def upscaler(self, scale: int, weights: str):
        """The Upscaler of (scale, weight set), loaded on first use, and its lock (one image at a
        time: with --concurrency above 1, other scales and weight sets run beside it)."""
        from .upscale import Upscaler

        with self._guard:
            if (scale, weights) not in self._ups:
                up = Upscaler(scale, self.sets[weights], self.a.device, tile=self.a.tile)
                self._ups[scale, weights] = up, threading.Lock()
            return self._ups[scale, weights]

    def upscale_bytes(self, data: bytes, scale: int, weights: str, name: str) -> bytes:
        """Decode, upscale, encode PNG: the worker-thread part of a request."""
        from .io import read_picture, write_picture

        up, lock = self.upscaler(scale, weights)
        pic = read_picture(data, self.a.max_pixels, name=name)
        with lock:
            res = up.upscale_picture(pic, pic.bits)
        buf = io.BytesIO()
        write_picture(res, buf, "PNG")
        return buf.getvalue()

    async def handle(self, request):
        """POST /v1/upscale: admission (the queue bound), the upload, checks, an inference thread, PNG."""
        from fastapi.responses import Response
        from starlette.exceptions import HTTPException

        from .model import check_scale

        if self.admitted >= self.a.queue:
            raise HTTPException(503, f"busy: {self.admitted} requests in progress; retry later")
        self.admitted += 1
        try:
            data, name, params = await read_upload(request, self.max_upload)
            if not data:
                raise HTTPException(400, "no image in the request (empty body or empty file)")
            field, weights = params.get("scale", "2").strip()[:20], params.get("weights", "default")
            scale = check_scale(int(field) if field.isdigit() else field)
            if weights not in self.sets:
                raise HTTPException(400, f"unknown weights {weights[:40]!r}; choose from "
                                         f"{', '.join(self.sets)}")
            check_pixels(data, self.a.max_pixels, name)
            job = asyncio.get_running_loop().run_in_executor(self.pool, self.upscale_bytes, data, scale,
                                                             weights, name)
            png = await asyncio.wait_for(job, self.a.timeout)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"not done within {self.a.timeout:g} s; try a smaller image") from None
        except LesrcnnError as e:
            raise HTTPException(400, str(e)) from None
        except (MemoryError, RuntimeError) as e:
            reason = f"the server could not process this image ({type(e).__name__})"
            raise HTTPException(503, reason) from None
        finally:
            self.admitted -= 1
        return Response(png, media_type="image/png", headers={"X-Lesrcnn-Scale": str(scale)})


def create_app(a: argparse.Namespace):
    """The ASGI app for ``lesrcnn serve``'s options. The default weight set's x2 model loads here,
    so that a broken installation fails at start rather than on the first request."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from . import __version__
    from .model import SCALES

    warnings.simplefilter("ignore")  # Pillow's bomb warnings and image notes: the API answers instead
    service = Service(a)
    service.upscaler(2, "default")
    page = (resources.files("lesrcnn") / "web" / "index.html").read_text(encoding="utf-8")

    async def refusal(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    async def internal_error(request, exc):  # no traceback ever reaches a client
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    app = FastAPI(title="LESRCNN", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers={HTTPException: refusal, Exception: internal_error})
    app.add_route("/", lambda request: HTMLResponse(page))
    app.add_route("/v1/upscale", service.handle, methods=["POST"])  # reads the body itself (limits)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "admitted": service.admitted}

    @app.get("/v1/info")
    async def info():
        return {"version": __version__, "scales": list(SCALES), "weights": list(service.sets),
                "max_upload_bytes": service.max_upload, "max_pixels": a.max_pixels}

    return app


def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import device_arg, number

    p = sub.add_parser("serve", help="web page and HTTP API for upscaling (needs lesrcnn[serve])",
                       description="A web page and an HTTP API (POST /v1/upscale, GET /healthz) for "
                                   "upscaling; binds to this machine only unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--weights", metavar="FILE", help="checkpoint served as the 'default' weight set "
                                                     "(default: the embedded weights)")
    p.add_argument("--device", default="cpu", type=device_arg, help="auto, cpu, cuda, cuda:N or mps")
    positive = number(0, float, strict=True)
    p.add_argument("--max-upload-mb", type=positive, default=25.0, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=number(1), default=4_000_000, help="largest input in pixels (413 above)")
    p.add_argument("--concurrency", type=number(1), default=1, help="inferences running at once")
    p.add_argument("--queue", type=number(1), default=32, help="requests admitted at once (503 above)")
    p.add_argument("--timeout", type=positive, default=120.0, help="seconds to answer an upload (504 above)")
    p.add_argument("--tile", type=int, default=256, help="LR tile side for inference (bounds memory)")
    p.set_defaults(func=run)
    return p


def run(a) -> int:
    import uvicorn  # missing: cli.main names the extra to install

    try:  # a taken port or a bad host is one line here, not uvicorn's log
        socket.create_server((a.host, a.port)).close()
    except (OSError, OverflowError) as e:  # OverflowError: a port outside 0..65535
        reason = getattr(e, "strerror", None) or e
        raise LesrcnnError(f"cannot listen on {a.host}:{a.port}: {reason}") from None
    app = create_app(a)
    print(f"lesrcnn: serving on http://{a.host}:{a.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_keep_alive=5,
                limit_concurrency=a.queue * 2 + 16)
    return 0
