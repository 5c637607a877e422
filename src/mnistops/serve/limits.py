"""Request body size limits: 413 by Content-Length before the app runs, and while a body
without a length streams in (:func:`read_body`)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnistops.imaging import InputError


def _too_large(max_bytes: int) -> str:
    return f"request body too large: at most {max_bytes} bytes are accepted"


class BodyLimitMiddleware:
    """Refuse a request whose Content-Length is over ``max_bytes`` without reading it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> tuple[Message, Message]:
        body = orjson.dumps({"error": _too_large(self.max_bytes)})
        start = {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
        return start, {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                for message in self._refusal():
                    await send(message)
                return
        await self.app(scope, receive, send)


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
