"""The monitor process: per-image features, model and input metrics, the drift window and
its tests, and the prediction log, for every prediction the serving process sends.

It runs apart from the server so that none of this competes with request handling for
the interpreter lock. ``service.Monitor`` starts it and talks to it through a pipe; with
``mnistops serve --workers N`` the supervisor starts one for every worker, which listens
on a Unix socket: one drift window, one live accuracy and one prediction-log writer over
all the workers' predictions.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Hashable
from multiprocessing import AuthenticationError, Pipe
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from mnistops.bundle import ReferenceProfile, load_bundle
from mnistops.calibration import Calibration
from mnistops.config import Settings
from mnistops.errors import AlreadyLabelledError
from mnistops.features import FEATURE_NAMES, image_features
from mnistops.monitor import metrics
from mnistops.monitor.drift import DriftDetector, DriftReport
from mnistops.monitor.feedback import Feedback
from mnistops.monitor.messages import (
    FEEDBACK_LABELLED,
    FEEDBACK_STORE_DOWN,
    FEEDBACK_UNKNOWN,
    FeedbackReply,
    GiveFeedback,
    Predictions,
    Settled,
    StatusReply,
    StatusRequest,
    Stop,
    Stopped,
    SwitchModel,
    ToMonitor,
)
from mnistops.monitor.predlog import FeedbackStore, LogRow, PredictionLog, json_text, now

log = logging.getLogger("mnistops.monitor")

MONITOR_NICE = 10
"""CPU priority of the monitor process below the server's: monitoring yields to serving."""
LOG_DROP_REASONS = ("queue_full", "store_error", "monitor_error")
PIXEL_LEVELS = 255
"""Logged images are stored as uint8 grey levels."""
LOGGED_DECIMALS = 6
"""Logged probabilities are rounded to this many decimals."""
FEEDBACK_WAIT_S = 1.0
"""With several workers, how long feedback for a prediction not seen yet waits for it:
another worker ships its predictions every ``service.TICK_SECONDS``."""
MAX_DEFERRED = 1000
"""Feedback waiting for its prediction at most; beyond, unknown ids are refused at once."""
DRAIN_POLL_S = 1.0
"""On Stop, how long a worker's connection may stay silent before it is given up on."""


class MonitorAddress(NamedTuple):
    """Where a shared monitor process listens, and the key a worker proves itself with."""

    path: str
    authkey: bytes


