"""The FastAPI application: /predict, the Open Inference Protocol v2, admin, the page."""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mnistops import __version__
from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.errors import MnistopsError
from mnistops.imaging import (
    ACCEPTED_IMAGE_TYPES,
    JSON_NUMBERS,
    InputError,
    image_to_pixels,
    pixels_from_values,
)
from mnistops.serve import schemas
from mnistops.serve.batching import MicroBatcher
from mnistops.serve.limits import BodyLimitMiddleware, read_body
from mnistops.serve.models import ModelManager, Served, load_served

STATIC = Path(__file__).with_name("static")
REQUEST_ID_HEADER = "X-Request-ID"
JSON = "application/json"
ACCEPTED_BODIES = "application/json, multipart/form-data (field 'file'), image/png or image/jpeg"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 404, 413, 415, 422)
}


def json_response(content: Any, status: int = 200, request_id: str | None = None) -> Response:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return Response(orjson.dumps(content), status, headers=headers, media_type=JSON)


class Runtime:
    """Everything a request needs, built once by the app factory."""

    def __init__(self, settings: Settings, manager: ModelManager, monitor: Any) -> None:
        self.settings = settings
        self.manager = manager
        self.monitor = monitor
        self.ready = False
        self.batcher: MicroBatcher | None = None

    async def probabilities(self, served: Served, pixels: np.ndarray) -> np.ndarray:
        if self.batcher is not None:
            return await self.batcher.predict(served.predictor, pixels)
        return served.predictor.predict(pixels)

    async def predict(self, pixels: np.ndarray, request_id: str) -> tuple[Served, np.ndarray]:
        """Run the current version on a batch and tell the monitor about it."""
        served = self.manager.current
        started = time.perf_counter()
        probs = await self.probabilities(served, pixels)
        if self.monitor is not None:
            self.monitor.observe(
                request_ids=[request_id] * len(pixels)
                if len(pixels) == 1
                else [f"{request_id}-{i}" for i in range(len(pixels))],
                pixels=pixels,
                probabilities=probs,
                latency_s=time.perf_counter() - started,
                model_version=served.version,
            )
        return served, probs


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
    # a thread hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def create_app(settings: Settings, bundle: ModelBundle | None = None) -> FastAPI:
    """Build the service: resolve and load the model, warm it up, wire monitoring.

    Args:
        settings: everything configurable.
        bundle: a model folder already resolved (else ``settings.model_uri`` is resolved).
    """
    if bundle is None:
        from mnistops.registry import resolve

        bundle = resolve(settings.model_uri, settings)
    served = load_served(bundle, settings)
    monitor = _make_monitor(settings, bundle)
    manager = ModelManager(
        settings, served, on_swap=(lambda s: monitor.set_model(s.bundle)) if monitor else None
    )
    runtime = Runtime(settings, manager, monitor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.batching:
            runtime.batcher = MicroBatcher(
                settings.batch_max_size, settings.batch_max_wait_ms, _batch_observer()
            )
            runtime.batcher.start()
        if monitor is not None:
            monitor.start()
        manager.start_polling()
        runtime.ready = True
        try:
            yield
        finally:
            runtime.ready = False
            await manager.stop_polling()
            if runtime.batcher is not None:
                await runtime.batcher.stop()
            if monitor is not None:
                await asyncio.to_thread(monitor.stop)

    app = FastAPI(
        title="mnistops",
        version=__version__,
        summary="Handwritten-digit recognition: JSON, image upload, Open Inference Protocol v2.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    _install_error_handlers(app)
    from mnistops.serve import routes, v2

    app.include_router(routes.router)
    app.include_router(v2.router)
    if monitor is not None:
        app.include_router(monitor.router)
        from mnistops.monitor.metrics import MetricsMiddleware

        app.add_middleware(MetricsMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app


def _make_monitor(settings: Settings, bundle: ModelBundle) -> Any:
    if not settings.monitoring:
        return None
    from mnistops.monitor.service import Monitor

    return Monitor(settings, bundle)


def _batch_observer() -> Any:
    try:
        from mnistops.monitor.metrics import observe_batch
    except ImportError:
        return None
    return observe_batch


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MnistopsError)
    async def refused(request: Request, exc: MnistopsError) -> Response:
        return json_response({"error": str(exc)}, exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return json_response({"error": f"invalid request: {problems}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        response = json_response({"error": str(exc.detail)}, exc.status_code)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response


def check_admin(request: Request, authorization: str | None = Header(default=None)) -> None:
    """Bearer-token guard for /admin routes; the routes do not exist without a token."""
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(404, "admin routes are disabled: set MNISTOPS_ADMIN_TOKEN")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(
            401,
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(authorization[7:].strip().encode(), token.encode()):
        raise HTTPException(403, "wrong admin token")


async def parse_predict_body(request: Request, settings: Settings) -> np.ndarray:
    """Pixels ``[N, 784]`` from a JSON, multipart or raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, settings.max_body_bytes)
    if content_type in ACCEPTED_IMAGE_TYPES:
        return image_to_pixels(body, settings.max_image_pixels)
    if content_type == "multipart/form-data":
        return await _multipart_pixels(request, settings)
    if content_type in (JSON, ""):
        return _json_pixels(body, settings)
    raise InputError(
        f"unsupported content type {content_type!r}: send {ACCEPTED_BODIES}", status=415
    )


def _json_pixels(body: bytes, settings: Settings) -> np.ndarray:
    if not body:
        raise InputError('empty body: send JSON {"image": [...]} or {"images": [[...], ...]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({JSON_NUMBERS}): {exc}") from exc
    if not isinstance(payload, dict) or ("image" in payload) == ("images" in payload):
        raise InputError('send a JSON object with exactly one of "image" or "images"')
    scale = payload.get("scale")
    if scale not in (None, "unit", "byte"):
        raise InputError('"scale" must be "unit" ([0, 1]) or "byte" (0-255)')
    if "images" in payload:
        images = payload["images"]
        if not isinstance(images, list) or not images:
            raise InputError('"images" must be a non-empty list of images')
        if len(images) > settings.max_batch_images:
            raise InputError(
                f"batch of {len(images)} images is over the limit of {settings.max_batch_images}",
                status=413,
            )
        return pixels_from_values(images, scale=scale).reshape(len(images), -1)
    pixels = pixels_from_values(payload["image"], scale=scale)
    if len(pixels) != 1:
        raise InputError('"image" must be 28x28 or 784 values; send several as "images"')
    return pixels


async def _multipart_pixels(request: Request, settings: Settings) -> np.ndarray:
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as exc:
        raise InputError(f"malformed multipart body: {exc}") from exc
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InputError("multipart body must carry the image in a file field named 'file'")
    data = await upload.read()
    await form.close()
    return image_to_pixels(data, settings.max_image_pixels)


def new_request_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits (like UUIDv7).

    Ids that grow with time keep the prediction log's index on them appending at its
    end instead of rewriting random pages (about twice as cheap per row in SQLite).
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))
