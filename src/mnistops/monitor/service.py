"""The Monitor: what the service calls after each prediction, and its HTTP routes.

``observe`` only appends to a bounded deque (sub-microsecond, on the request path).
A background thread takes what accumulated, computes the per-image features in one
vectorised call, updates the Prometheus metrics and the drift window, runs the drift
tests when due, and queues prediction-log rows.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.features import FEATURE_NAMES, image_features
from mnistops.monitor import metrics
from mnistops.monitor.drift import DriftDetector, DriftReport
from mnistops.monitor.predlog import PredictionLog, now

log = logging.getLogger("mnistops.monitor")

PENDING_LIMIT = 20_000
"""Observed batches waiting for the monitor thread; beyond it they are counted and skipped."""
RECENT_PREDICTIONS = 50_000
FEEDBACK_WINDOW = 500
TICK_SECONDS = 0.05


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction."""

    request_id: str = Field(min_length=1, max_length=80, description="From the prediction.")
    label: int = Field(ge=0, le=9, description="The digit actually written.")


class Monitor:
    """Metrics, drift detection, prediction log and feedback for one serving process."""

    def __init__(self, settings: Settings, bundle: ModelBundle) -> None:
        self.settings = settings
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._stop = threading.Event()
        self._processing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.log = PredictionLog(settings.prediction_log, settings.prediction_log_queue)
        self._recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._feedback: collections.deque[bool] = collections.deque(maxlen=FEEDBACK_WINDOW)
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
        for correct in ("true", "false"):
            metrics.FEEDBACK.labels(correct)
        self.router = self._make_router()

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.log.start()
        self._thread.start()

    def stop(self) -> None:
        """Process what is pending, then flush the prediction log."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.log.stop()

    def set_model(self, bundle: ModelBundle) -> None:
        """A new version is served: new reference profile, fresh drift window."""
        self.drift.reset(bundle.reference())
        self._set_labels(bundle)

    def _set_labels(self, bundle: ModelBundle) -> None:
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(bundle.name, bundle.version).set(1)
        self._model = (bundle.name, bundle.version)
        self._confidence = metrics.CONFIDENCE.labels(*self._model)
        self._low = metrics.LOW_CONFIDENCE.labels(*self._model)
        self._digits = [metrics.PREDICTIONS.labels(*self._model, str(d)) for d in range(10)]
        metrics.DRIFT_DETECTED.clear()
        metrics.DRIFT_DETECTED.labels(*self._model).set(0)

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
        """Note a prediction; all the work happens on the monitor thread."""
        if len(self._pending) >= PENDING_LIMIT:
            metrics.OBSERVE_DROPPED.inc(len(pixels))
            return
        self._pending.append((request_ids, pixels, probabilities, latency_s, model_version))

    # --- the monitor thread --------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(TICK_SECONDS)
            self.process_pending()
        self.process_pending()

    def process_pending(self) -> None:
        """Handle every observed prediction so far (called by the thread; tests may call it)."""
        with self._processing:
            batches = []
            while self._pending:
                batches.append(self._pending.popleft())
            if not batches:
                return
            try:
                self._process(batches)
            except Exception:
                log.exception("monitor failed to process %d batches", len(batches))

    def _process(self, batches: list[tuple[Any, ...]]) -> None:
        pixels = np.concatenate([b[1] for b in batches])
        probs = np.concatenate([b[2] for b in batches])
        ids = [rid for b in batches for rid in b[0]]
        latencies = [b[3] for b in batches for _ in b[0]]
        versions = [b[4] for b in batches for _ in b[0]]
        features = image_features(pixels)
        labels = probs.argmax(axis=1)
        confidence = probs.max(axis=1)
        self._update_metrics(features, labels, confidence)
        self._remember(ids, labels)
        self._maybe_check(features, probs)
        self._queue_rows(ids, versions, latencies, pixels, probs, features, labels, confidence)

    def _update_metrics(
        self, features: np.ndarray, labels: np.ndarray, confidence: np.ndarray
    ) -> None:
        for digit, count in enumerate(np.bincount(labels, minlength=10)):
            if count:
                self._digits[digit].inc(int(count))
        for value in confidence:
            self._confidence.observe(float(value))
        low = int((confidence < self.settings.low_confidence).sum())
        if low:
            self._low.inc(low)
        for j, name in enumerate(FEATURE_NAMES):
            histogram = metrics.INPUT_FEATURES[name]
            for value in features[:, j]:
                histogram.observe(float(value))

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

    def _remember(self, ids: list[str], labels: np.ndarray) -> None:
        for rid, label in zip(ids, labels.tolist(), strict=True):
            self._recent[rid] = label
        while len(self._recent) > RECENT_PREDICTIONS:
            self._recent.popitem(last=False)

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
        for i, rid in enumerate(ids):
            self.log.put(
                {
                    "ts": stamp,
                    "request_id": rid,
                    "model_version": versions[i],
                    "label": int(labels[i]),
                    "confidence": float(confidence[i]),
                    "latency_ms": latencies[i] * 1000.0,
                    "probabilities": [round(float(p), 6) for p in probs[i]],
                    "features": dict(zip(FEATURE_NAMES, map(float, features[i]), strict=True)),
                    "image": images[i].tobytes() if images is not None else None,
                }
            )

    # --- routes ------------------------------------------------------------------------
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

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        """Store a true label; update live accuracy. Raises KeyError for an unknown id."""
        self.process_pending()  # the prediction may still be waiting for the monitor thread
        predicted = self._recent.get(request_id)
        if predicted is None:
            predicted = self.log.lookup_label(request_id)
        if predicted is None:
            raise KeyError(request_id)
        self.log.add_feedback(request_id, label)
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
        import orjson
        from sqlalchemy.exc import SQLAlchemyError

        router = APIRouter(tags=["monitoring"])

        @router.get("/monitoring/drift")
        async def drift() -> Response:
            """The drift verdict, and each test's statistic and p-value, at the last check."""
            return Response(orjson.dumps(self.drift_status()), media_type="application/json")

        @router.post("/feedback", responses={404: {}, 422: {}})
        async def give_feedback(body: FeedbackRequest, request: Request) -> Response:
            """Record the true label of an earlier prediction (by its request id)."""
            import asyncio

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
