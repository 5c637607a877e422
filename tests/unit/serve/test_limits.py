"""The request limits in process: load shedding past max_in_flight, the body limit of every
route (Content-Length and chunked), the refused body drained before the 413, and the limit
on a request's head in the HTTP protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.server import ServerState

from mnistops.config import Settings
from mnistops.ids import new_request_id
from mnistops.monitor.http import monitor_router
from mnistops.serve.limits import (
    DRAIN_FACTOR,
    NEVER_SHED,
    RETRY_AFTER_S,
    BodyLimitMiddleware,
    SheddingMiddleware,
)
from mnistops.serve.server import GuardedProtocol
from tests.unit.serve.conftest import started_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]
LIMIT = 1000
SHED_SERIES = "mnistops_requests_shed_total"
JSON_HEADERS = {"content-type": "application/json"}
T = TypeVar("T")


class HeldApp:
    """An ASGI app that answers 200 once released; counts the requests it has begun."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.begun = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.begun += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class BodyReader:
    """An ASGI app that reads the whole body, answers 200 and records what it read."""

    def __init__(self) -> None:
        self.read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            self.read += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})


class ScriptedReceive:
    """A request body as ASGI messages, counting how many of them were asked for."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.messages: list[Message] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        self.asked = 0

    async def __call__(self) -> Message:
        self.asked += 1
        if self.asked > len(self.messages):
            return {"type": "http.disconnect"}
        return self.messages[self.asked - 1]


def _client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def _chunks(body: bytes, chunk: int = 256) -> AsyncIterator[bytes]:
    """``body`` without a length: httpx sends it chunked."""

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    return stream()


def _scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/noop", "headers": headers}


async def test_requests_past_the_limit_get_503_with_retry_after_at_once() -> None:
    held = HeldApp()
    shed_before = REGISTRY.get_sample_value(SHED_SERIES) or 0.0
    async with _client(SheddingMiddleware(held, max_in_flight=2)) as client:
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(client.get, "/predict")
            while held.begun < 2:
                await anyio.sleep(0.001)
            with anyio.fail_after(1):
                refused = await client.get("/predict")
            held.release.set()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
        assert "at capacity (2 requests in flight)" in refused.json()["error"]
        assert REGISTRY.get_sample_value(SHED_SERIES) == shed_before + 1
        assert (await client.get("/predict")).status_code == 200  # a free slot again


async def test_probes_and_scrapes_are_never_shed() -> None:
    held = HeldApp()
    client = _client(SheddingMiddleware(held, max_in_flight=1))
    async with client, anyio.create_task_group() as group:
        group.start_soon(client.get, "/predict")
        for path in sorted(NEVER_SHED):
            group.start_soon(client.get, path)
        with anyio.fail_after(2):  # a shed probe never reaches the app
            while held.begun < 1 + len(NEVER_SHED):
                await anyio.sleep(0.001)
        held.release.set()


async def test_zero_turns_shedding_off() -> None:
    held = HeldApp()
    held.release.set()
    async with _client(SheddingMiddleware(held, max_in_flight=0)) as client:
        assert (await client.get("/predict")).status_code == 200


async def test_a_chunked_body_past_the_limit_is_refused_on_every_route_that_reads_one(
    make_app: Callable[..., FastAPI],
) -> None:
    async for client in started_client(make_app(max_body_bytes=LIMIT)):
        for path in ("/noop", "/predict", "/v2/models/mnist-classifier/infer"):
            response = await client.post(
                path, content=_chunks(b"x" * 3 * LIMIT), headers=JSON_HEADERS
            )
            assert response.status_code == 413, path
            assert f"at most {LIMIT} bytes are accepted" in response.json()["error"]
            assert response.headers["connection"] == "close"
        fits = await client.post("/noop", content=_chunks(b"x" * LIMIT), headers=JSON_HEADERS)
        assert fits.status_code == 200


class LabelsKept:
    """The monitor behind /feedback (``monitor.http.DriftAndFeedback``), keeping labels."""

    def __init__(self) -> None:
        self.labels: dict[str, int] = {}

    def drift_status(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        self.labels[request_id] = label
        return {"request_id": request_id, "label": label}

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


async def test_feedback_refuses_a_chunked_body_past_the_limit_with_413() -> None:
    """/feedback's body is parsed by FastAPI, which would call a failure to read it a 400."""
    monitor = LabelsKept()
    app = FastAPI()
    app.include_router(monitor_router(monitor, Settings()))
    app.add_middleware(BodyLimitMiddleware, max_bytes=LIMIT)
    async with _client(app) as client:
        response = await client.post(
            "/feedback", content=_chunks(b"x" * 2 * LIMIT), headers=JSON_HEADERS
        )
        assert response.status_code == 413 and monitor.labels == {}
        issued = new_request_id()
        label = b'{"request_id": "%s", "label": 3}' % issued.encode()
        ok = await client.post("/feedback", content=_chunks(label, 8), headers=JSON_HEADERS)
        assert ok.status_code == 200 and monitor.labels == {issued: 3}


