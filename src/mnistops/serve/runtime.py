"""What a request needs (the Runtime), its FastAPI dependency, and the monitoring hook."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Protocol, TypeVar

import numpy as np
from fastapi import Depends, Request

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.predictor import Answer, Predictor
from mnistops.serve.batching import MicroBatcher
from mnistops.serve.models import ModelSlot

T = TypeVar("T")


class MonitorHook(Protocol):
    """What serving asks of monitoring (``mnistops.monitor.service.Monitor`` is one)."""

    def start(self) -> None:
        """Start monitoring (the app's startup)."""

    def stop(self) -> None:
        """Flush and stop monitoring (the app's shutdown; blocking)."""

    def set_model(self, bundle: ModelBundle) -> None:
        """A new version is served from now on."""

    def record(
        self,
        *,
        request_ids: Sequence[str],
        pixels: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
        model_version: str,
    ) -> None:
        """Note one request's predictions; called on the request path, so it must be cheap."""

    def render_metrics(self) -> bytes:
        """The Prometheus exposition text of the whole service (blocking)."""

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread of the monitor's own (its questions can wait)."""


def image_ids(request_id: str, count: int) -> list[str]:
    """One id per image of a request: the request's own, or ``<id>-<index>`` for a batch."""
    if count == 1:
        return [request_id]
    return [f"{request_id}-{i}" for i in range(count)]


class Runtime:
    """Everything a request needs, built once by the app factory."""

    def __init__(
        self,
        settings: Settings,
        slot: ModelSlot,
        monitor: MonitorHook | None = None,
        batcher: MicroBatcher | None = None,
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.monitor = monitor
        self.batcher = batcher
        self.ready = False
        """False until started, and again from the moment shutdown begins."""
        self.relay_reload: Callable[[], None] | None = None
        """Tells the other workers (if any) to reload after this one's /admin/reload."""
        self._finish_first: list[Awaitable[None]] = []

    async def start(self) -> None:
        """Start batching, monitoring and registry polling; then report ready."""
        if self.batcher is not None:
            self.batcher.start()
        if self.monitor is not None:
            self.monitor.start()
        self.slot.start_polling()
        self.ready = True

    def finish_before_stop(self, draining: Awaitable[None]) -> None:
        """Have :meth:`stop` wait for ``draining`` (another endpoint's drain) first."""
        self._finish_first.append(draining)

    async def stop(self) -> None:
        """Report not ready, then stop what :meth:`start` started (requests drain first)."""
        self.ready = False
        while self._finish_first:
            await self._finish_first.pop()
        await self.slot.stop_polling()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.stop)

    async def predict(self, pixels: np.ndarray, request_id: str) -> tuple[Predictor, Answer]:
        """Run the current version on ``[N, 784]`` pixels and tell the monitor about it.

        Returns:
            The predictor that answered (its version is the one to report) and its
            answer: ``[N, 10]`` probabilities and ``[N]`` "is it a digit".
        """
        predictor = self.slot.current
        started = time.perf_counter()
        if self.batcher is not None:
            answer = await self.batcher.predict(predictor, pixels)
        else:
            answer = predictor.answer(pixels)
        if self.monitor is not None:
            self.monitor.record(
                request_ids=image_ids(request_id, len(pixels)),
                pixels=pixels,
                probabilities=answer.probabilities,
                latency_s=time.perf_counter() - started,
                model_version=predictor.version,
            )
        return predictor, answer


async def get_runtime(request: Request) -> Runtime:
    """The app's Runtime (the dependency behind :data:`RuntimeDep`)."""
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
    # a thread hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
