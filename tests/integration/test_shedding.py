"""Overload and oversized requests against a real server: past max_in_flight requests get
503 with Retry-After at once while accepted ones keep a bounded p99; an over-limit body is
drained so that every client reads its 413; a huge header is refused at once."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from bench.servers import LOOPBACK, free_port, http_ok, tree_rss_mb

from mnistops.bundle import ModelBundle
from mnistops.data import Mnist
from mnistops.serve.limits import DRAIN_FACTOR
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.integration
LIMIT = 1 << 20
"""The default MNISTOPS_MAX_BODY_BYTES."""
FLOODS = ((256, 2), (1024, 3))
"""(connections, seconds) of each wrk run: about 5 s of load in all."""
PROBES = 4
MAX_IN_FLIGHT = 64
"""Half the default: at c=256 on 2 cores about 130 requests are in the system, many of them
still in socket buffers, so the default 128 is crossed only now and then; at 64 the flood
is shed for certain, which is what these tests are about (the default's own figures are
``make bench``'s and ``make stress``'s)."""
READS_A_BODY = ("/predict", "/v2/models/mnist-classifier/infer", "/feedback", "/noop")
ACCEPTED_P99_S = 0.5
"""Bound on the p99 of accepted requests under the flood, as a client sending one request
at a time sees it: measured 42-51 ms at c=256 and 65-84 ms at c=1024 on a 2-core machine
(57 ms and 105-165 ms without shedding); the bound leaves room for a busy CI machine."""
CATCH_UP_S = 2.0
"""Bound on the first request after a flood: the server still answers (mostly sheds) what
the flood's connections had sent before they closed, measured 0.1 s after c=256 and
0.5-0.9 s after c=1024 on a 2-core machine. Every request after it is answered at once."""
AT_ONCE_S = 0.1
RESULT = "shed-result "
# wrk, one thread: POSTs the body, counts answers by status; done() prints them as JSON.
SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("SHED_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, shed, bare, other = 0, 0, 0, 0
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 503 then
    shed = shed + 1
    if headers["retry-after"] == nil then bare = bare + 1 end
  else other = other + 1 end
end
function done(summary, latency, requests)
  local n = {ok = 0, shed = 0, bare = 0, other = 0}
  for _, t in ipairs(threads) do for k in pairs(n) do n[k] = n[k] + t:get(k) end end
  local e = summary.errors
  io.write(os.getenv("SHED_RESULT"), string.format(
    '{"ok": %d, "shed": %d, "shed_without_retry_after": %d, "other": %d, '
    .. '"socket_errors": %d, "p50_ms": %.1f, "p99_ms": %.1f}\n',
    n.ok, n.shed, n.bare, n.other, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


@dataclass
class Flood:
    """What wrk saw: answers by status (all of them, 503s included, in p50/p99)."""

    ok: int
    shed: int
    shed_without_retry_after: int
    other: int
    socket_errors: int
    p50_ms: float
    p99_ms: float


@dataclass
class Probes:
    """Clients sending one request at a time during a flood, timing the accepted ones."""

    url: str
    body: bytes
    accepted_s: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, int(self.url.rsplit(":", 1)[1]), 30)
        headers = {"Content-Type": "application/json"}
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", self.body, headers)
                response = connection.getresponse()
                response.read()
            except OSError:  # counted as a failure; the assertion shows it
                self.statuses.append(-1)
                connection.close()
                continue
            self.statuses.append(response.status)
            if response.status == 200:
                self.accepted_s.append(time.perf_counter() - started)
        connection.close()

    def __enter__(self) -> Probes:
        self._threads = [threading.Thread(target=self._run) for _ in range(PROBES)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def flood(url: str, body: Path, connections: int, seconds: int, folder: Path) -> Flood:
    """wrk POSTing ``body`` to ``url`` with ``connections`` for ``seconds``."""
    script = folder / "shed.lua"
    script.write_text(SCRIPT)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    env = {**os.environ, "SHED_BODY": str(body), "SHED_RESULT": RESULT}
    done = subprocess.run(
        [*argv, "-s", str(script), url], env=env, capture_output=True, text=True, check=False
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT)]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    line = lines[-1]
    return Flood(**json.loads(line.removeprefix(RESULT)))


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


@pytest.fixture(scope="module")
def server(
    trained_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("shed-home")
    env = {"MNISTOPS_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}
    with run_server(str(trained_bundle.path), free_port(), home, env) as running:
        yield running


@pytest.fixture(scope="module")
def digit(mnist: Mnist) -> bytes:
    return json.dumps({"image": mnist.x_test[0].tolist()}).encode()


def _post(url: str, body: bytes) -> tuple[int | str, bytes]:
    """POST with urllib, which writes the whole body before it reads the answer."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError as error:  # the connection broke: no answer read
        return type(error.reason).__name__, b""


