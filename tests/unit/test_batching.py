"""Micro-batching gathers concurrent requests into one call and keeps versions apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mnistops.bundle import ModelBundle
from mnistops.predictor import Predictor
from mnistops.serve.batching import MicroBatcher

pytestmark = pytest.mark.unit


class Recording(Predictor):
    """A predictor without onnxruntime that records the batch sizes it is called with."""

    def __init__(self, offset: float) -> None:
        super().__init__(ModelBundle(Path("unused"), "recording", str(offset)))
        self.calls: list[int] = []
        self.offset = offset

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        return np.repeat(pixels[:, :1] + self.offset, 10, axis=1)


def _concurrently(
    inputs: list[np.ndarray], *, max_size: int, max_wait_ms: float
) -> tuple[list[np.ndarray], list[int]]:
    """Send every input at once through one batcher; the answers and the batch sizes."""

    async def scenario() -> tuple[list[np.ndarray], list[int]]:
        batcher = MicroBatcher(max_size=max_size, max_wait_ms=max_wait_ms)
        batcher.start()
        model = Recording(0.0)
        answers = await asyncio.gather(*(batcher.predict(model, x) for x in inputs))
        await batcher.stop()
        assert all(a.is_digit.shape == (len(x),) for a, x in zip(answers, inputs, strict=True))
        return [a.probabilities for a in answers], model.calls

    return asyncio.run(scenario())


def test_concurrent_requests_share_calls_and_get_their_own_answers() -> None:
    inputs = [np.full((1, 784), i, np.float32) for i in range(40)]
    answers, calls = _concurrently(inputs, max_size=64, max_wait_ms=20)
    assert [int(a[0, 0]) for a in answers] == list(range(40))
    assert sum(calls) == 40 and len(calls) < 10


def test_batches_never_exceed_max_size() -> None:
    async def scenario() -> list[int]:
        batcher = MicroBatcher(max_size=8, max_wait_ms=5)
        batcher.start()
        model = Recording(0.0)
        await asyncio.gather(
            *(batcher.predict(model, np.zeros((1, 784), np.float32)) for _ in range(50))
        )
        await batcher.stop()
        return model.calls

    assert max(asyncio.run(scenario())) <= 8


def test_requests_for_different_versions_are_not_mixed() -> None:
    async def scenario() -> tuple[list[np.ndarray], Recording, Recording]:
        batcher = MicroBatcher(max_size=64, max_wait_ms=10)
        batcher.start()
        old, new = Recording(100.0), Recording(200.0)
        jobs = [
            batcher.predict(old if i % 2 else new, np.zeros((1, 784), np.float32))
            for i in range(20)
        ]
        answers = await asyncio.gather(*jobs)
        await batcher.stop()
        return [a.probabilities for a in answers], old, new

    answers, old, new = asyncio.run(scenario())
    assert [a[0, 0] for a in answers] == [100.0 if i % 2 else 200.0 for i in range(20)]
    assert sum(old.calls) == 10 and sum(new.calls) == 10


def test_multi_image_requests_never_overshoot_max_size() -> None:
    inputs = [np.full((5, 784), i, np.float32) for i in range(20)]
    answers, calls = _concurrently(inputs, max_size=8, max_wait_ms=5)
    assert max(calls) <= 8, calls
    assert sum(calls) == 100
    assert [a[:, 0].tolist() for a in answers] == [[float(i)] * 5 for i in range(20)]


def test_request_larger_than_max_size_is_split_in_order() -> None:
    async def scenario() -> tuple[np.ndarray, list[int]]:
        batcher = MicroBatcher(max_size=8, max_wait_ms=0)
        batcher.start()
        model = Recording(0.0)
        pixels = np.arange(20, dtype=np.float32)[:, None].repeat(784, axis=1)
        answer = await batcher.predict(model, pixels)
        await batcher.stop()
        assert answer.is_digit.shape == (20,)
        return answer.probabilities, model.calls

    answer, calls = asyncio.run(scenario())
    assert calls == [8, 8, 4]
    assert answer[:, 0].tolist() == list(range(20))
