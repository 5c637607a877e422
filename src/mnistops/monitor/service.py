"""The Monitor: what the service calls after each prediction, and its HTTP routes.

The serving process only notes each prediction: ``observe`` appends to a bounded
deque on the request path and remembers the predicted label for feedback. All the
monitoring work (per-image features, model and input metrics, the drift window and
its tests, the prediction log) runs in a child process, ``MonitorCore``, so it never
competes with request handling for the interpreter lock. A link thread ships what
accumulated every ``TICK_SECONDS`` as one message of arrays. ``/metrics`` and
``/monitoring/drift`` ask the child for its state, after it has processed everything
sent before the question; if the child dies it is started again and the predictions
it lost are counted (``mnistops_monitor_dropped_total``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mnistops.bundle import ModelBundle, load_bundle
from mnistops.config import Settings
from mnistops.features import FEATURE_NAMES, image_features
from mnistops.monitor import metrics
from mnistops.monitor.drift import DriftDetector, DriftReport
from mnistops.monitor.predlog import PredictionLog, now

log = logging.getLogger("mnistops.monitor")

PENDING_LIMIT = 20_000
"""Observed batches waiting to be shipped; beyond it they are counted and skipped."""
RECENT_PREDICTIONS = 50_000
FEEDBACK_WINDOW = 500
TICK_SECONDS = 0.05
STATUS_TIMEOUT_S = 5.0
METRICS_TIMEOUT_S = 0.5
"""/metrics waits at most this long for the monitor process (then serves its last state):
a scrape must answer within Prometheus' scrape timeout."""
RESTART_BACKOFF_S = 1.0
MONITOR_NICE = 10
"""CPU priority of the monitor process below the server's: monitoring yields to serving."""


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction."""

    request_id: str = Field(min_length=1, max_length=80, description="From the prediction.")
    label: int = Field(ge=0, le=9, description="The digit actually written.")


# --- the child process ------------------------------------------------------------------


class MonitorCore:
    """Features, model and input metrics, drift detection and the prediction log."""

    def __init__(self, settings: Settings, bundle: ModelBundle) -> None:
        self.settings = settings
        self.log = PredictionLog(settings.prediction_log, settings.prediction_log_queue)
        self._last_check = 0.0
        self.drift = DriftDetector(
            bundle.reference(),
            settings.drift_window,
            settings.drift_check_every,
            settings.drift_alpha,
        )
        self._set_labels(bundle)
        for reason in ("queue_full", "store_error"):  # export zeros before the first drop
            metrics.LOG_DROPPED.labels(reason)

    def set_model(self, bundle: ModelBundle) -> None:
        """A new version is served: new reference profile, fresh drift window."""
        self.drift.reset(bundle.reference())
        self._set_labels(bundle)

    def _set_labels(self, bundle: ModelBundle) -> None:
        self._model = (bundle.name, bundle.version)
        metrics.CONFIDENCE.touch(self._model)
        self._low = metrics.LOW_CONFIDENCE.labels(*self._model)
        self._digits = [metrics.PREDICTIONS.labels(*self._model, str(d)) for d in range(10)]
        metrics.DRIFT_DETECTED.clear()
        metrics.DRIFT_DETECTED.labels(*self._model).set(0)

    def process(
        self,
        ids: list[str],
        pixels: np.ndarray,
        probs: np.ndarray,
        latencies: list[float],
        versions: list[str],
    ) -> None:
        """Everything the monitor does with a batch of predictions."""
        features = image_features(pixels)
        labels = probs.argmax(axis=1)
        confidence = probs.max(axis=1)
        self._update_metrics(features, labels, confidence)
        self._maybe_check(features, probs)
        self._queue_rows(ids, versions, latencies, pixels, probs, features, labels, confidence)

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

    def _maybe_check(self, features: np.ndarray, probs: np.ndarray) -> None:
        rested = time.monotonic() - self._last_check >= self.settings.drift_min_interval_s
        report = self.drift.update(features, probs, allow_check=rested)
        metrics.DRIFT_WINDOW.set(self.drift.observed)
        if report is not None:
            self._last_check = time.monotonic()
            self._export(report)

    def _export(self, report: DriftReport) -> None:
        metrics.DRIFT_DETECTED.labels(*self._model).set(1 if report.drift else 0)
        metrics.DRIFT_CHECKS.labels("drift" if report.drift else "ok").inc()
        for name, result in report.tests.items():
            metrics.DRIFT_PVALUE.labels(name).set(result.pvalue)
            metrics.DRIFT_STATISTIC.labels(name).set(result.statistic)

    def _queue_rows(
        self,
        ids: list[str],
        versions: list[str],
        latencies: list[float],
        pixels: np.ndarray,
        probs: np.ndarray,
        features: np.ndarray,
        labels: np.ndarray,
        confidence: np.ndarray,
    ) -> None:
        stamp = now()
        images = (
            np.round(pixels * 255).astype(np.uint8) if self.settings.prediction_log_images else None
        )
        rounded = np.round(probs, 6)  # numpy rows: the log's JSON encoder takes them as they are
        rows = []
        for i, (rid, label, conf, feats) in enumerate(
            zip(ids, labels.tolist(), confidence.tolist(), features.tolist(), strict=True)
        ):
            rows.append(
                {
                    "ts": stamp,
                    "request_id": rid,
                    "model_version": versions[i],
                    "label": label,
                    "confidence": conf,
                    "latency_ms": latencies[i] * 1000.0,
                    "probabilities": rounded[i],
                    "features": dict(zip(FEATURE_NAMES, feats, strict=True)),
                    "image": images[i].tobytes() if images is not None else None,
                }
            )
        self.log.put_many(rows)

    def drift_status(self) -> dict[str, Any]:
        last = self.drift.last
        return {
            "model_name": self._model[0],
            "model_version": self._model[1],
            "window_size": self.drift.window,
            "observed": self.drift.observed,
            "check_every": self.drift.check_every,
            "alpha": self.drift.alpha,
            "checked": last is not None,
            **(last.as_dict() if last is not None else {"drift": False, "tests": {}}),
        }


def run_core(conn: Connection, settings: dict[str, Any], bundle_dir: str) -> None:
    """The monitor process: handle messages from the serving process until told to stop
    (or until the serving process is gone)."""
    # Ctrl-C reaches the whole process group: the server decides when this process stops
    # (its "stop" message, or the end of the pipe), so the prediction log gets flushed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import scipy.stats  # noqa: F401 - the drift tests' import, paid once at start

    with contextlib.suppress(OSError):
        os.nice(MONITOR_NICE)  # on a saturated machine, answering requests comes first

    core = MonitorCore(Settings(**settings), load_bundle(Path(bundle_dir)))
    core.log.start()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the serving process is gone
            kind = message[0]
            if kind == "observe":
                try:
                    core.process(*message[1:])
                except Exception:
                    log.exception("monitor failed to process %d predictions", len(message[1]))
            elif kind == "status":
                conn.send(("status", message[1], metrics.render_monitor(), core.drift_status()))
            elif kind == "model":
                core.set_model(load_bundle(Path(message[1])))
            elif kind == "stop":
                return
    finally:
        core.log.stop()
        with contextlib.suppress(OSError, ValueError):
            conn.send(("stopped",))


# --- the serving process ----------------------------------------------------------------


class Monitor:
    """The serving process's side: notes predictions, ships them to the monitor process,
    answers feedback and the drift and metrics questions."""

    def __init__(self, settings: Settings, bundle: ModelBundle) -> None:
        self.settings = settings
        self._bundle = bundle
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._feedback: collections.deque[bool] = collections.deque(maxlen=FEEDBACK_WINDOW)
        self._send_lock = threading.Lock()
        self._status = threading.Condition()
        self._answers: dict[int, tuple[bytes, dict[str, Any]]] = {}
        self._last: tuple[bytes, dict[str, Any]] | None = None
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._conn: Connection | None = None
        self._process: Any = None
        self._link = threading.Thread(target=self._run_link, name="monitor-link", daemon=True)
        self.store = PredictionLog(settings.prediction_log, 0)  # feedback only
        self._set_model_info(bundle)
        for correct in ("true", "false"):
            metrics.FEEDBACK.labels(correct)
        self.router = self._make_router()

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.store.connect()
        self._spawn()
        self._link.start()

    def stop(self) -> None:
        """Ship what is pending, let the monitor process flush the log, and stop it."""
        self._stop.set()
        if self._link.is_alive():
            self._link.join(10)
        with self._send_lock:
            self._ship_locked()
            self._send_locked(("stop",))
        self._stopped.wait(15)
        if self._process is not None:
            self._process.join(5)
            if self._process.is_alive():
                self._process.terminate()
        self.store.stop()

    def set_model(self, bundle: ModelBundle) -> None:
        """A new version is served: the monitor process takes its reference profile."""
        self._bundle = bundle
        self._set_model_info(bundle)
        with self._send_lock:
            self._ship_locked()
            self._send_locked(("model", str(bundle.path)))

    def _set_model_info(self, bundle: ModelBundle) -> None:
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(bundle.name, bundle.version).set(1)

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        ours, theirs = context.Pipe()
        process = context.Process(
            target=run_core,
            args=(theirs, self.settings.model_dump(), str(self._bundle.path)),
            name="mnistops-monitor",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._conn, self._process = ours, process
        self._last = None  # nothing known of the new process yet
        self._stopped.clear()
        threading.Thread(
            target=self._receive, args=(ours,), name="monitor-receive", daemon=True
        ).start()

    # --- the request path ---------------------------------------------------------
    def observe(
        self,
        *,
        request_ids: Sequence[str],
        pixels: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
        model_version: str,
    ) -> None:
        """Note a prediction; the monitor process does the work."""
        if len(self._pending) >= PENDING_LIMIT:
            metrics.OBSERVE_DROPPED.inc(len(pixels))
            return
        self._pending.append((request_ids, pixels, probabilities, latency_s, model_version))
        for rid, label in zip(request_ids, probabilities.argmax(axis=1).tolist(), strict=True):
            self._recent[rid] = label
        while len(self._recent) > RECENT_PREDICTIONS:
            self._recent.popitem(last=False)

    # --- the link to the monitor process ---------------------------------------------
    def _run_link(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            if self._process is not None and not self._process.is_alive():
                log.warning(
                    "monitor process ended (exit %s): starting it again", self._process.exitcode
                )
                time.sleep(RESTART_BACKOFF_S)
                with self._send_lock:
                    self._spawn()
            with self._send_lock:
                self._ship_locked()

    def _ship_locked(self) -> None:
        batches = []
        while self._pending:
            batches.append(self._pending.popleft())
        if not batches:
            return
        message = (
            "observe",
            [rid for b in batches for rid in b[0]],
            np.concatenate([b[1] for b in batches]),
            np.concatenate([b[2] for b in batches]),
            [b[3] for b in batches for _ in b[0]],
            [b[4] for b in batches for _ in b[0]],
        )
        if not self._send_locked(message):
            metrics.OBSERVE_DROPPED.inc(len(message[1]))

    def _send_locked(self, message: tuple[Any, ...]) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.send(message)
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
            if message[0] == "status":
                with self._status:
                    self._answers[message[1]] = (message[2], message[3])
                    while len(self._answers) > 16:  # answers nobody waited for any more
                        del self._answers[min(self._answers)]
                    self._last = (message[2], message[3])
                    self._status.notify_all()
            elif message[0] == "stopped":
                break
        if conn is self._conn:  # not an earlier, restarted process
            self._stopped.set()

    def monitor_state(self, timeout: float = STATUS_TIMEOUT_S) -> tuple[bytes, dict[str, Any]]:
        """The monitor process's metrics text and drift status, after it has processed
        every prediction observed so far (the last known state if it does not answer)."""
        seq = next(self._seq)
        with self._send_lock:
            self._ship_locked()
            sent = self._send_locked(("status", seq))
        deadline = time.monotonic() + timeout
        with self._status:
            while sent and seq not in self._answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._status.wait(remaining)
            answer = self._answers.pop(seq, None)
        if answer is not None:
            return answer
        log.warning("monitor process did not answer within %s s", timeout)
        return self._last or (b"", {"checked": False, "drift": False, "tests": {}})

    def render_metrics(self) -> bytes:
        # a monitor process that has answered before answers quickly; one still starting
        # (its imports take a second or two) is worth waiting for
        text, _ = self.monitor_state(METRICS_TIMEOUT_S if self._last else STATUS_TIMEOUT_S)
        return metrics.render_latest(text)[0]

    def drift_status(self) -> dict[str, Any]:
        return self.monitor_state()[1]

    # --- feedback ---------------------------------------------------------------------
    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        """Store a true label; update live accuracy. Raises KeyError for an unknown id."""
        predicted = self._recent.get(request_id)
        if predicted is None:
            predicted = self.store.lookup_label(request_id)
        if predicted is None:
            raise KeyError(request_id)
        self.store.add_feedback(request_id, label)
        correct = predicted == label
        self._feedback.append(correct)
        metrics.FEEDBACK.labels(str(correct).lower()).inc()
        accuracy = sum(self._feedback) / len(self._feedback)
        metrics.LIVE_ACCURACY.set(accuracy)
        return {
            "request_id": request_id,
            "predicted": predicted,
            "label": label,
            "correct": correct,
            "live_accuracy": accuracy,
            "feedback_count": len(self._feedback),
        }

    def _make_router(self) -> APIRouter:
        import asyncio

        import orjson
        from sqlalchemy.exc import SQLAlchemyError

        router = APIRouter(tags=["monitoring"])

        @router.get("/monitoring/drift")
        async def drift() -> Response:
            """The drift verdict, and each test's statistic and p-value, at the last check."""
            status = await asyncio.to_thread(self.drift_status)
            return Response(orjson.dumps(status), media_type="application/json")

        @router.post("/feedback", responses={404: {}, 422: {}})
        async def give_feedback(body: FeedbackRequest, request: Request) -> Response:
            """Record the true label of an earlier prediction (by its request id)."""
            try:
                answer = await asyncio.to_thread(self.record_feedback, body.request_id, body.label)
            except KeyError as exc:
                raise HTTPException(
                    404, f"no prediction with request_id {body.request_id!r}"
                ) from exc
            except SQLAlchemyError as exc:
                raise HTTPException(
                    503, "the prediction log store is unavailable; send the feedback again later"
                ) from exc
            return Response(orjson.dumps(answer), media_type="application/json")

        return router
