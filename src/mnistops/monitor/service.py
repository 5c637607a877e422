"""The Monitor: what the serving process calls after each prediction, and asks for state.

``record`` runs on the request path: it appends to a deque bounded by images. All the
monitoring work (per-image features, model and input metrics, the drift window and its
tests, feedback and live accuracy, the prediction log) runs in a child process
(``worker.py``), so it never competes with request handling for the interpreter lock. A
link thread ships what accumulated every ``TICK_SECONDS`` as ``Predictions`` messages.
``/metrics``, ``/monitoring/drift`` and ``/feedback`` ask the child, after it has
processed everything sent before the question; if the child dies it is started again and
the predictions it lost are counted (``mnistops_monitor_dropped_total``).

Only the link thread writes to the pipe. A question joins the queue behind the
predictions recorded before it and its asker waits for the reply for a bounded time, so a
monitor process that stalls (stopped, swapping, a full pipe) costs an asker its timeout
and never more: ``/metrics`` then serves the last state it had. The askers wait in the
Monitor's own few threads (``in_thread``), never in the pool the routes share.

With several workers (``mnistops serve --workers N``) the supervisor owns the monitor
process and each worker's Monitor connects to it (``address``) instead of starting one;
if it dies the supervisor starts it again and the workers connect again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mnistops import restarts
from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.errors import AlreadyLabelledError, MonitorUnavailableError
from mnistops.monitor import metrics
from mnistops.monitor.messages import (
    FEEDBACK_LABELLED,
    FEEDBACK_UNKNOWN,
    FeedbackReply,
    GiveFeedback,
    ModelCall,
    Predictions,
    Settled,
    StatusReply,
    StatusRequest,
    Stop,
    Stopped,
    SwitchModel,
    ToMonitor,
)
from mnistops.monitor.worker import FEEDBACK_WAIT_S, MonitorAddress, run_monitor_process

log = logging.getLogger("mnistops.monitor")

PENDING_IMAGES = 16_384
"""Recorded images waiting to be shipped (about 52 MB of pixels and probabilities); past
it a model call's images are counted as dropped and skipped. Counted in images, not
calls: a call carries up to 256 of them."""
SHIP_MAX_IMAGES = 256
"""Most images in one ``Predictions`` message: building and pickling one holds the
interpreter lock, and a backlog shipped whole (30 MB) held it for 70-130 ms."""
PICKLE_PROTOCOL = 5
"""Pickles an array's data in one copy (the default, 4, copies it several times): half a
millisecond less of the interpreter lock per message, 0.5 ms off p99 at saturation."""
TICK_SECONDS = 0.05
STATUS_TIMEOUT_S = 5.0
METRICS_TIMEOUT_S = 0.5
"""/metrics waits at most this long for the monitor process (then serves its last state):
a scrape must answer within Prometheus' scrape timeout."""
CONNECT_TIMEOUT_S = 30.0
"""How long a worker tries to reach the shared monitor process at start."""
KEPT_REPLIES = 16
"""Status replies kept for their askers; older ones were given up on."""
LINK_JOIN_S = 10.0
STOPPED_WAIT_S = 15.0
"""How long ``stop`` waits for the monitor process to flush the prediction log."""
PROCESS_JOIN_S = 5.0
RECEIVE_END_S = 1.0
"""How long a dead monitor process's last messages are waited for before its unsettled
predictions are counted."""
ASKING_THREADS = 4
"""Threads that wait for the monitor process's answers (``in_thread``): a stalled monitor
holds these, never the threads the routes share."""

T = TypeVar("T")
Question = StatusRequest | GiveFeedback
Queued = ModelCall | Question | SwitchModel


def _digit_shares(bundle: ModelBundle) -> list[float]:
    """The share of each digit among the reference profile's (held-out) true labels."""
    labels = bundle.reference().labels
    counts = np.bincount(labels.astype(np.int64), minlength=10)[:10]
    return [float(c) for c in counts / max(int(counts.sum()), 1)]


def _unknown_state() -> StatusReply:
    """What is known before the monitor process has ever answered: nothing."""
    return StatusReply(0, b"", {"checked": False, "drift": False, "tests": {}})


