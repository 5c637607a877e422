"""The serving process's own Prometheus metrics (HTTP requests, micro-batches) and the
request middleware that counts them.

They live in the default registry, which /metrics exposes beside the monitor's model,
input and drift families (``mnistops.monitor.metrics``); with several workers, summed
over all of them (prometheus_client's multiprocess mode). Names follow Prometheus
conventions (``mnistops_`` prefix, ``_seconds``, ``_total``).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route matched (one label, however many paths)."""

REQUESTS = Counter(
    "mnistops_requests",
    "HTTP requests by route template, method and status.",
    ("route", "method", "status"),
)
REQUEST_DURATION = Histogram(
    "mnistops_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ("route",),
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "mnistops_requests_in_flight",
    "HTTP requests being answered now.",
    multiprocess_mode="livesum",  # with several workers: the sum over the live ones
)
REQUESTS_SHED = Counter(
    "mnistops_requests_shed",
    "HTTP requests refused with 503 at once because MNISTOPS_MAX_IN_FLIGHT were being answered.",
)
BATCH_SIZE = Histogram(
    "mnistops_batch_size", "Images per onnxruntime call (micro-batching).", buckets=BATCH_BUCKETS
)
BATCH_QUEUE_WAIT = Histogram(
    "mnistops_batch_queue_wait_seconds",
    "Time a request waited to join a batch.",
    buckets=LATENCY_BUCKETS,
)


def record_batch(size: int, waits: list[float]) -> None:
    """Count one onnxruntime call of the micro-batcher (its ``on_batch``)."""
    BATCH_SIZE.observe(size)
    for wait in waits:
        BATCH_QUEUE_WAIT.observe(wait)


# labelled children cached: ``labels()`` costs a lock and a dict lookup per call
_COUNTERS: dict[tuple[str, str, int], Counter] = {}
_DURATIONS: dict[str, Histogram] = {}


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (HTTP, or gRPC with method ``GRPC``) and its duration."""
    key = (route, method, status)
    counter = _COUNTERS.get(key)
    if counter is None:
        counter = _COUNTERS[key] = REQUESTS.labels(route, method, str(status))
    counter.inc()
    duration = _DURATIONS.get(route)
    if duration is None:
        duration = _DURATIONS[route] = REQUEST_DURATION.labels(route)
    duration.observe(seconds)


class MetricsMiddleware:
    """Pure-ASGI middleware: request count, duration and in-flight, by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, capture)
        finally:
            IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            record_request(route, scope["method"], status, time.perf_counter() - started)
