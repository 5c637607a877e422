"""The model, input, drift and prediction-log metrics, defined once; exposition.

The serving process's own HTTP and batching metrics are in ``mnistops.serve.metrics``.

Names follow Prometheus conventions (``mnistops_`` prefix, ``_seconds``, ``_total``);
model metrics carry ``model`` and ``version`` labels.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mnistops.features import FEATURE_NAMES

CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
FEATURE_BUCKETS = {
    "pixel_mean": (0.02, 0.05, 0.08, 0.1, 0.12, 0.14, 0.16, 0.2, 0.3, 0.5, 0.7, 0.9),
    "pixel_std": (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    "ink_fraction": (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 0.8),
    "centroid_row": (8, 10, 12, 13, 14, 15, 16, 18, 20),
    "centroid_col": (8, 10, 12, 13, 14, 15, 16, 18, 20),
}
MODEL_LABELS = ("model", "version")

MONITOR_REGISTRY = CollectorRegistry()
"""The families the monitor process updates (model, input, drift, prediction log); the
serving process exposes them next to its own (``REGISTRY``) on /metrics."""


class ArrayHistogram(Collector):
    """A Prometheus histogram fed a whole array of observations at once.

    prometheus-client's ``Histogram.observe`` costs a Python call per value; the
    monitor observes thousands of values a second (five features and a confidence
    per image), so here one ``np.searchsorted`` + ``np.bincount`` handles a batch.
    Exposed exactly like a client histogram (``_bucket{le}``, ``_sum``, ``_count``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: Any = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.upper = np.array([*buckets, float("inf")], dtype=np.float64)
        self._le = [floatToGoString(b) for b in self.upper]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], list[Any]] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, values: np.ndarray, labels: Sequence[str] = ()) -> None:
        """Count every value of ``values`` (any shape) under ``labels``."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        counts = np.bincount(
            np.searchsorted(self.upper, flat, side="left"), minlength=len(self.upper)
        )[: len(self.upper)]
        total = float(flat.sum())
        key = tuple(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                self._series[key] = [counts.astype(np.int64), total]
            else:
                series[0] += counts
                series[1] += total

    def touch(self, labels: Sequence[str] = ()) -> None:
        """Export a zero series for ``labels`` before its first observation."""
        with self._lock:
            self._series.setdefault(tuple(labels), [np.zeros(len(self.upper), np.int64), 0.0])

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, np.cumsum(v[0]).tolist(), v[1]) for k, v in self._series.items()]
        for labels, cumulative, total in series:
            family.add_metric(list(labels), list(zip(self._le, cumulative, strict=True)), total)
        yield family


# --- model --------------------------------------------------------------------------
MODEL_INFO = Gauge(
    "mnistops_model_info",
    "The model version being served (value 1).",
    ("name", "version"),
    registry=MONITOR_REGISTRY,
)
PREDICTIONS = Counter(
    "mnistops_predictions",
    "Predictions by predicted digit.",
    (*MODEL_LABELS, "digit"),
    registry=MONITOR_REGISTRY,
)
CONFIDENCE = ArrayHistogram(
    "mnistops_prediction_confidence",
    "Probability of the predicted digit.",
    MODEL_LABELS,
    buckets=CONFIDENCE_BUCKETS,
    registry=MONITOR_REGISTRY,
)
ESTIMATED_ACCURACY = Gauge(
    "mnistops_estimated_accuracy",
    "Accuracy estimated without labels (ATC on temperature-scaled confidence) over the "
    "drift window.",
    MODEL_LABELS,
    registry=MONITOR_REGISTRY,
)
LOW_CONFIDENCE = Counter(
    "mnistops_low_confidence_predictions",
    "Predictions below the confidence threshold.",
    MODEL_LABELS,
    registry=MONITOR_REGISTRY,
)

# --- input ---------------------------------------------------------------------------
INPUT_FEATURES = {
    name: ArrayHistogram(
        f"mnistops_input_{name}",
        f"Per-image {name.replace('_', ' ')} of incoming images.",
        buckets=FEATURE_BUCKETS[name],
        registry=MONITOR_REGISTRY,
    )
    for name in FEATURE_NAMES
}

# --- drift ---------------------------------------------------------------------------
DRIFT_DETECTED = Gauge(
    "mnistops_drift_detected",
    "1 when a drift alarm was raised since the previous published verdict.",
    MODEL_LABELS,
    registry=MONITOR_REGISTRY,
)
DRIFT_SCORE = Gauge(
    "mnistops_drift_score",
    "Each drift test's strongest score since the previous verdict (drift above the threshold).",
    ("test",),
    registry=MONITOR_REGISTRY,
)
DRIFT_EFFECT = Gauge(
    "mnistops_drift_effect",
    "The effect behind each test's score (standard deviations; Cohen's w for label_chi2).",
    ("test",),
    registry=MONITOR_REGISTRY,
)
DRIFT_THRESHOLD = Gauge(
    "mnistops_drift_threshold",
    "The score above which a test raises an alarm (calibrated to MNISTOPS_DRIFT_ERT).",
    registry=MONITOR_REGISTRY,
)
DRIFT_ALARMS = Counter(
    "mnistops_drift_alarms",
    "Drift alarms raised (each run of scores above the threshold counts once).",
    MODEL_LABELS,
    registry=MONITOR_REGISTRY,
)
DRIFT_WINDOW = Gauge(
    "mnistops_drift_window_size",
    "Predictions in the longest drift window.",
    registry=MONITOR_REGISTRY,
)
DRIFT_CHECKS = Counter(
    "mnistops_drift_checks", "Drift verdicts published.", ("result",), registry=MONITOR_REGISTRY
)

# --- prediction log and feedback --------------------------------------------------------
LOG_WRITTEN = Counter(
    "mnistops_prediction_log_rows_written",
    "Rows written to the prediction log.",
    registry=MONITOR_REGISTRY,
)
LOG_DROPPED = Counter(
    "mnistops_prediction_log_rows_dropped",
    "Rows not written (queue full, store down, or a batch the monitor failed on).",
    ("reason",),
    registry=MONITOR_REGISTRY,
)
LOG_QUEUE = Gauge(
    "mnistops_prediction_log_queue_depth", "Rows waiting to be written.", registry=MONITOR_REGISTRY
)
FEEDBACK = Counter(
    "mnistops_feedback",
    "True labels received, by whether the prediction was right.",
    ("correct",),
    registry=MONITOR_REGISTRY,
)
LIVE_ACCURACY = Gauge(
    "mnistops_live_accuracy", "Accuracy over recent feedback.", registry=MONITOR_REGISTRY
)
OBSERVE_DROPPED = Counter(
    "mnistops_monitor_dropped", "Predictions not monitored because the monitor fell behind."
)


def render_latest(monitor_text: bytes = b"") -> tuple[bytes, str]:
    """The exposition text of the serving process's metrics followed by the monitor
    process's (``monitor_text``), and its content type. With several workers the serving
    families are the sum over all of them (:func:`serving_registry`)."""
    return generate_latest(serving_registry()) + monitor_text, CONTENT_TYPE_LATEST


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before prometheus_client is imported) in each of several workers: their metrics
are written to files there, and any worker's /metrics shows the sum over all of them."""
WORKER_PID_FILE = "worker_{pid}.pid"
"""A live worker's mark in ``MULTIPROC_DIR``: its process metrics are summed too."""


