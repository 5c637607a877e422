"""Run the service as a process (the entry point that calls ``create_app``) under uvicorn:
ready only after warm-up; SIGTERM drains and exits 0; SIGHUP reloads the model. Several
worker processes are supervised by ``serve.workers``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.errors import MnistopsError, ServeError, first_line
from mnistops.serve.accept import Acceptor
from mnistops.serve.app import create_app  # this module runs the process: the one caller

if TYPE_CHECKING:
    from mnistops.monitor.worker import MonitorAddress
    from mnistops.serve.grpc_api import GrpcServer
    from mnistops.serve.runtime import Runtime

log = logging.getLogger("mnistops.serve")


def check_address(host: str, port: int, option: str = "--port") -> None:
    """Fail before loading anything when ``host:port`` cannot be listened on.

    Raises:
        ServeError: the port is taken, or the host is not an address of this machine.
    """
    _bound(host, port, option).close()


def _bound(host: str, port: int, option: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` as uvicorn binds (SO_REUSEADDR).

    Raises:
        ServeError: the port is taken, or the host is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({exc.strerror}); "
            f"choose a free {option} and an address of this machine as --host"
        ) from exc
    return sock


BACKLOG = 2048
"""Connections the kernel queues before accept: a burst of clients is queued, not refused
(it caps this at net.core.somaxconn). Past ``max_in_flight`` they are answered 503 at
once rather than left in this queue, so a longer one would only hide overload."""
DESCRIPTORS_RESERVED = 64
"""Open files kept for the model, pipes, logs and databases besides the connections."""
REQUEST_TIMEOUT = 408
HEAD_TOO_LARGE = 431
H11_DEFAULT_HEAD_BYTES = 16 * 1024
"""h11's own limit, for a config that sets none."""
DRAIN_LINGER_S = 1.0
"""On shutdown, how long a keep-alive connection with no request in progress stays open:
its client may have sent the next request already, and closing at once lost it (wrk saw
32 and 66 read errors at c=64 and c=256). A request arriving in time is answered with
``Connection: close``. At most half the grace period, to leave time for that answer."""
RESPONSE_HEADERS = [("x-content-type-options", "nosniff")]
"""Sent with every answer: a browser must not guess another content type than the one
given (an error message read as HTML)."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on how much a client may hold, and a drain
    that answers the requests clients have already sent.

    The head: httptools has no size limit (uvicorn's ``h11_max_incomplete_event_size`` binds
    h11 only) and joins a long header by repeated concatenation: a 300 MB header line once
    took 108 s and 604 MB. Here the bytes received while a request's head is incomplete are
    counted; past ``h11_max_incomplete_event_size`` the request is answered 431 and its
    connection closed, so memory stays within the limit plus one read.

    Time: 300 idle sockets once held every descriptor, and a head or body sent a byte at a
    time holds a connection for ever. A request's line and headers must arrive within
    ``header_timeout_s`` of the connection's opening or of the previous answer's end: an
    idle connection is then closed silently, a half-sent head answered 408. This replaces
    uvicorn's keep-alive timeout, so one rule decides when idle connections go. A body may
    pause at most ``body_timeout_s`` (408, or a close once an answer has begun); a pause
    that is the server's own (reading paused until the app takes what came, or a client
    waiting for ``100 Continue``) does not count.

    Shutdown: uvicorn closes a connection with no request in progress at once, losing a
    request its client sent at that moment. Here it lingers ``linger_s``: a request that
    arrives is answered with ``Connection: close``; otherwise it is closed at the end.
    """

    header_timeout_s: float = Settings.model_fields["header_timeout_s"].default
    """Bound by :func:`guarded_protocol`, like the two below."""
    body_timeout_s: float = Settings.model_fields["body_timeout_s"].default
    linger_s: float = DRAIN_LINGER_S

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_head = config.h11_max_incomplete_event_size or H11_DEFAULT_HEAD_BYTES
        self._head_bytes = 0
        self._in_head = self._in_body = self._draining = False
        self._body_seen = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._stop_timers()  # the WebSocket protocol owns the connection from here
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()
        answered = self.cycle is not None and self.cycle.response_complete
        if answered and not self.transport.is_closing():
            self._await_head()  # answered before its body had all come

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._unset_keepalive_if_required()  # the head timer is the one idle rule
            if not self._in_body:
                self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        # counted by the read: a read that also ends a pipelined request counts whole
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                message = f"request line and headers too large: at most {self._max_head} bytes"
                self._refuse(HEAD_TOO_LARGE, message)
        elif self._in_body:
            # one timer per body, pushed back when it fires: not one per read
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_stalled)

    def shutdown(self) -> None:
        """Called by the server as it starts draining (uvicorn's own closes idle
        connections at once)."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # busy: answered, then closed (as uvicorn does)
            return
        self._linger_timer = self.loop.call_later(self.linger_s, self._linger_ended)

    def _await_head(self) -> None:
        """Start the head timer: no request is in progress (idle, or a head begun)."""
        if self.cycle is None or self.cycle.response_complete:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            wait = f"{self.header_timeout_s:g} s"
            self._refuse(REQUEST_TIMEOUT, f"request line and headers not received within {wait}")
        else:
            self.transport.close()  # idle: nothing was asked, nothing to answer

    def _body_stalled(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self._body_seen = now  # the server's pause, not the client's
        pause = now - self._body_seen
        if pause < self.body_timeout_s:
            self._body_timer = self.loop.call_later(self.body_timeout_s - pause, self._body_stalled)
        elif self.cycle.response_started:
            self._close()  # an answer has begun: a 408 cannot follow it
        else:
            wait = f"{self.body_timeout_s:g} s"
            self._refuse(REQUEST_TIMEOUT, f"request body paused for more than {wait}")

    def _linger_ended(self) -> None:
        self._linger_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self._in_head:  # a head begun is left to its timer
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``{"error": message}`` and close the connection."""
        body = orjson.dumps({"error": message})
        head = [STATUS_LINE[status]]
        head += [b"%s: %s\r\n" % header for header in self.server_state.default_headers]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self._close()

    def _close(self) -> None:
        """Close the connection; the request being read (if any) sees a disconnect at once,
        and nothing more of its answer is written."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None


def guarded_protocol(settings: Settings) -> type[GuardedProtocol]:
    """:class:`GuardedProtocol` with the timeouts of ``settings``, for uvicorn's ``http=``."""

    class Guarded(GuardedProtocol):
        header_timeout_s = settings.header_timeout_s
        body_timeout_s = settings.body_timeout_s
        linger_s = min(DRAIN_LINGER_S, _graceful_s(settings) / 2)

    return Guarded


