"""HTTP load with wrk: POSTs of JSON (or binary) bodies; figures read from JSON printed by a Lua
done() hook."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

WRK = "wrk"
WRK_TIMEOUT = "10s"  # a request slower than this counts as a timeout error
RESULT_PREFIX = "bench-result "
"""Starts the line that the done() hook prints; the rest of the output is wrk's own summary."""
JSON_HEADERS = {"Content-Type": "application/json"}

# One thread of wrk, reading its inputs from the environment. One body is sent as is;
# several are sent in turn (request() formats each). Bodies are lines of the bodies file,
# hex-encoded when they are binary; headers are "Name: value" lines of their own file.
# The JSON fields are what Load needs.
SCRIPT = r"""
local hex = os.getenv("BENCH_HEX") == "1"
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do
  if hex then
    line = (line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end
  bodies[#bodies + 1] = line
end
wrk.method = "POST"
for line in io.lines(os.getenv("BENCH_HEADERS")) do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
if #bodies == 1 then
  wrk.body = bodies[1]
else
  local n = 0
  function request()
    n = n + 1
    return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
  end
end

local rate = tonumber(os.getenv("BENCH_CONN_RATE") or "0")
if rate > 0 then
  math.randomseed(os.time())
  -- open-loop pacing: exponential gaps (a Poisson stream) per connection, in ms
  function delay()
    return math.floor(-math.log(1 - math.random()) * 1000 / rate + 0.5)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(os.getenv("BENCH_RESULT_PREFIX"), string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, '
      .. '"socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int
    """Answers with status 400 or above, and socket errors (connect, read, write, timeout)."""


@dataclass(frozen=True)
class WrkRun:
    """A finished wrk run: its figures, and the summary wrk printed for people."""

    load: Load
    output: str


def median_load(loads: Sequence[Load]) -> Load:
    """Median rate and latencies of repeated runs; their requests and failures summed."""
    return Load(
        float(statistics.median(load.rps for load in loads)),
        float(statistics.median(load.p50_ms for load in loads)),
        float(statistics.median(load.p99_ms for load in loads)),
        sum(load.requests for load in loads),
        sum(load.bad for load in loads),
    )


def parse_output(stdout: str) -> WrkRun:
    """Split wrk's stdout into the done() hook's figures and wrk's own summary."""
    lines = stdout.splitlines()
    results = [line for line in lines if line.startswith(RESULT_PREFIX)]
    if not results:
        raise ValueError(f"wrk printed no line starting {RESULT_PREFIX!r}:\n{stdout}")
    figures = json.loads(results[-1].removeprefix(RESULT_PREFIX))
    seconds = figures["duration_us"] / 1e6
    load = Load(
        rps=figures["requests"] / seconds if seconds > 0 else 0.0,
        p50_ms=figures["p50_us"] / 1e3,
        p99_ms=figures["p99_us"] / 1e3,
        requests=figures["requests"],
        bad=figures["non_2xx"] + figures["socket_errors"],
    )
    summary = "\n".join(line for line in lines if not line.startswith(RESULT_PREFIX))
    return WrkRun(load, summary)


class PendingRun:
    """wrk running in the background; :meth:`finish` waits for it and reads its figures."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def finish(self) -> WrkRun:
        stdout, stderr = self.process.communicate()
        if self.process.returncode != 0:
            raise RuntimeError(f"wrk failed with {self.process.returncode}:\n{stdout}{stderr}")
        return parse_output(stdout)


@contextlib.contextmanager
def started(
    url: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    rate: float = 0.0,
    headers: Mapping[str, str] = JSON_HEADERS,
    binary: bool = False,
) -> Iterator[PendingRun]:
    """Start wrk POSTing ``bodies`` in turn to ``url``; ``rate`` paces it (requests/s, 0: flat out).

    Every request carries ``headers``. JSON bodies must each be one line; ``binary`` bodies
    may hold any bytes (they reach wrk hex-encoded). wrk is killed (by its pid) if it is
    still running on the way out.
    """
    if not bodies or (not binary and any(b"\n" in body for body in bodies)):
        raise ValueError("wrk needs one or more bodies, each on one line")
    if any("\n" in f"{name}{value}" or ":" in name for name, value in headers.items()):
        raise ValueError("a header's name holds no colon, and neither part a line break")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script, lines = Path(folder) / "post.lua", Path(folder) / "bodies.txt"
        header_lines = Path(folder) / "headers.txt"
        script.write_text(SCRIPT)
        encoded = [body.hex().encode() if binary else body for body in bodies]
        lines.write_bytes(b"".join(body + b"\n" for body in encoded))
        header_lines.write_text("".join(f"{name}: {value}\n" for name, value in headers.items()))
        env = dict(os.environ, BENCH_BODIES=str(lines), BENCH_RESULT_PREFIX=RESULT_PREFIX)
        env.update(BENCH_HEADERS=str(header_lines), BENCH_HEX="1" if binary else "0")
        env["BENCH_CONN_RATE"] = str(rate / connections)
        argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", WRK_TIMEOUT]
        process = subprocess.Popen(
            [*argv, "-s", str(script), url], env=env, stdout=PIPE, stderr=PIPE, text=True
        )
        try:
            yield PendingRun(process)
        finally:
            if process.returncode is None:  # not finished: stop it and close its pipes
                process.kill()
                process.communicate()


def wrk(
    url: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    rate: float = 0.0,
    headers: Mapping[str, str] = JSON_HEADERS,
    binary: bool = False,
) -> Load:
    """Drive ``url`` with POSTs of ``body`` for ``seconds``; ``rate`` paces it (requests/s).

    ``headers`` and ``binary`` are as :func:`started` takes them.
    """
    with started(
        url,
        [body],
        connections=connections,
        seconds=seconds,
        rate=rate,
        headers=headers,
        binary=binary,
    ) as run:
        return run.finish().load
