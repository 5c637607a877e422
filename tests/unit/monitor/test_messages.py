"""Every message between the serving process and the monitor process survives a real
pipe as the same type with the same fields."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.monitor.messages import (
    ModelCall,
    Predictions,
    StatusReply,
    StatusRequest,
    Stop,
    Stopped,
    SwitchModel,
)
from tests.unit.monitor.traffic import traffic

pytestmark = pytest.mark.unit


def _through_pipe(message: object) -> Any:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    with ours, theirs:
        ours.send(message)
        return theirs.recv()


@pytest.mark.parametrize(
    "message",
    [
        StatusRequest(seq=3),
        SwitchModel(bundle_dir=Path("/models/7")),
        Stop(),
        StatusReply(seq=3, metrics_text=b"mnistops_x 1.0\n", drift={"drift": True, "tests": {}}),
        Stopped(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_plain_messages_round_trip_equal(message: object) -> None:
    received = _through_pipe(message)
    assert type(received) is type(message)
    assert received == message


def test_predictions_round_trip_with_their_arrays() -> None:
    sent = traffic(seed=1, n=4)
    received = _through_pipe(sent)
    assert isinstance(received, Predictions)
    assert list(received.request_ids) == list(sent.request_ids)
    np.testing.assert_array_equal(received.pixels, sent.pixels)
    np.testing.assert_array_equal(received.probabilities, sent.probabilities)
    assert received.pixels.dtype == np.float32
    assert list(received.latencies_s) == [0.002] * 4
    assert list(received.model_versions) == ["1"] * 4


def test_predictions_of_one_call_share_latency_and_version() -> None:
    probs = np.eye(10, dtype=np.float32)[:2]
    batch = Predictions.of_call(["a-0", "a-1"], np.zeros((2, 784)), probs, 0.25, "3")
    assert len(batch) == 2
    assert list(batch.latencies_s) == [0.25, 0.25]
    assert list(batch.model_versions) == ["3", "3"]


def _call(batch: Predictions) -> ModelCall:
    return ModelCall(
        batch.request_ids,
        batch.pixels,
        batch.probabilities,
        batch.latencies_s[0],
        batch.model_versions[0],
    )


def test_joined_calls_keep_their_order_and_each_call_its_fields() -> None:
    first = traffic(seed=1, n=2, version="1")
    second = traffic(seed=2, n=3, version="2")
    joined = Predictions.of_calls([_call(first), _call(second)])
    assert list(joined.request_ids) == [*first.request_ids, *second.request_ids]
    assert joined.pixels.shape == (5, 784) and joined.probabilities.shape == (5, 10)
    np.testing.assert_array_equal(joined.pixels[2:], second.pixels)
    assert list(joined.model_versions) == ["1", "1", "2", "2", "2"]