Reply = StatusReply | FeedbackReply


class _Replies:
    """Replies from the monitor process, each matched to the request that asked."""

    def __init__(self) -> None:
        self._arrived = threading.Condition()
        self._by_seq: dict[int, Reply] = {}
        self._seq = itertools.count(1)
        self.last: StatusReply | None = None
        """The latest status of the current monitor process (None: it has not answered)."""

    def next_seq(self) -> int:
        return next(self._seq)

    def deliver(self, reply: Reply) -> None:
        with self._arrived:
            self._by_seq[reply.seq] = reply
            while len(self._by_seq) > KEPT_REPLIES:
                del self._by_seq[min(self._by_seq)]
            if isinstance(reply, StatusReply):
                self.last = reply
            self._arrived.notify_all()

    def wait(self, seq: int, timeout: float) -> Reply | None:
        """The reply to request ``seq``, or None if it does not come within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while seq not in self._by_seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            return self._by_seq.pop(seq, None)


class Monitor:
    """The serving process's side: records predictions, ships them to the monitor process,
    and passes feedback and the drift and metrics questions on to it."""

    def __init__(
        self, settings: Settings, bundle: ModelBundle, address: MonitorAddress | None = None
    ) -> None:
        self.settings = settings
        self._bundle = bundle
        self._address = address
        """The shared monitor process to connect to (None: start one of our own)."""
        self._lost = threading.Event()
        """Set when the connection to a shared monitor process ended."""
        self._pending: collections.deque[Queued] = collections.deque()
        """Model calls, questions and switches in the order they happened; only the link
        thread takes from it and sends."""
        self._recorded_images = 0
        self._shipped_images = 0
        """Images taken off the queue; with ``_recorded_images``, what is pending."""
        self._sent_images = 0
        """Images sent to the current monitor process ..."""
        self._settled_images = 0
        """... and how many of them it has logged or counted dropped (``Settled``): if it
        dies, the difference is counted dropped."""
        self._wake = threading.Event()
        """Set when a question or switch is queued: the link sends it without a tick's wait."""
        self._send_lock = threading.Lock()
        """Held while a message is written (the link thread's, and ``stop``'s)."""
        self._backoff = restarts.Backoff()
        self._askers = ThreadPoolExecutor(ASKING_THREADS, thread_name_prefix="monitor-ask")
        self._replies = _Replies()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._conn: Connection | None = None
        self._process: BaseProcess | None = None
        self._link = threading.Thread(target=self._run_link, name="monitor-link", daemon=True)
        self._since = time.time()
        """When the version served now was swapped in (or the server started)."""
        self._digits_of: tuple[Path, list[float]] | None = None

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor process (or connect to the shared one) and the link thread.

        Raises:
            MonitorUnavailableError: the shared monitor process cannot be reached.
        """
        if self._address is None:
            self._spawn()
        elif not self._connect(CONNECT_TIMEOUT_S):
            raise MonitorUnavailableError(
                f"cannot reach the monitor process at {self._address.path}"
            )
        self._link.start()

    def stop(self) -> None:
        """Ship what is pending, let the monitor process flush the log, and stop it (a
        shared one is the supervisor's to stop: only let go of it). A monitor process that
        does not take what is sent within ``LINK_JOIN_S`` is terminated."""
        self._stop.set()
        self._wake.set()
        self._askers.shutdown(wait=False, cancel_futures=True)
        if self._link.is_alive():
            self._link.join(LINK_JOIN_S)  # it ships what is pending, then ends
        stalled = self._link.is_alive()
        if not stalled:
            with self._send_lock:
                self._ship_pending()
                if self._address is None:
                    self._send_locked(Stop())
        if self._address is not None:
            if self._conn is not None:
                self._conn.close()
            return
        if not stalled:
            self._stopped.wait(STOPPED_WAIT_S)
        if self._process is not None:
            self._process.join(0 if stalled else PROCESS_JOIN_S)
            if self._process.is_alive():
                log.warning("monitor process did not stop: terminating it")
                self._process.terminate()
                self._process.join(PROCESS_JOIN_S)

    def set_model(self, bundle: ModelBundle) -> None:
        """A new version is served: the monitor process takes its reference profile (after
        the predictions recorded before the switch)."""
        self._bundle = bundle
        self._since = time.time()
        self._pending.append(SwitchModel(bundle.path))
        self._wake.set()

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the Monitor's own threads (for the routes: a question
        to a stalled monitor process never holds a thread of the pool they share)."""
        return await asyncio.get_running_loop().run_in_executor(self._askers, fn, *args)

    def _connect(self, timeout: float) -> bool:
        """Connect to the shared monitor process, trying for up to ``timeout`` seconds."""
        from multiprocessing.connection import Client

        assert self._address is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = Client(self._address.path, "AF_UNIX", authkey=self._address.authkey)
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
                continue
            self._listen_to(conn)
            return True

    def _listen_to(self, conn: Connection) -> None:
        self._count_unsettled()
        self._sent_images = self._settled_images = 0
        self._conn = conn
        self._replies.last = None  # nothing known of this process yet
        self._stopped.clear()
        self._lost.clear()
        threading.Thread(
            target=self._receive, args=(conn,), name="monitor-receive", daemon=True
        ).start()

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        ours, theirs = context.Pipe()
        process = context.Process(
            target=run_monitor_process,
            args=(theirs, self.settings, self._bundle.path),
            name="mnistops-monitor",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process = process
        self._listen_to(ours)

    # --- the request path ---------------------------------------------------------
    def record(
        self,
        *,
        request_ids: Sequence[str],
        pixels: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
        model_version: str,
    ) -> None:
        """Note the predictions of one model call; the monitor process does the work."""
        images = len(request_ids)
        if self._recorded_images - self._shipped_images + images > PENDING_IMAGES:
            metrics.OBSERVE_DROPPED.inc(images)
            return
        self._recorded_images += images  # the request path runs on one thread: the loop's
        self._pending.append(
            ModelCall(request_ids, pixels, probabilities, latency_s, model_version)
        )

    # --- the link to the monitor process ---------------------------------------------
    def _run_link(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            self._restart_if_ended()
            with self._send_lock:
                self._ship_pending()

    def _restart_if_ended(self) -> None:
        if self._address is not None:
            if self._lost.is_set() and not self._stop.is_set():
                log.warning("monitor process connection lost: connecting again")
                self._stop.wait(restarts.FIRST_S)  # the supervisor restarts it
                with self._send_lock:
                    self._connect(timeout=0)
            return
        process = self._process
        if process is None or process.is_alive():
            return
        delay = self._backoff.delay()
        log.warning(
            "monitor process ended (exit %s): starting it again in %.0f s", process.exitcode, delay
        )
        if self._stop.wait(delay):
            return
        with self._send_lock:
            self._spawn()
            self._backoff.started()

    def _ship_pending(self) -> None:
        """Send what is queued, in order: model calls gathered into ``Predictions`` of at
        most ``SHIP_MAX_IMAGES``, each question and switch as itself (with the send lock)."""
        parts: list[ModelCall] = []
        images = 0
        while self._pending:
            item = self._pending.popleft()
            if isinstance(item, ModelCall):
                parts.append(item)
                images += len(item.request_ids)
                if images < SHIP_MAX_IMAGES:
                    continue
            self._ship_calls(parts, images)
            parts, images = [], 0
            if not isinstance(item, ModelCall):
                self._send_locked(item)
        self._ship_calls(parts, images)

    def _ship_calls(self, parts: list[ModelCall], images: int) -> None:
        if not parts:
            return
        self._shipped_images += images
        if self._send_locked(Predictions.of_calls(parts)):
            self._sent_images += images
        else:
            metrics.OBSERVE_DROPPED.inc(images)

    def _count_unsettled(self) -> None:
        """The previous monitor process is gone: what it was sent and had not logged (or
        counted dropped) is lost with it, and counted dropped here."""
        if self._conn is not None:
            self._stopped.wait(RECEIVE_END_S)  # its last Settled may still be in the pipe
        lost = self._sent_images - self._settled_images
        if lost > 0:
            metrics.OBSERVE_DROPPED.inc(lost)
            log.warning("%d predictions the monitor process had not logged: counted dropped", lost)

    def _send_locked(self, message: ToMonitor) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.send_bytes(ForkingPickler.dumps(message, protocol=PICKLE_PROTOCOL))
        except (OSError, ValueError) as exc:
            log.warning("monitor process unreachable: %s", exc)
            return False
        return True

    def _receive(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, StatusReply | FeedbackReply):
                self._replies.deliver(message)
            elif isinstance(message, Settled):
                if conn is self._conn:  # not a late word of an earlier process
                    self._settled_images = message.images
            elif isinstance(message, Stopped):
                break
        if conn is self._conn:  # not an earlier, restarted process
            self._stopped.set()
            self._lost.set()

    # --- questions to the monitor process ---------------------------------------------
    def _ask(self, question: Question, timeout: float) -> Reply | None:
        """Queue ``question`` behind every prediction recorded so far; its reply, or None
        if none comes within ``timeout`` (or there is no monitor process to ask)."""
        if self._conn is None:
            return None
        self._pending.append(question)
        self._wake.set()
        reply = self._replies.wait(question.seq, timeout)
        if reply is None:
            log.warning("monitor process did not answer within %s s", timeout)
        return reply

    def _state(self, timeout: float = STATUS_TIMEOUT_S) -> StatusReply:
        """The monitor process's metrics text and drift status, after it has processed
        every prediction recorded so far (the last known state if it does not answer)."""
        reply = self._ask(StatusRequest(self._replies.next_seq()), timeout)
        if isinstance(reply, StatusReply):
            return reply
        return self._replies.last or _unknown_state()

    def render_metrics(self) -> bytes:
        """The exposition text of /metrics: the serving process's families and the
        monitor process's."""
        # a monitor process that has answered before answers quickly; one still starting
        # (its imports take a second or two) is worth waiting for
        timeout = METRICS_TIMEOUT_S if self._replies.last else STATUS_TIMEOUT_S
        return metrics.render_latest(self._state(timeout).metrics_text)[0]

    def drift_status(self) -> dict[str, Any]:
        """The answer of GET /monitoring/drift."""
        return self._state().drift

    def summary(self) -> dict[str, Any]:
        """The answer of GET /monitoring/summary, what the live page shows: the service's
        counters as totals so far (the page turns two of them into rates), the drift
        verdict, and the reference the predicted digits are compared with."""
        state = self._state()
        text = metrics.render_latest(state.metrics_text)[0].decode()
        bundle = self._bundle
        return {
            "model": {"name": bundle.name, "version": bundle.version, "since": self._since},
            "time": time.time(),
            **metrics.summarise(text, bundle.name, bundle.version),
            "reference_digits": self._reference_digits(bundle),
            "drift": state.drift,
        }

    def _reference_digits(self, bundle: ModelBundle) -> list[float]:
        if self._digits_of is None or self._digits_of[0] != bundle.path:
            self._digits_of = (bundle.path, _digit_shares(bundle))
        return self._digits_of[1]

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        """Store a true label; update live accuracy (in the monitor process).

        Raises:
            KeyError: no prediction with ``request_id`` is remembered or logged.
            AlreadyLabelledError: that prediction has its true label already.
            MonitorUnavailableError: the monitor process, or the prediction log's database,
                cannot answer now.
        """
        question = GiveFeedback(self._replies.next_seq(), request_id, label)
        reply = self._ask(question, STATUS_TIMEOUT_S + FEEDBACK_WAIT_S)
        if not isinstance(reply, FeedbackReply):
            raise MonitorUnavailableError("the monitor process did not answer")
        if reply.error == FEEDBACK_UNKNOWN:
            raise KeyError(request_id)
        if reply.error == FEEDBACK_LABELLED:
            raise AlreadyLabelledError(f"request {request_id} has its true label already")
        if reply.answer is None:
            raise MonitorUnavailableError("the prediction log's database is unavailable")
        return reply.answer
