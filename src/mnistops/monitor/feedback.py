"""Feedback: true labels for earlier predictions, and the live accuracy they give.

Runs in the monitor process, which sees the predictions of every worker: feedback given
to any worker is counted once, and the live accuracy is over all of them. The labels
predicted for recent requests are remembered in memory, so that feedback soon after a
prediction needs no database read; older ones are looked up in the prediction log.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistops.errors import AlreadyLabelledError
from mnistops.monitor import metrics
from mnistops.monitor.predlog import FeedbackStore

RECENT_PREDICTIONS = 50_000
"""Predicted labels remembered in memory (beyond it, the oldest is forgotten)."""
FEEDBACK_WINDOW = 500
"""Live accuracy is over this many most recent true labels."""


class Feedback:
    """Remembers what was predicted, stores true labels, keeps the live accuracy."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store
        self._recent: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._correct: collections.deque[bool] = collections.deque(maxlen=FEEDBACK_WINDOW)
        self._labelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Requests labelled lately (older ones are looked up in the store)."""
        for correct in ("true", "false"):  # export zeros before the first label
            metrics.FEEDBACK.labels(correct)

    def remember(self, request_ids: Sequence[str], probabilities: np.ndarray) -> None:
        """Note the label predicted for each request (on the request path: cheap)."""
        for rid, label in zip(request_ids, probabilities.argmax(axis=1).tolist(), strict=True):
            self._recent[rid] = label
        while len(self._recent) > RECENT_PREDICTIONS:
            self._recent.popitem(last=False)

    def record(self, request_id: str, label: int, *, look_in_log: bool = True) -> dict[str, Any]:
        """Store a true label; update live accuracy.

        Args:
            look_in_log: look for a prediction not remembered in the log too.

        Raises:
            KeyError: no prediction with ``request_id`` is remembered (or logged).
            AlreadyLabelledError: that prediction has its label already (one per id).
            sqlalchemy.exc.SQLAlchemyError: the prediction log's database is unavailable.
        """
        predicted = self._recent.get(request_id)
        if predicted is None and look_in_log:
            predicted = self.store.lookup_label(request_id)
        if predicted is None:
            raise KeyError(request_id)
        if request_id in self._labelled or self.store.has_feedback(request_id):
            raise AlreadyLabelledError(f"request {request_id} has its true label already")
        self.store.add_feedback(request_id, label)
        self._labelled[request_id] = None
        while len(self._labelled) > RECENT_PREDICTIONS:
            self._labelled.popitem(last=False)
        correct = predicted == label
        self._correct.append(correct)
        metrics.FEEDBACK.labels(str(correct).lower()).inc()
        accuracy = sum(self._correct) / len(self._correct)
        metrics.LIVE_ACCURACY.set(accuracy)
        return {
            "request_id": request_id,
            "predicted": predicted,
            "label": label,
            "correct": correct,
            "live_accuracy": accuracy,
            "feedback_count": len(self._correct),
        }
