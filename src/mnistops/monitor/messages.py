"""What crosses the pipe between the serving process and the monitor process: one frozen
dataclass per kind of message, told apart by type, never by a tag.

Server to monitor process: ``Predictions``, ``StatusRequest``, ``GiveFeedback``,
``SwitchModel``, ``Stop``. Monitor process to server: ``StatusReply``, ``FeedbackReply``,
``Stopped``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class ModelCall(NamedTuple):
    """One model call's predictions, as recorded on the request path. A tuple, not a
    ``Predictions``: thousands may wait to be shipped, and each object the collector
    tracks lengthens its full passes."""

    request_ids: Sequence[str]
    pixels: np.ndarray
    probabilities: np.ndarray
    latency_s: float
    model_version: str


# eq=False: the fields hold numpy arrays, whose == is elementwise, not a bool
@dataclass(frozen=True, eq=False)
class Predictions:
    """Predictions to monitor, one row per image: ``pixels`` ``[n, 784]`` in 0..1,
    ``probabilities`` ``[n, 10]``, and per image its request id, latency and version."""

    request_ids: Sequence[str]
    pixels: np.ndarray
    probabilities: np.ndarray
    latencies_s: Sequence[float]
    model_versions: Sequence[str]

    def __len__(self) -> int:
        return len(self.request_ids)

    @classmethod
    def of_call(
        cls,
        request_ids: Sequence[str],
        pixels: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
        model_version: str,
    ) -> Predictions:
        """The predictions of one model call: every image shares its latency and version."""
        n = len(request_ids)
        return cls(request_ids, pixels, probabilities, [latency_s] * n, [model_version] * n)

    @classmethod
    def of_calls(cls, calls: Sequence[ModelCall]) -> Predictions:
        """One message for several model calls, in order (``calls`` must not be empty),
        built with little Python per image: the link thread holds the interpreter lock."""
        counts = [len(c.request_ids) for c in calls]
        return cls(
            list(itertools.chain.from_iterable(c.request_ids for c in calls)),
            np.concatenate([c.pixels for c in calls]),
            np.concatenate([c.probabilities for c in calls]),
            np.repeat([c.latency_s for c in calls], counts).tolist(),
            [c.model_version for c, n in zip(calls, counts, strict=True) for _ in range(n)],
        )


@dataclass(frozen=True)
class StatusRequest:
    """Asks for the metrics text and drift status once everything sent before is done."""

    seq: int


@dataclass(frozen=True)
class GiveFeedback:
    """The true label of an earlier prediction (by its request id), to store and count."""

    seq: int
    request_id: str
    label: int


@dataclass(frozen=True)
class SwitchModel:
    """A new version is served: take the reference profile of the model folder."""

    bundle_dir: Path


@dataclass(frozen=True)
class Stop:
    """Flush the prediction log and end the monitor process."""


@dataclass(frozen=True)
class StatusReply:
    """The answer to the ``StatusRequest`` with the same ``seq``."""

    seq: int
    metrics_text: bytes
    drift: dict[str, Any]


FEEDBACK_UNKNOWN = "unknown"
"""``FeedbackReply.error``: no prediction with that request id is remembered or logged."""
FEEDBACK_STORE_DOWN = "store"
"""``FeedbackReply.error``: the prediction log's database is unavailable."""
FEEDBACK_LABELLED = "labelled"
"""``FeedbackReply.error``: that prediction has its true label already."""


@dataclass(frozen=True)
class FeedbackReply:
    """The answer to the ``GiveFeedback`` with the same ``seq``: ``answer`` (what
    POST /feedback returns), or ``error``."""

    seq: int
    answer: dict[str, Any] | None = None
    error: str | None = None
    """``FEEDBACK_UNKNOWN``, ``FEEDBACK_LABELLED`` or ``FEEDBACK_STORE_DOWN``."""


@dataclass(frozen=True)
class Stopped:
    """The monitor process has flushed its log and is ending."""


@dataclass(frozen=True)
class Settled:
    """How many of the predictions this connection sent are settled, in all: written to
    the prediction log or counted as dropped there. If the monitor process dies, the
    sender counts the rest as dropped: none is lost uncounted."""

    images: int


ToMonitor = Predictions | StatusRequest | GiveFeedback | SwitchModel | Stop
"""Every message the serving process sends."""
FromMonitor = StatusReply | FeedbackReply | Stopped | Settled
"""Every message the monitor process sends."""