class MonitorCore:
    """What the monitor process does with what it receives (in process, for tests too)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        version: str,
        reference: ReferenceProfile,
        calibration: Calibration | None = None,
    ) -> None:
        self.settings = settings
        self.calibration = calibration
        """The version's temperature and ATC threshold (None: no estimate of accuracy)."""
        self._right: collections.deque[np.ndarray] = collections.deque()
        """Per batch in the window, each image's "probably right" flag (ATC)."""
        self._confident = 0  # images in the window flagged probably right
        self._in_window = 0
        self.log = PredictionLog(settings.prediction_log, settings.prediction_log_queue)
        self.feedback = Feedback(FeedbackStore(settings.prediction_log))
        self._last_check = 0.0
        self._alarms_counted = 0
        self._sampler = np.random.default_rng()
        """Picks the images kept in the log, at ``prediction_log_image_rate``."""
        self.drift = DriftDetector(
            reference, reference.drift_calibration(), settings.drift_ert, settings.drift_check_every
        )
        self._tried: set[int] = set()
        """Feedback answered "not known yet" once (its ``seq``)."""
        self._set_labels(name, version)
        for reason in LOG_DROP_REASONS:  # export zeros before the first drop
            metrics.LOG_DROPPED.labels(reason)

    def handle(
        self, message: ToMonitor, origin: Hashable = None
    ) -> StatusReply | FeedbackReply | None:
        """Act on one message from the serving process (from ``origin``, its connection);
        the reply to send, if any.

        ``Stop`` is the caller's to act on (it ends the loop); here it does nothing.
        """
        match message:
            case Predictions():
                try:
                    self.ingest(message, origin)
                except Exception:  # one bad batch must not end monitoring
                    log.exception("monitor failed to process %d predictions", len(message))
                    metrics.LOG_DROPPED.labels("monitor_error").inc(len(message))
                    self.log.settle({origin: len(message)})
            case StatusRequest(seq=seq):
                return StatusReply(seq, metrics.render_monitor(), self.drift_status())
            case GiveFeedback():
                return self.answer_feedback(message, last_try=True)
            case SwitchModel(bundle_dir=bundle_dir):
                bundle = load_bundle(bundle_dir)
                if (bundle.name, bundle.version) != self._model:  # every worker tells
                    self.set_model(
                        bundle.name, bundle.version, bundle.reference(), bundle.calibration()
                    )
            case Stop():
                pass
        return None

    def answer_feedback(self, message: GiveFeedback, *, last_try: bool) -> FeedbackReply | None:
        """Store a true label; None if its prediction is not known yet and this is not the
        ``last_try`` (the log is searched on the first and the last try only)."""
        first_try = message.seq not in self._tried
        self._tried.discard(message.seq)
        try:
            answer = self.feedback.record(
                message.request_id, message.label, look_in_log=first_try or last_try
            )
        except KeyError:
            if last_try:
                return FeedbackReply(message.seq, error=FEEDBACK_UNKNOWN)
            self._tried.add(message.seq)
            return None
        except AlreadyLabelledError:
            return FeedbackReply(message.seq, error=FEEDBACK_LABELLED)
        except SQLAlchemyError as exc:
            log.warning("feedback not stored: %s", exc)
            return FeedbackReply(message.seq, error=FEEDBACK_STORE_DOWN)
        return FeedbackReply(message.seq, answer=answer)

    def set_model(
        self,
        name: str,
        version: str,
        reference: ReferenceProfile,
        calibration: Calibration | None = None,
    ) -> None:
        """A new version is served: new reference profile, fresh drift window."""
        self.drift.reset(reference, reference.drift_calibration())
        self._alarms_counted = 0
        self.calibration = calibration
        self._right.clear()
        self._confident = self._in_window = 0
        self._set_labels(name, version)

    def _set_labels(self, name: str, version: str) -> None:
        self._model = (name, version)
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(name, version).set(1)
        metrics.CONFIDENCE.touch(self._model)
        self._low = metrics.LOW_CONFIDENCE.labels(name, version)
        self._digits = [metrics.PREDICTIONS.labels(name, version, str(d)) for d in range(10)]
        metrics.DRIFT_DETECTED.clear()
        metrics.DRIFT_DETECTED.labels(name, version).set(0)
        metrics.DRIFT_ALARMS.labels(name, version)  # exported as 0 before the first
        metrics.ESTIMATED_ACCURACY.clear()

    def ingest(self, batch: Predictions, origin: Hashable = None) -> None:
        """Everything the monitor does with a batch of predictions."""
        features = image_features(batch.pixels)
        labels = batch.probabilities.argmax(axis=1)
        confidence = batch.probabilities.max(axis=1)
        self._update_metrics(features, labels, confidence)
        self._maybe_check(features, batch.probabilities)
        self._estimate(batch.probabilities, features)
        self.feedback.remember(batch.request_ids, batch.probabilities)
        self.log.put_many(self._log_rows(batch, features, labels, confidence), origin)

    def _update_metrics(
        self, features: np.ndarray, labels: np.ndarray, confidence: np.ndarray
    ) -> None:
        for digit, count in enumerate(np.bincount(labels, minlength=10)):
            if count:
                self._digits[digit].inc(int(count))
        metrics.CONFIDENCE.observe(confidence, self._model)
        low = int((confidence < self.settings.low_confidence).sum())
        if low:
            self._low.inc(low)
        for j, name in enumerate(FEATURE_NAMES):
            metrics.INPUT_FEATURES[name].observe(features[:, j])

    def _estimate(self, probabilities: np.ndarray, features: np.ndarray) -> None:
        """Slide the window of "probably right" flags (ATC) and export its share."""
        if self.calibration is None:
            return
        above = self.calibration.probably_right(probabilities, features)
        self._right.append(above)
        self._confident += int(above.sum())
        self._in_window += len(above)
        while self._in_window - len(self._right[0]) >= self.settings.drift_window:
            dropped = self._right.popleft()
            self._confident -= int(dropped.sum())
            self._in_window -= len(dropped)
        metrics.ESTIMATED_ACCURACY.labels(*self._model).set(self.estimated_accuracy() or 0.0)

    def estimated_accuracy(self) -> float | None:
        """ATC's estimate over about the last ``drift_window`` predictions."""
        return self._confident / self._in_window if self._in_window else None

    def _maybe_check(self, features: np.ndarray, probabilities: np.ndarray) -> None:
        rested = time.monotonic() - self._last_check >= self.settings.drift_min_interval_s
        report = self.drift.update(features, probabilities, allow_report=rested)
        metrics.DRIFT_WINDOW.set(self.drift.in_window)
        if report is not None:
            self._last_check = time.monotonic()
            self._export(report)

    def _export(self, report: DriftReport) -> None:
        metrics.DRIFT_DETECTED.labels(*self._model).set(1 if report.drift else 0)
        metrics.DRIFT_CHECKS.labels("drift" if report.drift else "ok").inc()
        metrics.DRIFT_THRESHOLD.set(report.threshold)
        metrics.DRIFT_ALARMS.labels(*self._model).inc(self.drift.alarms - self._alarms_counted)
        self._alarms_counted = self.drift.alarms
        for name, result in report.tests.items():
            metrics.DRIFT_SCORE.labels(name).set(result.score)
            metrics.DRIFT_EFFECT.labels(name).set(result.effect)

    def _log_rows(
        self,
        batch: Predictions,
        features: np.ndarray,
        labels: np.ndarray,
        confidence: np.ndarray,
    ) -> list[LogRow]:
        """The prediction log's rows for a batch (in ``LOG_COLUMNS`` order), their JSON
        encoded here, each image kept with probability ``prediction_log_image_rate``."""
        n = len(batch)
        stamp = now()
        images: list[bytes | None] = [None] * n
        rate = self.settings.prediction_log_image_rate if self.settings.prediction_log_images else 0
        kept = np.flatnonzero(self._sampler.random(n) < rate) if rate < 1 else np.arange(n)
        if len(kept):
            quantised = np.round(batch.pixels[kept] * PIXEL_LEVELS).astype(np.uint8)
            for index, image in zip(kept.tolist(), quantised, strict=True):
                images[index] = image.tobytes()
        rounded = np.round(batch.probabilities, LOGGED_DECIMALS)  # float32: short JSON
        probabilities = [json_text(row) for row in rounded]
        names = FEATURE_NAMES
        feature_json = [json_text(dict(zip(names, row, strict=True))) for row in features.tolist()]
        return list(
            zip(
                itertools.repeat(stamp, n),
                batch.request_ids,
                batch.model_versions,
                labels.tolist(),
                confidence.tolist(),
                (latency * 1000.0 for latency in batch.latencies_s),
                probabilities,
                feature_json,
                images,
                strict=True,
            )
        )

    def drift_status(self) -> dict[str, Any]:
        """The answer of GET /monitoring/drift: the window and the last check's verdict."""
        last = self.drift.last
        return {
            "model_name": self._model[0],
            "model_version": self._model[1],
            "window_size": self.drift.window,
            "windows": list(self.drift.windows),
            "observed": self.drift.in_window,  # the API's name, kept for its clients
            "check_every": self.drift.report_every,
            "ert": self.drift.ert,
            "alarms": self.drift.alarms,
            "estimated_accuracy": self.estimated_accuracy(),
            "checked": last is not None,
            **(last.as_dict() if last is not None else {"drift": False, "tests": {}}),
        }


