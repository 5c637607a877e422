"""bench/servers.py and bench/load.py against real processes: tiny HTTP servers and wrk."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from bench import load, servers
from bench.servers import LOOPBACK, free_port, http_ok

pytestmark = pytest.mark.integration

WRK_SECONDS = 1.0


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST 200 with ``{}`` and keeps the bodies it was sent."""

    bodies: ClassVar[set[bytes]] = set()

    def do_POST(self) -> None:
        self.bodies.add(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    """The URL of a threaded in-process HTTP server that records POST bodies."""
    _Recorder.bodies.clear()
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


def test_wrk_figures_come_from_the_done_hook(recorder: str) -> None:
    measured = load.wrk(recorder, b'{"image": [0]}', connections=2, seconds=WRK_SECONDS)
    assert measured.requests > 0 and measured.bad == 0
    assert measured.rps == pytest.approx(measured.requests / WRK_SECONDS, rel=0.3)
    assert 0 < measured.p50_ms <= measured.p99_ms
    assert _Recorder.bodies == {b'{"image": [0]}'}


def test_several_bodies_are_sent_in_turn_and_wrk_keeps_its_summary(recorder: str) -> None:
    bodies = [b'{"a": 1}', b'{"b": 2}', b"{not json"]
    with load.started(recorder, bodies, connections=1, seconds=WRK_SECONDS) as pending:
        run = pending.finish()
    assert _Recorder.bodies == set(bodies)
    assert "requests in" in run.output and run.load.requests > 0


def test_a_served_http_server_is_ready_measured_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}/"
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK]
    log_path = tmp_path / "http.log"
    with servers.serving(argv, dict(os.environ), log_path, functools.partial(http_ok, url)) as srv:
        assert 0 < srv.ready_seconds < servers.READY_TIMEOUT_S
        assert servers.tree_rss_mb(srv.process.pid) > 1
        # http.server answers POST with 501: every request counts as bad.
        measured = load.wrk(url, b"{}", connections=1, seconds=WRK_SECONDS)
        assert measured.requests > 0 and measured.bad == measured.requests
    assert srv.process.returncode is not None
    assert not http_ok(url)


def test_a_server_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "raise SystemExit(3)"]
    log_path = tmp_path / "early.log"
    never = functools.partial(http_ok, f"http://{LOOPBACK}:{free_port()}/")
    serving = servers.serving(argv, dict(os.environ), log_path, never)
    with pytest.raises(servers.ServerExitedError, match=f"exited with 3.*{log_path}"), serving:
        pass


@pytest.mark.parametrize(
    ("on_sigterm", "killed_by"),
    [("signal.SIG_IGN", signal.SIGKILL), ("signal.SIG_DFL", signal.SIGTERM)],
    ids=["server-ignores-sigterm", "server-exits-leaving-a-child"],
)
def test_stop_kills_the_server_and_children_left_behind(
    tmp_path: Path, on_sigterm: str, killed_by: int
) -> None:
    child_pid = tmp_path / "child.pid"
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        f"signal.signal(signal.SIGTERM, {on_sigterm})\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while not child_pid.exists() or not child_pid.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    started = time.monotonic()
    servers.stop(process, grace=0.5)
    assert process.returncode == -killed_by
    assert time.monotonic() - started < 5
    assert not _alive(int(child_pid.read_text()))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.02)
    return True