def serve(settings: Settings) -> None:
    """Load the model, then serve until SIGTERM/SIGINT (blocking).

    On SIGTERM readiness turns false at once, the listening socket closes, requests in
    flight finish, and the process exits 0 within ``settings.grace_period_s``. SIGHUP
    resolves the model URI again and swaps a new version in. (Several workers:
    ``serve.workers.serve_workers``, which runs :func:`run_worker` in each.)

    Raises:
        ServeError: the address cannot be listened on.
    """
    check_address(settings.host, settings.port)
    if settings.grpc_port:
        check_address(settings.host, settings.grpc_port, "MNISTOPS_GRPC_PORT")
    started = time.perf_counter()
    app = create_app(settings)
    server = draining_server(app, settings)
    loaded_in = time.perf_counter() - started
    print(banner(app.state.runtime.slot.current.bundle, settings, loaded_in), flush=True)
    server.run()
    if server.failure is not None:
        raise server.failure


def listening_socket(settings: Settings) -> socket.socket:
    """The HTTP port, bound and listening, for worker processes to share (connections
    wait in its backlog until a worker accepts them)."""
    sock = _bound(settings.host, settings.port, "--port")
    sock.listen(min(BACKLOG, settings.max_connections * settings.workers))
    sock.set_inheritable(True)
    return sock


