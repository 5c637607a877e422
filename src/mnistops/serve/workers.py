"""``mnistops serve --workers N``: N server processes on one port, one monitor process.

The supervisor (the process that ran ``mnistops serve``):

- resolves the model once and binds the HTTP port; every worker accepts on that one
  socket (the kernel hands each connection to one of them) and binds the gRPC port itself
  with SO_REUSEPORT;
- starts the monitor process, shared by all the workers through a Unix socket in a
  private folder: one drift window, one live accuracy, one writer of the prediction log,
  over every worker's predictions (no writers contending for the log's lock);
- starts the workers: each loads and warms up the model, reports, and waits; they start
  answering together once all have reported, so the service is ready only with every
  worker warm;
- relays SIGHUP (reload the model) and SIGTERM or SIGINT (drain) to every worker, and a
  worker's ``/admin/reload`` comes back to it as SIGHUP, so every worker follows;
- starts again a worker or the monitor process that dies;
- once the workers have drained, stops the monitor process (which flushes the log) and
  removes the folder; exits 0.

Metrics: each worker starts with ``PROMETHEUS_MULTIPROC_DIR`` set (a folder under the
private one; the monitor process starts without it), so its request and batching
metrics are written to files there; any worker's ``/metrics`` shows their sum, beside the
monitor's families, which exist once. The supervisor marks a worker that ended as dead,
so that in-flight (``livesum``) counts only the live ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from socket import socket
from types import FrameType

from prometheus_client import multiprocess

from mnistops import restarts
from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.errors import ServeError
from mnistops.monitor.messages import Stop
from mnistops.monitor.metrics import MULTIPROC_DIR, WORKER_PID_FILE
from mnistops.monitor.worker import MonitorAddress, run_monitor_process
from mnistops.serve.server import banner, check_address, listening_socket, run_worker

log = logging.getLogger("mnistops.serve")

READY_TIMEOUT_S = 300.0
"""How long a worker may take to load and warm up the model."""
TICK_S = 0.5
"""How often the supervisor looks for a process that ended."""
DRAIN_MARGIN_S = 5.0
"""Beyond the grace period, how long a draining worker has before it is killed."""
MONITOR_STOP_S = 15.0
"""How long the monitor process may take to flush the prediction log."""


def serve_workers(settings: Settings) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT (blocking).

    Raises:
        ServeError: the port cannot be listened on, or a worker failed to start.
    """
    from mnistops.registry import resolve

    check_address(settings.host, settings.port)
    if settings.grpc_port:
        check_address(settings.host, settings.grpc_port, "MNISTOPS_GRPC_PORT")
    started = time.perf_counter()
    bundle = resolve(settings.model_uri, settings)
    if settings.monitoring:
        bundle.reference()  # an unusable profile is reported once, not by every worker
    sock = listening_socket(settings)
    folder = Path(tempfile.mkdtemp(prefix="mnistops-serve-"))
    supervisor = Supervisor(settings, bundle, sock, folder)
    try:
        supervisor.start()
        print(banner(bundle, settings, time.perf_counter() - started), flush=True)
        supervisor.supervise()
    finally:
        supervisor.stop()
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