def run_monitor_process(
    conn: Connection,
    settings: Settings,
    bundle_dir: Path,
    listen: MonitorAddress | None = None,
) -> None:
    """The monitor process's entry point: handle messages from the process that started it
    (``conn``) and, given ``listen``, from every worker that connects there; until told to
    stop (or until the starting process is gone), then flush the prediction log."""
    _yield_to_serving()
    bundle = load_bundle(bundle_dir)
    core = MonitorCore(
        settings, bundle.name, bundle.version, bundle.reference(), bundle.calibration()
    )
    core.log.start()
    core.feedback.store.connect()
    listener = Listener(listen.path, "AF_UNIX", authkey=listen.authkey) if listen else None
    try:
        Hub(core, conn, listener).run()
    finally:
        if listener is not None:
            listener.close()
        core.log.stop()
        core.feedback.store.close()
        with contextlib.suppress(OSError, ValueError):
            conn.send(Stopped())


def _yield_to_serving() -> None:
    # Ctrl-C reaches the whole process group: the server decides when this process stops
    # (its Stop message, or the end of the pipe), so the prediction log gets flushed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(MONITOR_NICE)  # on a saturated machine, answering requests comes first


def answer_until_stopped(conn: Connection, core: MonitorCore) -> None:
    """Hand each message to ``core`` and send its reply, until ``Stop`` or the end of the
    pipe."""
    Hub(core, conn).run()