def draining_server(app: FastAPI, settings: Settings, *, worker: bool = False) -> Any:
    """A uvicorn server whose SIGTERM turns readiness off first and ends in exit 0, and
    whose SIGHUP reloads the model.

    Args:
        worker: one of several workers: the gRPC port is shared (SO_REUSEPORT), and a
            second SIGTERM or SIGINT does not cut the drain short (Ctrl-C reaches a
            worker both from the terminal and through the supervisor).
    """
    runtime = app.state.runtime
    grpc_server = _grpc_server(runtime, settings, reuse_port=worker)

    class DrainingServer(uvicorn.Server):
        failure: ServeError | None = None
        """Why the server stopped as soon as it started (the gRPC port was taken)."""

        acceptors: tuple[Acceptor, ...] = ()
        listeners: tuple[socket.socket, ...] = ()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            _freeze_heap()
            await super().startup([])  # the lifespan; connections come through acceptors
            _reload_on_hangup(runtime)
            try:
                self._accept_on(sockets)
                if grpc_server is not None and not self.should_exit:
                    await grpc_server.start()
            except ServeError as exc:
                self.failure, self.should_exit = exc, True

        def _accept_on(self, sockets: list[socket.socket] | None) -> None:
            """Accept in batches (``serve.accept``) on ``sockets``, or on a socket bound
            to the configured address."""
            if sockets is None:
                sock = _bound(settings.host, settings.port, "--port")
                sock.listen(self.config.backlog)
                sockets = [sock]
            config, loop = self.config, asyncio.get_running_loop()

            def protocol() -> asyncio.Protocol:
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )

            self.acceptors = tuple(Acceptor(loop, sock, protocol) for sock in sockets)
            self.listeners = tuple(sockets)
            for acceptor in self.acceptors:
                acceptor.start()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for acceptor in self.acceptors:
                acceptor.stop()
            if grpc_server is not None:
                # gRPC drains beside HTTP; the model and monitor stop after both
                draining = asyncio.ensure_future(grpc_server.stop(settings.grace_period_s))
                runtime.finish_before_stop(draining)
            await super().shutdown(list(self.listeners) or sockets)  # closes them

        def handle_exit(self, sig: int, frame: Any) -> None:
            runtime.ready = False  # readiness probes fail from this moment
            if worker and self.should_exit:
                return  # the supervisor kills a worker whose drain outlasts the grace
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after draining, so the process would end "killed
            # by SIGTERM"; a drained shutdown is a success: exit 0.
            self._captured_signals.clear()

    return DrainingServer(server_config(app, settings))


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves ``app``: its protocol, limits, headers and drain timeout."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guarded_protocol(settings),  # httptools, with limits on size and time
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,  # naming the server and its version helps only an attacker
        headers=list(RESPONSE_HEADERS),
        timeout_graceful_shutdown=_graceful_s(settings),
        # counts connections, not requests: a backstop for descriptors; requests are
        # shed by limits.SheddingMiddleware long before
        limit_concurrency=_allow_connections(settings.max_connections),
        backlog=min(BACKLOG, settings.max_connections),
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def _graceful_s(settings: Settings) -> int:
    """uvicorn's drain timeout: whole seconds, at least one."""
    return max(1, int(settings.grace_period_s))


def _grpc_server(runtime: Runtime, settings: Settings, *, reuse_port: bool) -> GrpcServer | None:
    """The Open Inference Protocol's gRPC endpoint, unless ``grpc_port`` is 0."""
    if not settings.grpc_port:
        return None
    from mnistops.serve.grpc_api import GrpcServer

    return GrpcServer(runtime, settings, reuse_port=reuse_port)


