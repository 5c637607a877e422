"""Accepting connections in batches: new clients are let in under a flood of requests.

uvloop's libuv accepts one connection per turn of the event loop (libuv 1.45, "don't
accept() connections in a loop"). Under a flood a turn reads hundreds of requests and
lasts hundreds of milliseconds, so the listening socket's queue drained at a few
connections a second: at c=900 new clients waited seconds in the kernel before their
first byte was read, and wrk counted requests over 10 s as timeouts. :class:`Acceptor`
takes up to :data:`ACCEPT_BATCH` waiting connections each time the socket is readable
(as asyncio's own loop does) and hands each to the event loop with the server's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("mnistops.serve")

ACCEPT_BATCH = 128
"""Most connections taken per readiness of the listening socket: enough to drain a burst
in a few turns of the loop, few enough that requests already read are not kept waiting."""
RETRY_AFTER_EMFILE_S = 0.1
"""Out of descriptors: stop accepting this long (the socket stays readable, and accepting
again at once would spin) while open connections finish."""
_WAIT = (BlockingIOError, InterruptedError)
_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
"""A client that left before it was accepted: skip it, accept the next."""


class Acceptor:
    """Accepts connections on a listening socket in batches and connects each to a new
    protocol from ``protocol_factory`` (uvicorn's)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._connecting: set[asyncio.Task[object]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._open = False

    def start(self) -> None:
        """Begin accepting (the socket is already listening)."""
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._open = True

    def stop(self) -> None:
        """Accept nothing more (connections already accepted are served on)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._open:
            self._loop.remove_reader(self._sock.fileno())
            self._open = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except _WAIT:
                return
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                self._pause(exc)
                return
            self._connect(conn)

    def _connect(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):  # small answers go out at once, not after 40 ms
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
        self._connecting.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the client reset the connection before it could be set up: nothing to answer
            log.debug("a connection could not be set up: %s", task.exception())

    def _pause(self, exc: OSError) -> None:
        """Stop accepting for a moment: descriptors or memory ran out."""
        log.warning("accepting paused %g s: %s", RETRY_AFTER_EMFILE_S, exc.strerror)
        self.stop()
        self._resume = self._loop.call_later(RETRY_AFTER_EMFILE_S, self.start)