class Supervisor:
    """The worker processes and the shared monitor process, from start to drained stop."""

    def __init__(self, settings: Settings, bundle: ModelBundle, sock: socket, folder: Path):
        self.settings = settings
        self.bundle = bundle
        self.sock = sock
        self.metrics_dir = folder / "metrics"
        self.metrics_dir.mkdir()
        self.address: MonitorAddress | None = (
            MonitorAddress(str(folder / "monitor.sock"), secrets.token_bytes(32))
            if settings.monitoring
            else None
        )
        self._context = get_context("spawn")  # never fork a process that has threads
        self._go = self._context.Event()
        self.workers: list[BaseProcess | None] = [None] * settings.workers
        self.monitor: BaseProcess | None = None
        self._monitor_conn: Connection | None = None
        self._stopping = threading.Event()
        self._backoffs: dict[int | None, restarts.Backoff] = {}
        """The restart waits of each worker (by index) and of the monitor process (None)."""
        self._hangups = 0

    # --- start ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor process and the workers; return once every worker is warm.

        Raises:
            ServeError: a worker failed to load the model or to start.
        """
        self._install_signals()
        if self.address is not None:
            self._start_monitor()
        reports = [self._start_worker(i) for i in range(len(self.workers))]
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = dict(enumerate(reports))
        while waiting and not self._stopping.is_set():
            ready = wait(list(waiting.values()), min(TICK_S, deadline - time.monotonic()))
            for index, conn in list(waiting.items()):
                if conn not in ready:
                    continue
                try:
                    error = conn.recv()
                except EOFError:
                    error = f"exit code {self._exitcode(index)}"
                if error is not None:
                    raise ServeError(f"worker {index} failed to start: {error}")
                del waiting[index]
            if time.monotonic() >= deadline:
                raise ServeError(f"workers not ready within {READY_TIMEOUT_S:.0f} s")
        self._go.set()

    def _exitcode(self, index: int) -> int | None:
        process = self.workers[index]
        if process is None:
            return None
        process.join(TICK_S)
        return process.exitcode

    def _start_worker(self, index: int) -> Connection:
        """Start worker ``index``; the end of the pipe it reports on (None: warm)."""
        ours, theirs = self._context.Pipe(duplex=False)
        worker = self._context.Process(
            target=run_worker,
            args=(
                self.settings,
                self.bundle,
                self.sock,
                self.address,
                str(self.metrics_dir),
                theirs,
                self._go,
            ),
            name=f"mnistops-worker-{index}",
        )
        with _environment(MULTIPROC_DIR, str(self.metrics_dir)):  # the worker's, not ours
            worker.start()
        theirs.close()
        self.workers[index] = worker
        return ours

    def _start_monitor(self) -> None:
        assert self.address is not None
        with contextlib.suppress(FileNotFoundError):
            Path(self.address.path).unlink()  # left by a monitor process that was killed
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=run_monitor_process,
            args=(theirs, self.settings, self.bundle.path, self.address),
            name="mnistops-monitor",
            daemon=True,
        )
        process.start()
        theirs.close()
        self.monitor, self._monitor_conn = process, ours

    # --- run ----------------------------------------------------------------------------
    def supervise(self) -> None:
        """Until SIGTERM or SIGINT: relay SIGHUP, start again what ended."""
        hangups = 0
        while not self._stopping.is_set():
            sentinels = [p.sentinel for p in self._processes()]
            wait(sentinels, TICK_S)
            if self._stopping.is_set():
                break
            if self._hangups != hangups:
                hangups = self._hangups
                self._signal_workers(signal.SIGHUP)
            self._restart_ended()

    def _processes(self) -> list[BaseProcess]:
        return [p for p in [*self.workers, self.monitor] if p is not None]

    def _restart_ended(self) -> None:
        if self.monitor is not None and not self.monitor.is_alive():
            delay = self._backoff(None).delay()
            log.warning(
                "monitor process ended (exit %s): starting it again in %.0f s",
                self.monitor.exitcode,
                delay,
            )
            if self._stopping.wait(delay):
                return
            self._start_monitor()
            self._backoff(None).started()
        for index, process in enumerate(self.workers):
            if process is None or process.is_alive():
                continue
            delay = self._backoff(index).delay()
            log.warning(
                "worker %d ended (exit %s): starting it again in %.0f s",
                index,
                process.exitcode,
                delay,
            )
            self._forget(process)
            if self._stopping.wait(delay):
                return
            self._start_worker(index).close()  # the go event is set: it serves once warm
            self._backoff(index).started()

    def _backoff(self, index: int | None) -> restarts.Backoff:
        return self._backoffs.setdefault(index, restarts.Backoff())

    def _forget(self, process: BaseProcess) -> None:
        """A worker has ended: its in-flight gauge and process metrics no longer count."""
        if process.pid is None:
            return
        multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        with contextlib.suppress(FileNotFoundError):
            (self.metrics_dir / WORKER_PID_FILE.format(pid=process.pid)).unlink()

    # --- signals --------------------------------------------------------------------------
    def _install_signals(self) -> None:
        def stop(sig: int, frame: FrameType | None) -> None:
            self._stopping.set()

        def hangup(sig: int, frame: FrameType | None) -> None:
            self._hangups += 1  # relayed by supervise(), not from within a signal handler

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    def _signal_workers(self, sig: int) -> None:
        for process in self.workers:
            if process is not None and process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)

    # --- stop ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain every worker (each within the grace period), then stop the monitor
        process once it has flushed the prediction log."""
        self._stopping.set()
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period_s + DRAIN_MARGIN_S
        for process in self.workers:
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not drain in time: killing it", process.pid)
                process.kill()
                process.join()
        self._stop_monitor()

    def _stop_monitor(self) -> None:
        if self.monitor is None or self._monitor_conn is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._monitor_conn.send(Stop())
            self._monitor_conn.poll(MONITOR_STOP_S)  # its Stopped, once the log is flushed
        self.monitor.join(MONITOR_STOP_S)
        if self.monitor.is_alive():
            self.monitor.terminate()


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` for a process started within (spawn copies the
    environment), and as it was afterwards."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before
