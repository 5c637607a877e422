"""The composition root: ``create_app`` builds the service from its parts. Nothing it
builds imports it back; only the process entry point (``serve.server``) and tests call it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

from mnistops import __version__
from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.serve import routes, v2
from mnistops.serve.batching import MicroBatcher
from mnistops.serve.docs import add_offline_docs
from mnistops.serve.http import EXCEPTION_HANDLERS
from mnistops.serve.limits import BodyLimitMiddleware, SheddingMiddleware
from mnistops.serve.metrics import MetricsMiddleware, record_batch
from mnistops.serve.mlflow_protocol import router as mlflow_router
from mnistops.serve.models import Loader, ModelSlot, load_predictor
from mnistops.serve.runtime import MonitorHook, Runtime

if TYPE_CHECKING:
    from mnistops.monitor.worker import MonitorAddress

SUMMARY = "Handwritten-digit recognition: JSON, image upload, Open Inference Protocol v2."


def create_app(
    settings: Settings,
    bundle: ModelBundle | None = None,
    *,
    loader: Loader = load_predictor,
    monitor_address: MonitorAddress | None = None,
) -> FastAPI:
    """Build the service: resolve and load the model, warm it up, wire monitoring.

    Args:
        settings: everything configurable.
        bundle: a model folder already resolved (else ``settings.model_uri`` is resolved).
        loader: turns a bundle into a loaded predictor (tests hand in a fake one).
        monitor_address: a shared monitor process to connect to (one of several workers);
            else monitoring starts its own.
    """
    if bundle is None:
        from mnistops.registry import resolve

        bundle = resolve(settings.model_uri, settings)
    runtime, monitor_routes = _runtime(settings, bundle, loader, monitor_address)
    app = FastAPI(
        title="mnistops",
        version=__version__,
        summary=SUMMARY,
        lifespan=_lifespan(runtime),
        exception_handlers=EXCEPTION_HANDLERS,
        docs_url=None,  # add_offline_docs: served from here, not a CDN
        redoc_url=None,
    )
    add_offline_docs(app)
    app.state.runtime = runtime
    for router in (routes.router, v2.router, monitor_routes):
        if router is not None:
            app.include_router(router)
    app.include_router(mlflow_router)  # /invocations, /ping, /health, /version
    if runtime.monitor is not None:
        app.add_middleware(MetricsMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SheddingMiddleware, max_in_flight=settings.max_in_flight)  # outermost
    return app


def _runtime(
    settings: Settings,
    bundle: ModelBundle,
    loader: Loader,
    monitor_address: MonitorAddress | None,
) -> tuple[Runtime, APIRouter | None]:
    """The loaded model, its slot, the batcher and the monitor; the monitor's routes."""
    predictor = loader(bundle, settings)  # a bad bundle fails here, before monitoring starts
    monitor, monitor_routes = _monitoring(settings, bundle, monitor_address)
    slot = ModelSlot(
        settings,
        predictor,
        loader=loader,
        on_swap=(lambda p: monitor.set_model(p.bundle)) if monitor is not None else None,
    )
    batcher = (
        MicroBatcher(settings.batch_max_size, settings.batch_max_wait_ms, record_batch)
        if settings.batching
        else None
    )
    return Runtime(settings, slot, monitor, batcher), monitor_routes


def _monitoring(
    settings: Settings, bundle: ModelBundle, address: MonitorAddress | None
) -> tuple[MonitorHook | None, APIRouter | None]:
    """The monitor and its routes, or nothing when monitoring is off (then the monitor's
    modules are never imported)."""
    if not settings.monitoring:
        return None, None
    from mnistops.monitor.http import monitor_router
    from mnistops.monitor.service import Monitor

    monitor = Monitor(settings, bundle, address)
    return monitor, monitor_router(monitor, settings)


def _lifespan(runtime: Runtime) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the runtime when the server starts; stop it (drained) when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return lifespan
