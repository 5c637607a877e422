"""Micro-batching gathers concurrent requests into one call and keeps versions apart."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mnistops.serve.batching import MicroBatcher

pytestmark = pytest.mark.unit


class Recording:
    """A predictor stand-in that records the batch sizes it is called with."""

    def __init__(self, offset: float) -> None:
        self.calls: list[int] = []
        self.offset = offset

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        return np.repeat(pixels[:, :1] + self.offset, 10, axis=1)


def test_concurrent_requests_share_calls_and_get_their_own_answers() -> None:
    async def scenario() -> tuple[list[np.ndarray], list[int]]:
        batcher = MicroBatcher(max_size=64, max_wait_ms=20)
        batcher.start()
        model = Recording(0.0)
        inputs = [np.full((1, 784), i, np.float32) for i in range(40)]
        answers = await asyncio.gather(*(batcher.predict(model, x) for x in inputs))  # type: ignore[arg-type]
        await batcher.stop()
        return answers, model.calls

    answers, calls = asyncio.run(scenario())
    assert [int(a[0, 0]) for a in answers] == list(range(40))
    assert sum(calls) == 40 and len(calls) < 10


def test_batches_never_exceed_max_size() -> None:
    async def scenario() -> list[int]:
        batcher = MicroBatcher(max_size=8, max_wait_ms=5)
        batcher.start()
        model = Recording(0.0)
        await asyncio.gather(
            *(batcher.predict(model, np.zeros((1, 784), np.float32)) for _ in range(50))
        )  # type: ignore[arg-type]
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
        ]  # type: ignore[arg-type]
        answers = await asyncio.gather(*jobs)
        await batcher.stop()
        return answers, old, new

    answers, old, new = asyncio.run(scenario())
    assert [a[0, 0] for a in answers] == [100.0 if i % 2 else 200.0 for i in range(20)]
    assert sum(old.calls) == 10 and sum(new.calls) == 10