def _reload_on_hangup(runtime: Runtime) -> None:
    """SIGHUP: resolve the model URI again and swap a new version in (in a thread: the
    registry's client blocks)."""

    async def reload() -> None:
        try:
            _, message = await asyncio.to_thread(runtime.slot.reload)
        except MnistopsError as exc:  # says why, and that the old version serves on
            log.warning("SIGHUP: %s", exc)
            return
        # the registry's client raises anything from network to SQL errors: a failed
        # reload keeps serving, said in one line
        except Exception as exc:  # noqa: BLE001
            served = runtime.slot.current.version
            log.warning(
                "SIGHUP: reload failed (%s); still serving version %s", first_line(exc), served
            )
            return
        log.warning("SIGHUP: %s", message)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no such signal here
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(reload())
        )


def _freeze_heap() -> None:
    """Move everything loaded so far (modules, the app, the model) out of the collector's
    reach. A full collection walks every tracked object, about 100,000 here: 50 to 100 ms
    with the process stopped, several times a minute under load, which set p99. (A model
    swapped out later is still freed: a Predictor holds no reference cycle.)"""
    gc.collect()
    gc.freeze()


def _allow_connections(wanted: int) -> int:
    """Raise the soft limit on open files to hold ``wanted`` connections (up to the hard
    limit); the connections it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + DESCRIPTORS_RESERVED
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):  # macOS caps it lower: keep soft
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - DESCRIPTORS_RESERVED))


def banner(bundle: ModelBundle, settings: Settings, load_seconds: float) -> str:
    """What ``mnistops serve`` prints once it is ready."""
    url = f"http://{settings.host}:{settings.port}"
    workers = f"{settings.workers} workers, " if settings.workers > 1 else ""
    return (
        f"mnistops serving {bundle.name} version {bundle.version} "
        f"({workers}loaded in {load_seconds:.2f} s)\n"
        f"  page     {url}/\n"
        f"  API docs {url}/docs\n"
        f"  metrics  {url}/metrics"
        + (f"\n  monitor  {url}/monitoring" if settings.monitoring else "")
        + (f"\n  gRPC     {settings.host}:{settings.grpc_port}" if settings.grpc_port else "")
    )


def run_worker(
    settings: Settings,
    bundle: ModelBundle,
    sock: socket.socket,
    address: MonitorAddress | None,
    metrics_dir: str,
    report: Connection,
    go: Event,
) -> None:
    """One of several workers (``serve.workers``): load and warm up the model, report
    (None, or why not), wait for every other worker, then serve on the shared socket
    until SIGTERM."""
    from mnistops.monitor.metrics import MULTIPROC_DIR, WORKER_PID_FILE

    if os.environ.get(MULTIPROC_DIR) != metrics_dir:
        raise RuntimeError(f"a worker must start with {MULTIPROC_DIR} set")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until serving: the supervisor relays it
    try:
        app = create_app(settings, bundle, monitor_address=address)
        server = draining_server(app, settings, worker=True)
    except MnistopsError as exc:
        report.send(str(exc))
        sys.exit(1)
    except Exception as exc:
        report.send(first_line(exc))
        raise
    app.state.runtime.relay_reload = _ask_supervisor_to_reload
    report.send(None)
    report.close()
    go.wait()
    if settings.monitoring:  # /metrics sums this worker's process metrics from now on
        Path(metrics_dir, WORKER_PID_FILE.format(pid=os.getpid())).touch()
    server.run(sockets=[sock])
    if server.failure is not None:
        print(f"error: {server.failure}", file=sys.stderr, flush=True)
        sys.exit(1)


def _ask_supervisor_to_reload() -> None:
    """After a worker's /admin/reload: the supervisor relays SIGHUP to every worker."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(os.getppid(), signal.SIGHUP)


def app_from_environment() -> FastAPI:
    """The service configured from the environment (``MNISTOPS_*``), for another ASGI
    server: ``granian --interface asgi --factory mnistops.serve.server:app_from_environment``.
    ``mnistops serve`` (uvicorn) is the supported way; ``make bench`` compares the two."""
    from mnistops.config import load_settings

    return create_app(load_settings())
