"""Run `mnistops serve` (or `mnistops run`) as a real process on a free port, for tests.

Starting, polling and stopping are bench/servers.py's, shared with the benchmarks.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench import servers
from bench.servers import LOOPBACK, READY_TIMEOUT_S

READY_PATH = "/v2/health/ready"
PROBE_TIMEOUT_S = 1.0


CLIENT_TIMEOUT_S = 30.0


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int
    """The Open Inference Protocol's gRPC port (0 when the test turned gRPC off)."""
    _clients: list[httpx.Client] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> httpx.Client:
        """An HTTP client on this server, closed when the server stops."""
        client = httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()


def _ready(url: str) -> servers.Probe:
    return functools.partial(servers.http_ok, f"{url}{READY_PATH}", timeout=PROBE_TIMEOUT_S)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S
) -> float:
    """Seconds until /v2/health/ready answered 200; fails if the process died."""
    return servers.wait_ready(process, _ready(url), timeout)


@contextmanager
def run_server(
    model: str, port: int, home: Path, env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """Start a server, wait until it is ready, stop it (SIGTERM, then SIGKILL) on exit."""
    with run_command(["serve", "--model", model, "--port", str(port)], port, home, env) as running:
        yield running


@contextmanager
def run_command(
    args: list[str],
    port: int,
    home: Path,
    env: dict[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Iterator[RunningServer]:
    """Start ``mnistops ARGS`` serving on ``port``, wait until it is ready, stop it on exit."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"server-{port}.log"
    environment = {
        **os.environ,
        "MNISTOPS_HOME": str(home),
        "MNISTOPS_PORT": str(port),
        "MNISTOPS_RELOAD_INTERVAL_S": "0",
        # a free port of its own: servers of several tests may be up at once
        "MNISTOPS_GRPC_PORT": str(servers.free_port()),
        **(env or {}),
    }
    command = [sys.executable, "-m", "mnistops", *args]
    url = f"http://{LOOPBACK}:{port}"
    with servers.serving(command, environment, log_path, _ready(url), ready_timeout) as server:
        running = RunningServer(
            url, server.process, log_path, int(environment["MNISTOPS_GRPC_PORT"])
        )
        try:
            yield running
        finally:
            running.close_clients()
