"""The monitor process: per-image features, model and input metrics, the drift window and
its tests, and the prediction log, for every prediction the serving process sends.

It runs apart from the server so that none of this competes with request handling for
the interpreter lock; ``service.Monitor`` starts it and talks to it through a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.bundle import ReferenceProfile, load_bundle
from mnistops.config import Settings
from mnistops.features import FEATURE_NAMES, image_features
from mnistops.monitor import metrics
from mnistops.monitor.drift import DriftDetector, DriftReport
from mnistops.monitor.messages import (
    Predictions,
    StatusReply,
    StatusRequest,
    Stop,
    Stopped,
    SwitchModel,
    ToMonitor,
)
from mnistops.monitor.predlog import PredictionLog, now

log = logging.getLogger("mnistops.monitor")

MONITOR_NICE = 10
"""CPU priority of the monitor process below the server's: monitoring yields to serving."""
LOG_DROP_REASONS = ("queue_full", "store_error")
PIXEL_LEVELS = 255
"""Logged images are stored as uint8 grey levels."""
LOGGED_DECIMALS = 6
"""Logged probabilities are rounded to this many decimals."""


class MonitorCore:
    """What the monitor process does with what it receives (in process, for tests too)."""

    def __init__(
        self, settings: Settings, name: str, version: str, reference: ReferenceProfile
    ) -> None:
        self.settings = settings
        self.log = PredictionLog(settings.prediction_log, settings.prediction_log_queue)
        self._last_check = 0.0
        self.drift = DriftDetector(
            reference, settings.drift_window, settings.drift_check_every, settings.drift_alpha
        )
        self._set_labels(name, version)
        for reason in LOG_DROP_REASONS:  # export zeros before the first drop
            metrics.LOG_DROPPED.labels(reason)

    def handle(self, message: ToMonitor) -> StatusReply | None:
        """Act on one message from the serving process; the reply to send, if any.

        ``Stop`` is the caller's to act on (it ends the loop); here it does nothing.
        """
        match message:
            case Predictions():
                try:
                    self.ingest(message)
                except Exception:  # one bad batch must not end monitoring
                    log.exception("monitor failed to process %d predictions", len(message))
            case StatusRequest(seq=seq):
                return StatusReply(seq, metrics.render_monitor(), self.drift_status())
            case SwitchModel(bundle_dir=bundle_dir):
                bundle = load_bundle(bundle_dir)
                self.set_model(bundle.name, bundle.version, bundle.reference())
            case Stop():
                pass
        return None

    def set_model(self, name: str, version: str, reference: ReferenceProfile) -> None:
        """A new version is served: new reference profile, fresh drift window."""
        self.drift.reset(reference)
        self._set_labels(name, version)

    def _set_labels(self, name: str, version: str) -> None:
        self._model = (name, version)
        metrics.CONFIDENCE.touch(self._model)
        self._low = metrics.LOW_CONFIDENCE.labels(name, version)
        self._digits = [metrics.PREDICTIONS.labels(name, version, str(d)) for d in range(10)]
        metrics.DRIFT_DETECTED.clear()
        metrics.DRIFT_DETECTED.labels(name, version).set(0)

    def ingest(self, batch: Predictions) -> None:
        """Everything the monitor does with a batch of predictions."""
        features = image_features(batch.pixels)
        labels = batch.probabilities.argmax(axis=1)
        confidence = batch.probabilities.max(axis=1)
        self._update_metrics(features, labels, confidence)
        self._maybe_check(features, batch.probabilities)
        self.log.put_many(self._log_rows(batch, features, labels, confidence))

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

    def _maybe_check(self, features: np.ndarray, probabilities: np.ndarray) -> None:
        rested = time.monotonic() - self._last_check >= self.settings.drift_min_interval_s
        report = self.drift.update(features, probabilities, allow_check=rested)
        metrics.DRIFT_WINDOW.set(self.drift.in_window)
        if report is not None:
            self._last_check = time.monotonic()
            self._export(report)

    def _export(self, report: DriftReport) -> None:
        metrics.DRIFT_DETECTED.labels(*self._model).set(1 if report.drift else 0)
        metrics.DRIFT_CHECKS.labels("drift" if report.drift else "ok").inc()
        for name, result in report.tests.items():
            metrics.DRIFT_PVALUE.labels(name).set(result.pvalue)
            metrics.DRIFT_STATISTIC.labels(name).set(result.statistic)

    def _log_rows(
        self,
        batch: Predictions,
        features: np.ndarray,
        labels: np.ndarray,
        confidence: np.ndarray,
    ) -> list[dict[str, Any]]:
        """The prediction log's rows for a batch (column name to value)."""
        stamp = now()
        images = None
        if self.settings.prediction_log_images:
            images = np.round(batch.pixels * PIXEL_LEVELS).astype(np.uint8)
        rounded = np.round(batch.probabilities, LOGGED_DECIMALS)  # the log's JSON takes numpy rows
        return [
            {
                "ts": stamp,
                "request_id": rid,
                "model_version": batch.model_versions[i],
                "label": label,
                "confidence": conf,
                "latency_ms": batch.latencies_s[i] * 1000.0,
                "probabilities": rounded[i],
                "features": dict(zip(FEATURE_NAMES, feats, strict=True)),
                "image": images[i].tobytes() if images is not None else None,
            }
            for i, (rid, label, conf, feats) in enumerate(
                zip(
                    batch.request_ids,
                    labels.tolist(),
                    confidence.tolist(),
                    features.tolist(),
                    strict=True,
                )
            )
        ]

    def drift_status(self) -> dict[str, Any]:
        """The answer of GET /monitoring/drift: the window and the last check's verdict."""
        last = self.drift.last
        return {
            "model_name": self._model[0],
            "model_version": self._model[1],
            "window_size": self.drift.window,
            "observed": self.drift.in_window,  # the API's name, kept for its clients
            "check_every": self.drift.check_every,
            "alpha": self.drift.alpha,
            "checked": last is not None,
            **(last.as_dict() if last is not None else {"drift": False, "tests": {}}),
        }


def run_monitor_process(conn: Connection, settings: Settings, bundle_dir: Path) -> None:
    """The monitor process's entry point: handle messages from the serving process until
    told to stop (or until the serving process is gone), then flush the prediction log."""
    _yield_to_serving()
    bundle = load_bundle(bundle_dir)
    core = MonitorCore(settings, bundle.name, bundle.version, bundle.reference())
    core.log.start()
    try:
        answer_until_stopped(conn, core)
    finally:
        core.log.stop()
        with contextlib.suppress(OSError, ValueError):
            conn.send(Stopped())


def _yield_to_serving() -> None:
    # Ctrl-C reaches the whole process group: the server decides when this process stops
    # (its Stop message, or the end of the pipe), so the prediction log gets flushed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import scipy.stats  # noqa: F401 - the drift tests' import, paid once at start

    with contextlib.suppress(OSError):
        os.nice(MONITOR_NICE)  # on a saturated machine, answering requests comes first


def answer_until_stopped(conn: Connection, core: MonitorCore) -> None:
    """Hand each message to ``core`` and send its reply, until ``Stop`` or the end of the
    pipe."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the serving process is gone
        if isinstance(message, Stop):
            return
        reply = core.handle(message)
        if reply is not None:
            conn.send(reply)
