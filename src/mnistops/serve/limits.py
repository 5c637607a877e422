"""Request limits, as pure ASGI middleware in front of the app: load shedding (503 and
``Retry-After`` past ``max_in_flight`` requests) and the body limit of every route (413,
with a Content-Length or chunked), the refused body drained so that the client reads it.

The limit on headers sits lower, in the HTTP protocol (``serve.server``).
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnistops.imaging import InputError
from mnistops.serve.metrics import REQUESTS_SHED

RETRY_AFTER_S = 1
"""What a shed request is told to wait before trying again."""
NEVER_SHED = frozenset({"/metrics", "/v2/health/live", "/v2/health/ready", "/ping", "/health"})
"""Probes and scrapes: they must answer under overload, and they cost little."""
DRAIN_FACTOR = 4
"""An over-limit body is read and discarded up to this many times the limit; past it the
connection is closed unread (the client may then see a reset instead of the 413)."""
DRAIN_TIMEOUT_S = 2.0
"""The longest a refused body is drained: a slow sender does not hold its slot longer."""
_CONTENT_LENGTH = b"content-length"
_CHUNKED = b"transfer-encoding"
_EXPECT = b"expect"
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


def _too_large(max_bytes: int) -> str:
    return f"request body too large: at most {max_bytes} bytes are accepted"


def _answer(status: int, message: str, headers: list[tuple[bytes, bytes]]) -> Message:
    """The start of a JSON refusal whose body is :func:`_error_body` of ``message``."""
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_error_body(message))).encode()),
        *headers,
    ]
    return {"type": "http.response.start", "status": status, "headers": head}


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class BodyTooLargeError(HTTPException):
    """A body without a length grew past the limit while the app read it.

    An HTTPException, so that FastAPI's own body parsing passes it on instead of calling
    it a malformed body (400); the middleware answers 413 whatever the app makes of it.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large(max_bytes))


class SheddingMiddleware:
    """Answer 503 with ``Retry-After`` at once while ``max_in_flight`` requests are being
    answered, so that past saturation latency stays bounded instead of queueing without
    end. Paths in :data:`NEVER_SHED` are neither shed nor counted; 0 turns shedding off."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        message = (
            f"the service is at capacity ({max_in_flight} requests in flight); "
            f"retry after {RETRY_AFTER_S} s"
        )
        retry = (b"retry-after", str(RETRY_AFTER_S).encode())
        self._start = _answer(503, message, [retry])
        self._start_closing = _answer(503, message, [retry, (b"connection", b"close")])
        self._body: Message = {"type": "http.response.body", "body": _error_body(message)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_in_flight or scope["path"] in NEVER_SHED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            REQUESTS_SHED.inc()
            await self._shed(scope, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _shed(self, scope: Scope, send: Send) -> None:
        # The connection stays open for the retry (uvicorn discards a small unread body);
        # one with a chunked body, which may be endless, is closed.
        chunked = any(name == _CHUNKED for name, _ in scope["headers"])
        await send(self._start_closing if chunked else self._start)
        await send(self._body)


class BodyLimitMiddleware:
    """Refuse a body over ``max_bytes`` on every route with 413, then close the connection.

    A Content-Length over the limit is refused before the app runs; a chunked body is
    counted as the app reads it. Either way the rest of the body is read and discarded
    (up to :data:`DRAIN_FACTOR` times the limit) before the answer completes: a client
    that writes its whole body before reading (urllib, http.client) would otherwise meet a
    connection reset instead of the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = DRAIN_FACTOR * max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked, expects = None, False, False
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                length = int(value) if value.isdigit() else None
            elif name == _CHUNKED:
                chunked = True
            elif name == _EXPECT:
                expects = True
        if length is not None and length > self.max_bytes:
            # an Expect: 100-continue client waits for our answer and sends no body
            drain = 0 if expects or length > self.drain_bytes else length
            await self._refuse(receive, send, drain)
        elif chunked:
            await self._guarded(scope, receive, send)
        else:  # no body, or one whose length the parser holds it to
            await self.app(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = _BodyGuard(receive, send, self.max_bytes)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.over:
                raise
            # past the limit the app failed on our BodyTooLargeError: answered below
        if guard.over and not guard.started:
            await self._refuse(receive, send, self.drain_bytes - guard.received)

    async def _refuse(self, receive: Receive, send: Send, drain: int) -> None:
        message = _too_large(self.max_bytes)
        await send(_answer(413, message, [(b"connection", b"close")]))
        await send({"type": "http.response.body", "body": _error_body(message), "more_body": True})
        await _drain(receive, drain)
        await send(_END)


class _BodyGuard:
    """Wraps one request's receive and send: counts the body as the app reads it, raises
    :class:`BodyTooLargeError` past the limit, and from then on swallows the app's answer
    (the middleware sends the 413) unless the app had begun it."""

    def __init__(self, receive: Receive, send: Send, max_bytes: int) -> None:
        self._receive, self._send = receive, send
        self.max_bytes = max_bytes
        self.received = 0
        self.over = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.over = True
                raise BodyTooLargeError(self.max_bytes)
        return message

    async def send(self, message: Message) -> None:
        if self.over and not self.started:
            return
        self.started = True  # an answer begun before the limit was passed is let through
        await self._send(message)


async def _drain(receive: Receive, budget: int) -> None:
    """Read and discard the rest of a request body: at most ``budget`` bytes, for at most
    :data:`DRAIN_TIMEOUT_S`, until the body ends or the client goes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while budget > 0:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                budget -= len(message.get("body", b""))


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it grows past ``max_bytes``."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InputError(_too_large(max_bytes), status=413)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette reads a cached body for form parsing
    return body