class _Deferred(NamedTuple):
    conn: Connection
    message: GiveFeedback
    deadline: float


class Hub:
    """The monitor process's connections: its owner's (the process that started it: the
    server, or the workers' supervisor) and, when it has a listener, every worker's.

    Messages are handled in the order each connection sent them. With workers, feedback
    for a prediction not seen yet waits up to ``FEEDBACK_WAIT_S`` for the worker that made
    it to ship it.
    """

    def __init__(self, core: MonitorCore, owner: Connection, listener: Listener | None = None):
        self.core = core
        self.owner = owner
        self.conns: list[Connection] = [owner]
        self._send_lock = threading.Lock()
        """Replies go from this thread, settled counts from the log's writer thread."""
        self._settled: dict[Hashable, int] = {}
        core.log.on_settled = self._tell_settled
        self._deferred: list[_Deferred] = []
        self._arrivals: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._wake, self._waker = Pipe(duplex=False)
        if listener is not None:
            threading.Thread(
                target=self._accept, args=(listener,), name="monitor-accept", daemon=True
            ).start()
        self._shared = listener is not None

    def run(self) -> None:
        """Until ``Stop`` or the end of the owner's connection."""
        while True:
            for conn in wait([*self.conns, self._wake], self._timeout()):
                if conn is self._wake:
                    self._admit()
                elif not self._receive(conn):  # type: ignore[arg-type]
                    return
            self._retry_deferred(time.monotonic())

    def _receive(self, conn: Connection) -> bool:
        """Handle one message from ``conn``; False when the monitor is to stop."""
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self.conns.remove(conn)
            return conn is not self.owner  # a worker may go; the owner's end is the end
        if isinstance(message, Stop):
            self._drain()
            return False
        self._handle(conn, message)
        return True

    def _handle(self, conn: Connection, message: ToMonitor) -> None:
        reply: StatusReply | FeedbackReply | None
        if isinstance(message, GiveFeedback):
            reply = self.core.answer_feedback(message, last_try=not self._shared)
            if reply is None:
                self._deferred.append(_Deferred(conn, message, time.monotonic() + FEEDBACK_WAIT_S))
                return
        else:
            reply = self.core.handle(message, origin=conn)
        if reply is not None:
            self._send(conn, reply)

    def _send(self, conn: Connection, reply: StatusReply | FeedbackReply | Settled) -> None:
        with self._send_lock, contextlib.suppress(OSError, ValueError):  # a worker gone
            conn.send(reply)

    def _tell_settled(self, origin: Hashable, count: int) -> None:
        """The log settled ``count`` more rows of ``origin``'s: tell it the new total."""
        with self._send_lock:
            total = self._settled[origin] = self._settled.get(origin, 0) + count
            if isinstance(origin, Connection):
                with contextlib.suppress(OSError, ValueError):  # a worker gone
                    origin.send(Settled(total))

    def _timeout(self) -> float | None:
        if not self._deferred:
            return None
        return max(0.0, min(d.deadline for d in self._deferred) - time.monotonic())

    def _retry_deferred(self, now: float) -> None:
        waiting, self._deferred = self._deferred, []
        for item in waiting:
            reply = self.core.answer_feedback(item.message, last_try=now >= item.deadline)
            if reply is None:
                self._deferred.append(item)
            else:
                self._send(item.conn, reply)

    def _drain(self) -> None:
        """Before stopping: what the workers sent before they went (they have gone by the
        time the owner says Stop), and a last answer to deferred feedback."""
        for conn in [c for c in self.conns if c is not self.owner]:
            with contextlib.suppress(EOFError, OSError):
                while conn.poll(DRAIN_POLL_S):
                    message = conn.recv()
                    if not isinstance(message, Stop):
                        self._handle(conn, message)
        self._retry_deferred(float("inf"))

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                conn = listener.accept()
            except AuthenticationError:
                log.warning("refused a connection to the monitor that did not authenticate")
                continue
            except OSError:
                return  # the listener was closed
            self._arrivals.put(conn)
            with contextlib.suppress(OSError):
                self._waker.send_bytes(b"")

    def _admit(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            while self._wake.poll():
                self._wake.recv_bytes()
        while not self._arrivals.empty():
            self.conns.append(self._arrivals.get_nowait())
