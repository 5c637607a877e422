"""Run `mnistops serve` (or `mnistops run`) as a real process on a free port, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> float:
    """Seconds until /v2/health/ready answered 200; fails if the process died."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout} s")


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
    ready_timeout: float = 60,
) -> Iterator[RunningServer]:
    """Start ``mnistops ARGS`` serving on ``port``, wait until it is ready, stop it on exit."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"server-{port}.log"
    environment = {
        **os.environ,
        "MNISTOPS_HOME": str(home),
        "MNISTOPS_PORT": str(port),
        "MNISTOPS_RELOAD_INTERVAL_S": "0",
        **(env or {}),
    }
    command = [sys.executable, "-m", "mnistops", *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, ready_timeout)
        yield RunningServer(url, process, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
