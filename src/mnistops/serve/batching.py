"""Adaptive micro-batching: concurrent requests share one onnxruntime call.

A request puts its images on a queue and awaits a future. One worker task takes
everything queued at that moment (up to ``max_size`` images) and runs it as one batch:
an idle worker never waits, so a lone request pays nothing, and under load the batch
is whatever arrived while the previous one ran. ``max_wait`` (default 0) can make the
worker linger for stragglers. Small batches run inline on the event loop (cheaper than
a thread hop for a model this small); larger ones run in a thread so the loop keeps
parsing requests on the other core. Requests are grouped by the predictor they started
with, so a hot swap never moves a request in flight to another model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from mnistops.predictor import Predictor

INLINE_IMAGES = 64
"""Batches up to this many images run on the event loop; larger ones in a thread."""


@dataclass
class _Job:
    predictor: Predictor
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers concurrent ``predict`` calls into batched onnxruntime calls."""

    def __init__(
        self,
        max_size: int,
        max_wait_ms: float = 0.0,
        observe: object = None,
        *,
        inline_images: int = INLINE_IMAGES,
    ) -> None:
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.inline_images = inline_images
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._observe = observe

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker after the queue is drained."""
        if self._worker is not None:
            await self._queue.join()
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def predict(self, predictor: Predictor, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for ``pixels`` from ``predictor``, batched with other requests."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(predictor, pixels, future))
        return await future

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].pixels)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                jobs.append(self._queue.get_nowait())
            size += len(jobs[-1].pixels)
        return jobs

    async def _run(self) -> None:
        while True:
            jobs = await self._gather()
            try:
                await self._run_batch(jobs)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.predictor), []).append(job)
        for group in groups.values():
            batch = np.concatenate([job.pixels for job in group])
            try:
                if len(batch) <= self.inline_images:
                    probs = group[0].predictor.predict(batch)
                else:
                    probs = await asyncio.to_thread(group[0].predictor.predict, batch)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            offset = 0
            for job in group:
                count = len(job.pixels)
                if not job.future.done():
                    job.future.set_result(probs[offset : offset + count])
                offset += count
        if callable(self._observe):
            self._observe(
                sum(len(job.pixels) for job in jobs),
                [started - job.queued_at for job in jobs],
            )