@functools.cache
def serving_registry() -> CollectorRegistry:
    """The serving process's families: its own (``REGISTRY``), or with several workers
    the sum over all of them (prometheus_client's multiprocess mode)."""
    directory = os.environ.get(MULTIPROC_DIR)
    if not directory:
        return REGISTRY
    from prometheus_client import PlatformCollector, multiprocess

    registry = CollectorRegistry()
    registry.register(ServingFamilies(multiprocess.MultiProcessCollector(None, path=directory)))  # type: ignore[no-untyped-call]
    PlatformCollector(registry=registry)
    registry.register(WorkerProcesses(Path(directory)))
    return registry


class ServingFamilies(Collector):
    """The serving process's own families from the workers' files. Every metric a worker
    defines has a file there, the monitor's too (never updated in a worker, they are
    zeros), and the monitor's belong to the monitor process's text alone."""

    def __init__(self, files: Collector) -> None:
        self.files = files
        self.names = frozenset(family.name for family in REGISTRY.collect())

    def collect(self) -> Iterator[Any]:
        return (family for family in self.files.collect() if family.name in self.names)


class WorkerProcesses(Collector):
    """``process_*`` summed over the live workers (CPU, memory, open files), as
    prometheus_client's ProcessCollector reports them for one process (Linux only)."""

    KEEP_FIRST = frozenset({"process_max_fds"})
    KEEP_EARLIEST = frozenset({"process_start_time_seconds"})

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        from prometheus_client import ProcessCollector

        families: dict[str, Any] = {}
        for mark in self.directory.glob(WORKER_PID_FILE.format(pid="*")):
            pid = int(mark.stem.removeprefix("worker_"))
            collector = ProcessCollector(pid=functools.partial(str, pid), registry=None)
            for family in collector.collect():
                kept = families.setdefault(family.name, family)
                if kept is family:
                    continue
                for i, (mine, theirs) in enumerate(zip(kept.samples, family.samples, strict=False)):
                    value = self._combine(family.name, mine.value, theirs.value)
                    kept.samples[i] = mine._replace(value=value)
        yield from families.values()

    def _combine(self, name: str, mine: float, theirs: float) -> float:
        if name in self.KEEP_FIRST:
            return mine
        if name in self.KEEP_EARLIEST:
            return min(mine, theirs)
        return mine + theirs


