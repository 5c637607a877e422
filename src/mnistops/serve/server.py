"""Run the service as a process (the entry point that calls ``create_app``) under uvicorn:
ready only after warm-up; SIGTERM drains and exits 0."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from fastapi import FastAPI

from mnistops.config import Settings
from mnistops.errors import MnistopsError
from mnistops.predictor import Predictor
from mnistops.serve.app import create_app  # this module runs the process: the one caller

log = logging.getLogger("mnistops.serve")


class ServeError(MnistopsError):
    """The server cannot listen where it was told to."""


def check_address(host: str, port: int) -> None:
    """Fail before loading anything when ``host:port`` cannot be listened on.

    Raises:
        ServeError: the port is taken, or the host is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {host}:{port} ({exc.strerror}); "
                "choose a free --port and an address of this machine as --host"
            ) from exc


BACKLOG = 2048
"""Connections the kernel queues before accept: a burst of clients is queued, not refused."""


def serve(settings: Settings) -> None:
    """Load the model, then serve until SIGTERM/SIGINT (blocking).

    On SIGTERM readiness turns false at once, the listening socket closes, requests in
    flight finish, and the process exits 0 within ``settings.grace_period_s``.

    Raises:
        ServeError: the address cannot be listened on.
    """
    check_address(settings.host, settings.port)
    started = time.perf_counter()
    app = create_app(settings)
    server = _draining_server(app, settings)
    loaded_in = time.perf_counter() - started
    print(_banner(app.state.runtime.slot.current, settings, loaded_in), flush=True)
    server.run()


def _draining_server(app: FastAPI, settings: Settings) -> Any:
    """A uvicorn server whose SIGTERM turns readiness off first and ends in exit 0."""
    import uvicorn

    runtime = app.state.runtime

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            runtime.ready = False  # readiness probes fail from this moment
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after draining, so the process would end "killed
            # by SIGTERM"; a drained shutdown is a success: exit 0.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=max(1, int(settings.grace_period_s)),
        limit_concurrency=None,
        backlog=BACKLOG,
    )
    return DrainingServer(config)


def _banner(predictor: Predictor, settings: Settings, load_seconds: float) -> str:
    url = f"http://{settings.host}:{settings.port}"
    return (
        f"mnistops serving {predictor.name} version {predictor.version} "
        f"(loaded in {load_seconds:.2f} s)\n"
        f"  page     {url}/\n"
        f"  API docs {url}/docs\n"
        f"  metrics  {url}/metrics"
    )


def app_from_environment() -> FastAPI:
    """The service configured from the environment (``MNISTOPS_*``), for another ASGI
    server: ``granian --interface asgi --factory mnistops.serve.server:app_from_environment``.
    ``mnistops serve`` (uvicorn) is the supported way; ``make bench`` compares the two."""
    from mnistops.config import load_settings

    return create_app(load_settings())
