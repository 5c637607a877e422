"""Server processes for benchmarks and tests: a free port, start, poll until ready, stop.

This is the one implementation; ``tests/support/server.py`` builds on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.005  # short: exec-to-ready is measured with this resolution
STOP_GRACE_S = 20.0
PROBE_TIMEOUT_S = 2.0

Probe = Callable[[], bool]
"""Asked until the server is ready: true once it answers as it should."""


class ServerExitedError(RuntimeError):
    """The server process ended before it was ready."""


@dataclass(frozen=True)
class ServerProcess:
    """A started server that answered its readiness probe."""

    process: subprocess.Popen[bytes]
    log_path: Path
    ready_seconds: float
    """From starting the process to the first successful probe."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_ok(
    url: str,
    body: bytes | None = None,
    timeout: float = PROBE_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """Whether ``url`` answers 200: to a GET, or to a POST of ``body`` (JSON unless
    ``headers`` say otherwise).

    False while nothing listens yet, and on any other status.
    """
    return http_status(url, body, timeout, headers) == 200


def http_status(
    url: str,
    body: bytes | None = None,
    timeout: float = PROBE_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> int:
    """The status ``url`` answers a GET, or a POST of ``body`` with, read to the end;
    0 when it gives no answer (nothing listens, reset, timed out)."""
    if headers is None:
        headers = {} if body is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:  # refused, reset or timed out
        return 0


def wait_ready(
    process: subprocess.Popen[bytes],
    ready: Probe,
    timeout: float = READY_TIMEOUT_S,
    log_path: Path | None = None,
) -> float:
    """Poll ``ready`` until it is true; return the seconds that took.

    Raises:
        ServerExitedError: the process ended first.
        TimeoutError: it was not ready within ``timeout`` seconds.
    """
    see = f": see {log_path}" if log_path else ""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise ServerExitedError(
                f"{_describe(process.args)} exited with {process.returncode} "
                f"before it was ready{see}"
            )
        if ready():
            return time.perf_counter() - started
        time.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"{_describe(process.args)} not ready after {timeout:g} s{see}")


def stop(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the server, SIGKILL its process group after ``grace`` seconds, and reap it.

    Signals go by process id only. The group is killed even when the server
    exited in time, so that children it left behind (``mlflow models serve``
    leaves its uvicorn) go too. Expects a group of its own, as :func:`serving` makes.
    """
    if process.returncode is not None:  # already reaped, its group id may be reused
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    _wait_unreaped(process.pid, grace)
    # Unreaped, the server (alive or a zombie) still holds its pid, so the group is ours.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def serving(
    argv: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    ready: Probe,
    timeout: float = READY_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """Start ``argv`` in a process group of its own, output to ``log_path``; yield it once
    ``ready`` is true, and :func:`stop` it on the way out (or if it never gets ready)."""
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(process, ready, timeout, log_path)
        yield ServerProcess(process, log_path, time.perf_counter() - started)
    finally:
        stop(process)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0
    for member in descendants(pid) | {pid}:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total / 2**20


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: set[int]) -> float:
    """User and system CPU time used so far by each of ``pids`` (those still running)."""
    total = 0
    for member in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def niceness(pid: int) -> int:
    """The process's nice value (0 when it has ended)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except OSError:
        return 0


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {child for child, ppid in parents.items() if ppid == parent} - found
        found |= children
        frontier.extend(children)
    return found


def _wait_unreaped(pid: int, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``pid`` to exit, leaving it a zombie (not reaped)."""
    deadline = time.monotonic() + timeout
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, flags) is not None:
            return
        time.sleep(POLL_INTERVAL_S * 4)


def _describe(args: object) -> str:
    words = [str(a) for a in args] if isinstance(args, list | tuple) else [str(args)]
    return " ".join([Path(words[0]).name, *words[1:3]])