def render_monitor() -> bytes:
    """The exposition text of the monitor process's families."""
    return generate_latest(MONITOR_REGISTRY)


QUIET_ROUTES = ("/metrics", "/monitoring", "/health", "/v2/health", "/ping", "/")
"""Routes the live page leaves out of the request rate (its own polls among them)."""


def _counted(route: str) -> bool:
    return not any(route == q or (q != "/" and route.startswith(q)) for q in QUIET_ROUTES)


def summarise(text: str, name: str, version: str) -> dict[str, Any]:
    """The totals the live monitoring page shows, read from the exposition text of
    /metrics (so with several workers they are the sums): requests and errors, the
    request latency histogram, CPU and memory, predictions by digit, low-confidence
    predictions, the confidence histogram and feedback, for the model ``name`` ``version``."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = client_errors = server_errors = 0.0
    latency: dict[float, float] = {}
    confidence: dict[float, float] = {}
    digits = [0.0] * 10
    low = 0.0
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            served = labels.get("model") == name and labels.get("version") == version
            if sample.name == "mnistops_requests_total" and _counted(labels["route"]):
                requests += value
                status = int(labels["status"])
                client_errors += value if 400 <= status < 500 else 0.0
                server_errors += value if status >= 500 else 0.0
            elif sample.name == "mnistops_request_duration_seconds_bucket":
                if _counted(labels["route"]):
                    le = float(labels["le"])
                    latency[le] = latency.get(le, 0.0) + value
            elif sample.name == "mnistops_predictions_total" and served:
                digits[int(labels["digit"])] += value
            elif sample.name == "mnistops_low_confidence_predictions_total" and served:
                low += value
            elif sample.name == "mnistops_prediction_confidence_bucket" and served:
                confidence[float(labels["le"])] = value
            elif sample.name == "mnistops_feedback_total":
                found["feedback"] = found.get("feedback", 0.0) + value
            elif sample.name in (
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "mnistops_live_accuracy",
            ):
                found[sample.name] = value
    return {
        "requests": requests,
        "client_errors": client_errors,
        "server_errors": server_errors,
        "latency_buckets": sorted(latency.items()),
        "cpu_seconds": found.get("process_cpu_seconds_total"),
        "memory_bytes": found.get("process_resident_memory_bytes"),
        "predicted_digits": digits,
        "low_confidence": low,
        "confidence_buckets": sorted(confidence.items()),
        "feedback": found.get("feedback", 0.0),
        "live_accuracy": found.get("mnistops_live_accuracy") if found.get("feedback") else None,
    }
