"""A self-contained HTML drift report from the prediction log.

Plots are drawn with matplotlib and embedded as base64 PNGs, so the report is one file
that opens anywhere offline. (Evidently would also work on our tabular features, but
it pulls in a large dependency tree for four kinds of plot; matplotlib is already the
training stage's plotting library.)
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from mnistops.bundle import ModelBundle, ReferenceProfile
from mnistops.config import Settings
from mnistops.errors import MnistopsError, first_line, redacted
from mnistops.features import FEATURE_NAMES, NUM_CLASSES
from mnistops.monitor.drift import DriftDetector, DriftReport
from mnistops.monitor.predlog import feedback, make_engine, predictions

WINDOW = 500
MIN_PLOTTED_WINDOW = 50
"""A window with fewer predictions is left off the score plot."""
NO_LABEL = -1


class ReportError(MnistopsError):
    """The prediction log cannot be read, or holds nothing to report on."""


@dataclass(frozen=True, eq=False)
class LoggedPredictions:
    """Logged predictions, oldest first, with their true labels (``NO_LABEL``: none)."""

    ts: list[datetime]
    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray
    true_labels: np.ndarray
    versions: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def of_rows(cls, rows: Sequence[Any]) -> LoggedPredictions:
        """From the rows of :func:`_log_query`."""
        return cls(
            ts=[r.ts for r in rows],
            labels=np.array([r.label for r in rows], dtype=np.int64),
            confidence=np.array([r.confidence for r in rows], dtype=np.float32),
            probabilities=np.array([r.probabilities for r in rows], dtype=np.float32).reshape(
                -1, NUM_CLASSES
            ),
            features=np.array(
                [[r.features[n] for n in FEATURE_NAMES] for r in rows], dtype=np.float32
            ).reshape(-1, len(FEATURE_NAMES)),
            true_labels=np.array(
                [NO_LABEL if r.true_label is None else r.true_label for r in rows]
            ),
            versions=sorted({r.model_version for r in rows}),
        )


def _log_query(since: datetime | None) -> sa.Select[Any]:
    query = (
        sa.select(
            predictions.c.ts,
            predictions.c.request_id,
            predictions.c.model_version,
            predictions.c.label,
            predictions.c.confidence,
            predictions.c.probabilities,
            predictions.c.features,
            feedback.c.label.label("true_label"),
        )
        .select_from(
            predictions.outerjoin(feedback, feedback.c.request_id == predictions.c.request_id)
        )
        .order_by(predictions.c.id)
    )
    return query if since is None else query.where(predictions.c.ts >= since)


def load_log(url: str, since: datetime | None = None) -> LoggedPredictions:
    """Logged predictions (oldest first) with any feedback labels.

    Raises:
        ReportError: the log's database cannot be reached or holds no log yet.
    """
    engine = make_engine(url)
    try:
        with engine.connect() as db:
            rows = db.execute(_log_query(since)).all()
    except sa.exc.DBAPIError as exc:
        raise ReportError(
            f"cannot read the prediction log {redacted(url)} ({first_line(exc.orig or exc)}); "
            "serve a model and send it traffic first, or fix MNISTOPS_PREDICTION_LOG_URL"
        ) from exc
    finally:
        engine.dispose()
    return LoggedPredictions.of_rows(rows)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _feature_figure(log: LoggedPredictions, reference: ReferenceProfile) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FEATURE_NAMES), figsize=(4 * len(FEATURE_NAMES), 3))
    for j, (ax, name) in enumerate(zip(axes, FEATURE_NAMES, strict=True)):
        ax.hist(reference.features[:, j], bins=40, density=True, alpha=0.5, label="reference")
        ax.hist(log.features[:, j], bins=40, density=True, alpha=0.5, label="production")
        ax.set_title(name)
        ax.legend()
    return _png(fig)


def _score_figure(log: LoggedPredictions, bundle: ModelBundle) -> str | None:
    """Each test's score over half-overlapping windows (None: too few predictions)."""
    import matplotlib.pyplot as plt

    detector = _detector(bundle)
    starts = range(0, max(1, len(log) - WINDOW + 1), max(1, WINDOW // 2))
    reports = [
        detector.check(log.features[s : s + WINDOW], log.probabilities[s : s + WINDOW])
        for s in starts
        if len(log.labels[s : s + WINDOW]) >= MIN_PLOTTED_WINDOW
    ]
    if not reports:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for name in reports[0].tests:
        ax.plot([r.tests[name].score for r in reports], label=name, lw=1)
    ax.axhline(reports[0].threshold, color="red", ls="--", label="drift threshold")
    ax.set(xlabel=f"window (of {WINDOW}, half overlapping)", ylabel="score")
    ax.legend(fontsize=6, ncol=4)
    return _png(fig)


def _detector(bundle: ModelBundle) -> DriftDetector:
    """The served version's detector, at the default expected run time."""
    reference, calibration = bundle.drift_reference()
    return DriftDetector(reference, calibration, Settings.model_fields["drift_ert"].default)


def _prediction_figure(log: LoggedPredictions, reference: ReferenceProfile) -> str:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    digits = np.arange(NUM_CLASSES)
    ref_labels = np.bincount(reference.probabilities.argmax(1), minlength=NUM_CLASSES) / len(
        reference.labels
    )
    now = np.bincount(log.labels, minlength=NUM_CLASSES) / max(1, len(log))
    left.bar(digits - 0.2, ref_labels, 0.4, label="reference")
    left.bar(digits + 0.2, now, 0.4, label="production")
    left.set(title="Predicted digits", xticks=range(NUM_CLASSES))
    left.legend()
    right.hist(reference.probabilities.max(1), bins=30, density=True, alpha=0.5, label="reference")
    right.hist(log.confidence, bins=30, density=True, alpha=0.5, label="production")
    right.set(title="Confidence")
    right.legend()
    return _png(fig)


def _figures(log: LoggedPredictions, bundle: ModelBundle) -> dict[str, str]:
    """The report's plots, by title, as base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    reference = bundle.reference()
    out = {"Input statistics: production against reference": _feature_figure(log, reference)}
    scores = _score_figure(log, bundle)
    if scores is not None:
        out["Drift scores over time"] = scores
    out["Predictions and confidence"] = _prediction_figure(log, reference)
    return out


def _accuracy(log: LoggedPredictions) -> float | None:
    """Accuracy over the predictions that got a true label (None: none did)."""
    labelled = log.true_labels != NO_LABEL
    if not labelled.any():
        return None
    return float((log.labels[labelled] == log.true_labels[labelled]).mean())


def _html(
    log: LoggedPredictions,
    bundle: ModelBundle,
    last: DriftReport,
    accuracy_text: str,
    figures: dict[str, str],
) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{r.score:.2f}</td><td>{r.effect:.3f}</td></tr>"
        for n, r in last.tests.items()
    )
    sections = "".join(
        f"<h2>{html.escape(title)}</h2>"
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        for title, data in figures.items()
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>mnistops drift report</title><style>body{{font-family:system-ui,sans-serif;margin:2rem;
max-width:1200px}} img{{max-width:100%}} td,th{{padding:.2rem .8rem;text-align:left}}</style></head>
<body><h1>mnistops drift report</h1>
<p>{len(log)} predictions from {html.escape(str(log.ts[0]))}
to {html.escape(str(log.ts[-1]))}; model versions {html.escape(", ".join(log.versions))};
reference: version {html.escape(bundle.version)}.</p>
<p><b>Drift over the last {min(len(log), WINDOW)} predictions: {"YES" if last.drift else "no"}</b>
(a test fires above a score of {last.threshold:.2f}). Live accuracy: {accuracy_text}.</p>
<table><tr><th>test</th><th>score</th><th>effect</th></tr>{rows}</table>
{sections}</body></html>"""


def build_report(
    url: str, bundle: ModelBundle, out: Path, since: datetime | None = None
) -> dict[str, Any]:
    """Write the report to ``out``; return its headline numbers.

    Raises:
        ReportError: no readable log, or no predictions since ``since``.
    """
    log = load_log(url, since)
    if len(log) == 0:
        raise ReportError(
            "the prediction log holds no predictions for that period; "
            "send traffic (`mnistops monitor simulate`) or choose an earlier --since"
        )
    accuracy = _accuracy(log)
    labelled = int((log.true_labels != NO_LABEL).sum())
    last = _detector(bundle).check(log.features[-WINDOW:], log.probabilities[-WINDOW:])
    accuracy_text = (
        "no feedback yet" if accuracy is None else f"{accuracy:.3f} over {labelled} labels"
    )
    calibration = bundle.calibration()
    estimated = (
        None
        if calibration is None
        else calibration.estimate_accuracy(log.probabilities[-WINDOW:], log.features[-WINDOW:])
    )
    accuracy_text += (
        f". Estimated accuracy without labels (ATC) over the last "
        f"{min(len(log), WINDOW)}: {estimated:.3f}"
        if estimated is not None
        else ""
    )
    out.write_text(_html(log, bundle, last, accuracy_text, _figures(log, bundle)))
    return {
        "predictions": len(log),
        "versions": log.versions,
        "drift": last.drift,
        "live_accuracy": accuracy,
        "estimated_accuracy": estimated,
        "feedback": labelled,
    }
