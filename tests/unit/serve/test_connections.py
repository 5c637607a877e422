"""What a connection may hold, against a real uvicorn server on a loopback port: idle and
half-sent heads time out, a paused body gets 408, a connection idle when the drain starts
still has a request it sends answered, and the headers every answer carries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from mnistops.config import Settings
from mnistops.serve.server import DRAIN_LINGER_S, server_config

pytestmark = [pytest.mark.unit, pytest.mark.anyio]
LOOPBACK = "127.0.0.1"
SHORT_S = 0.3
"""The timeouts under test: short, so that the tests are."""
PATIENCE_S = 5.0
"""Longest a test waits for what should come after ``SHORT_S`` (the cores are shared)."""
Head = dict[str, str]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", {"use_uvloop": True}  # the loop the service runs on


@dataclass
class Served:
    server: uvicorn.Server
    port: int
    task: asyncio.Task[None]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(LOOPBACK, self.port)

    async def refuses_connections(self) -> bool:
        try:
            _, writer = await self.connect()
        except ConnectionRefusedError:
            return True
        writer.close()
        await writer.wait_closed()
        return False


@asynccontextmanager
async def serving(make_app: Callable[..., FastAPI], **overrides: Any) -> AsyncIterator[Served]:
    """The service under uvicorn as ``mnistops serve`` configures it, on a free port."""
    values: dict[str, Any] = {"grpc_port": 0, **overrides}
    settings = Settings(**values)
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    server = uvicorn.Server(server_config(make_app(**values), settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    served = Served(server, sock.getsockname()[1], task)
    try:
        async with asyncio.timeout(PATIENCE_S):
            while not server.started:
                await asyncio.sleep(0.01)
        yield served
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, settings.grace_period_s + PATIENCE_S)
        sock.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, Head, bytes]:
    """One HTTP/1.1 answer with a Content-Length: status, headers, body."""
    async with asyncio.timeout(PATIENCE_S):
        status_line = await reader.readuntil(b"\r\n")
        head: Head = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin1").partition(":")
            head[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(head.get("content-length", "0")))
    return int(status_line.split()[1]), head, body


async def closed_silently(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection without writing anything."""
    async with asyncio.timeout(PATIENCE_S):
        return await reader.read() == b""


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):  # the server closed it first
        await writer.wait_closed()


def get(path: str = "/noop") -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: test\r\n\r\n" % path.encode()


async def test_idle_connections_past_the_header_timeout_are_closed_and_new_clients_served(
    make_app: Callable[..., FastAPI],
) -> None:
    # more idle sockets than connections allowed: they held the service until closed
    async with serving(make_app, header_timeout_s=SHORT_S, max_connections=20) as served:
        reader, writer = await served.connect()
        writer.write(get())
        assert (await read_answer(reader))[0] == 200
        opened = time.monotonic()
        idle = [(reader, writer)]  # idle after its answer (keep-alive)
        idle += [await served.connect() for _ in range(30)]  # idle from the start
        for reader, _ in idle:
            assert await closed_silently(reader)
        assert time.monotonic() - opened >= SHORT_S * 0.9
        for _, writer in idle:
            await close(writer)
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{served.port}") as client:
            assert (await client.get("/noop")).status_code == 200


async def test_a_head_sent_a_line_at_a_time_gets_408_after_the_header_timeout(
    make_app: Callable[..., FastAPI],
) -> None:
    async with serving(make_app, header_timeout_s=SHORT_S) as served:
        reader, writer = await served.connect()
        opened = time.monotonic()
        writer.write(b"GET /noop HTTP/1.1\r\nhost: test\r\n")

        async def trickle() -> None:
            for n in range(100):
                await asyncio.sleep(SHORT_S / 6)
                if writer.is_closing():
                    return
                writer.write(b"x-slow-%d: 1\r\n" % n)

        trickling = asyncio.create_task(trickle())
        status, head, body = await read_answer(reader)
        took = time.monotonic() - opened
        trickling.cancel()
        assert status == 408 and head["connection"] == "close"
        assert SHORT_S * 0.9 <= took < SHORT_S + 2
        assert "line and headers not received within 0.3 s" in json.loads(body)["error"]
        assert await closed_silently(reader)
        await close(writer)


async def test_a_body_that_pauses_past_the_body_timeout_gets_408(
    make_app: Callable[..., FastAPI],
) -> None:
    async with serving(make_app, body_timeout_s=SHORT_S) as served:
        reader, writer = await served.connect()
        writer.write(b"POST /noop HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n")
        writer.write(b"x" * 10)
        status, head, body = await read_answer(reader)
        assert status == 408 and head["connection"] == "close"
        assert "request body paused for more than 0.3 s" in json.loads(body)["error"]
        assert await closed_silently(reader)
        await close(writer)


async def test_a_slow_body_whose_pauses_are_short_is_read_whole(
    make_app: Callable[..., FastAPI],
) -> None:
    # the head and body timeouts both short; the body takes several times either
    async with serving(make_app, header_timeout_s=SHORT_S, body_timeout_s=SHORT_S) as served:
        reader, writer = await served.connect()
        writer.write(b"POST /noop HTTP/1.1\r\nhost: test\r\ncontent-length: 8\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(SHORT_S / 3)
            writer.write(b"x")
        assert (await read_answer(reader))[0] == 200
        await close(writer)


async def test_a_connection_idle_when_the_drain_starts_still_gets_its_request_answered(
    make_app: Callable[..., FastAPI],
) -> None:
    async with serving(make_app) as served:
        connections = [await served.connect() for _ in range(2)]
        for reader, writer in connections:
            writer.write(get())
            assert (await read_answer(reader))[0] == 200
        served.server.should_exit = True
        async with asyncio.timeout(PATIENCE_S):
            while not await served.refuses_connections():
                await asyncio.sleep(0.02)
        drain_started = time.monotonic()
        (reader, writer), (quiet, _) = connections
        writer.write(get())  # sent on a connection the drain found idle
        status, head, _ = await read_answer(reader)
        assert status == 200 and head["connection"] == "close"
        assert await closed_silently(reader)
        assert await closed_silently(quiet)  # sent nothing: closed when the linger ends
        assert time.monotonic() - drain_started >= DRAIN_LINGER_S * 0.8
        await asyncio.wait_for(served.task, PATIENCE_S)
        for _, opened in connections:
            await close(opened)


async def test_answers_say_nosniff_and_a_date_but_not_the_server(
    make_app: Callable[..., FastAPI],
) -> None:
    async with serving(make_app, header_timeout_s=SHORT_S) as served:
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{served.port}") as client:
            for path in ("/noop", "/v2/health/live", "/no-such-route"):
                response = await client.get(path)
                assert response.headers["x-content-type-options"] == "nosniff", path
                assert "date" in response.headers and "server" not in response.headers
        reader, writer = await served.connect()
        writer.write(b"GET /noop HTTP/1.1\r\n")  # the 408 is written by the protocol itself
        status, head, _ = await read_answer(reader)
        assert status == 408 and head["x-content-type-options"] == "nosniff"
        await close(writer)