def _post_chunked(server: RunningServer, path: str, size: int) -> int | str:
    """POST ``size`` bytes chunked with http.client: the status, or how the server hung up."""
    connection = http.client.HTTPConnection(LOOPBACK, int(server.url.rsplit(":", 1)[1]), 10)
    chunk = b"x" * (64 << 10)
    try:
        chunks = (chunk for _ in range(size // len(chunk)))
        connection.request("POST", path, chunks, {"Content-Type": "application/json"})
        return connection.getresponse().status
    except OSError as exc:  # past the drained bound the connection is closed unread
        return type(exc).__name__
    finally:
        connection.close()


def test_a_client_that_writes_its_whole_body_first_reads_the_413(server: RunningServer) -> None:
    # The largest body that is drained. Closed unread, such a body met a broken pipe or a
    # reset (smaller ones too, but not every time: the socket buffers may hold them).
    for path in READS_A_BODY:
        for _ in range(3):
            status, body = _post(f"{server.url}{path}", b"x" * (DRAIN_FACTOR * LIMIT))
            assert status == 413, path
            assert f"at most {LIMIT} bytes are accepted" in json.loads(body)["error"]


def test_a_chunked_body_over_the_limit_is_refused_on_every_route(server: RunningServer) -> None:
    for path in READS_A_BODY:
        assert _post_chunked(server, path, 3 * LIMIT) == 413, path


def test_an_endless_chunked_body_is_refused_without_growing_memory(
    server: RunningServer,
) -> None:
    before = tree_rss_mb(server.process.pid)
    started = time.perf_counter()
    assert _post_chunked(server, "/feedback", 256 << 20) in (413, "ConnectionResetError")
    assert time.perf_counter() - started < 5
    assert tree_rss_mb(server.process.pid) - before < 32
    assert http_ok(f"{server.url}/v2/health/ready")


def test_a_huge_header_line_is_refused_at_once(server: RunningServer, digit: bytes) -> None:
    before = tree_rss_mb(server.process.pid)
    with socket.create_connection((LOOPBACK, int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.settimeout(1.0)
        started = time.perf_counter()
        answer = b""
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n")
            answer = sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed while we were still sending: refused as well
        assert time.perf_counter() - started < 1.0
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert tree_rss_mb(server.process.pid) - before < 16
    # a request whose head is within the limit and whose body is large still passes
    status, _ = _post(f"{server.url}/predict", digit + b" " * (LIMIT - len(digit)))
    assert status == 200


def test_overload_is_shed_at_once_and_accepted_requests_stay_quick(
    server: RunningServer, digit: bytes, tmp_path: Path
) -> None:
    body = tmp_path / "digit.json"
    body.write_bytes(digit)
    for connections, seconds in FLOODS:
        with Probes(server.url, digit) as probes:
            seen = flood(f"{server.url}/predict", body, connections, seconds, tmp_path)
        assert seen.shed > 0 and seen.ok > 0, seen
        assert seen.shed_without_retry_after == 0 and seen.other == 0, seen
        assert seen.socket_errors == 0, seen
        assert set(probes.statuses) <= {200, 503} and probes.accepted_s, probes.statuses
        assert p99(probes.accepted_s) < ACCEPTED_P99_S, (connections, p99(probes.accepted_s))
        started = time.perf_counter()  # normal service once the flood's backlog is answered
        status, _ = _post(f"{server.url}/predict", digit)
        assert status == 200 and time.perf_counter() - started < CATCH_UP_S
        for _ in range(5):
            started = time.perf_counter()
            status, _ = _post(f"{server.url}/predict", digit)
            assert status == 200 and time.perf_counter() - started < AT_ONCE_S


NEW_CLIENT_S = 1.5
"""Bound on a new client's wait for an answer (200 or 503) during a c=1024 flood: measured
0.2-0.5 s on a 2-core machine; before connections were accepted in batches it waited for
the flood to end (4-8 s), the listening socket's queue draining a few a second."""


def test_new_clients_are_let_in_and_answered_during_a_flood(
    server: RunningServer, digit: bytes, tmp_path: Path
) -> None:
    body = tmp_path / "digit.json"
    body.write_bytes(digit)
    seen: list[Flood] = []
    flooding = threading.Thread(
        target=lambda: seen.append(flood(f"{server.url}/predict", body, 1024, 6, tmp_path))
    )
    flooding.start()
    time.sleep(1.5)  # every flood connection open and sending
    waits: list[tuple[int | str, float]] = []
    while flooding.is_alive() and len(waits) < 8:
        started = time.perf_counter()
        status, _ = _post(f"{server.url}/predict", digit)  # a new connection each time
        waits.append((status, time.perf_counter() - started))
        time.sleep(0.25)
    flooding.join(30)
    assert seen and seen[0].socket_errors == 0, seen
    assert len(waits) >= 4, waits  # most of them sent while the flood was on
    assert all(status in (200, 503) for status, _ in waits), waits
    assert max(wait for _, wait in waits) < NEW_CLIENT_S, waits