async def test_a_content_length_past_the_limit_is_refused_before_the_app_reads() -> None:
    reader = BodyReader()
    async with _client(BodyLimitMiddleware(reader, max_bytes=LIMIT)) as client:
        response = await client.post("/noop", content=b"x" * (LIMIT + 1))
        assert response.status_code == 413 and reader.read == 0
        assert (await client.post("/noop", content=b"x" * LIMIT)).status_code == 200
        assert reader.read == LIMIT


async def test_the_refused_body_is_drained_up_to_a_bound_before_the_answer_ends() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = BodyLimitMiddleware(BodyReader(), max_bytes=LIMIT)
    size = 3 * LIMIT
    body = ScriptedReceive([b"x" * LIMIT] * 3)
    await middleware(_scope([(b"content-length", str(size).encode())]), body, send)
    assert body.asked == 3  # all of it read, so closing resets nothing
    assert sent[0]["status"] == 413 and sent[-1]["more_body"] is False

    too_much = (DRAIN_FACTOR + 1) * LIMIT
    body = ScriptedReceive([b"x" * LIMIT] * (DRAIN_FACTOR + 1))
    await middleware(_scope([(b"content-length", str(too_much).encode())]), body, send)
    assert body.asked == 0  # past the bound: closed unread

    expecting = [(b"content-length", str(size).encode()), (b"expect", b"100-continue")]
    body = ScriptedReceive([b"x" * LIMIT] * 3)
    await middleware(_scope(expecting), body, send)
    assert body.asked == 0  # the client waits for the answer and sends nothing


async def test_a_chunked_body_is_drained_after_the_limit_up_to_the_bound() -> None:
    async def send(message: Message) -> None:
        pass

    middleware = BodyLimitMiddleware(BodyReader(), max_bytes=LIMIT)
    endless = ScriptedReceive([b"x" * LIMIT] * (3 * DRAIN_FACTOR))
    await middleware(_scope([(b"transfer-encoding", b"chunked")]), endless, send)
    assert endless.asked == DRAIN_FACTOR  # the limit, then the rest up to the bound


class RecordingTransport(asyncio.Transport):
    """What the HTTP protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(head_limit: int) -> tuple[GuardedProtocol, RecordingTransport]:
    config = uvicorn.Config(
        BodyReader(), http=GuardedProtocol, h11_max_incomplete_event_size=head_limit
    )
    protocol = GuardedProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_request_head_past_the_limit_is_answered_431_and_closed() -> None:
    protocol, transport = _protocol(head_limit=LIMIT)
    protocol.data_received(b"GET / HTTP/1.1\r\nX-Big: ")
    assert not transport.closed  # incomplete, within the limit: wait for the rest
    protocol.data_received(b"a" * LIMIT)
    assert transport.closed
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert f"at most {LIMIT} bytes".encode() in transport.written


async def test_a_body_read_with_its_head_does_not_count_against_the_head_limit() -> None:
    protocol, transport = _protocol(head_limit=LIMIT)
    body = b"x" * (4 * LIMIT)
    protocol.data_received(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with anyio.fail_after(2):
        while not transport.written:
            await anyio.sleep(0.001)
    assert transport.written.startswith(b"HTTP/1.1 200 ") and not transport.closed
