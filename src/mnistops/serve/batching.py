"""Adaptive micro-batching: concurrent requests share one onnxruntime call.

A request puts its images on a queue and awaits a future. One worker task takes
what is queued at that moment, as long as it fits in ``max_size`` images, and runs
it as one batch: an idle worker never waits, so a lone request pays nothing, and
under load the batch is whatever arrived while the previous one ran. ``max_wait``
(default 0) can make the worker linger for stragglers. Small batches run inline on
the event loop (cheaper than a thread hop for a model this small); larger ones run
in a thread so the loop keeps parsing requests on the other core. Requests are
grouped by the predictor they started with, so a hot swap never moves a request in
flight to another model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mnistops.predictor import Answer, Predictor

INLINE_IMAGES = 64
"""Batches up to this many images run on the event loop; larger ones in a thread."""

OnBatch = Callable[[int, list[float]], None]
"""Told of every onnxruntime call: its images, and how long each request in it queued."""


@dataclass
class _Job:
    predictor: Predictor
    pixels: np.ndarray
    future: asyncio.Future[Answer]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers concurrent ``predict`` calls into batched onnxruntime calls of at most
    ``max_size`` images."""

    def __init__(
        self,
        max_size: int,
        max_wait_ms: float = 0.0,
        on_batch: OnBatch | None = None,
        *,
        inline_images: int = INLINE_IMAGES,
    ) -> None:
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.inline_images = inline_images
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._held: _Job | None = None  # taken from the queue, did not fit: starts the next
        self._worker: asyncio.Task[None] | None = None
        self._on_batch = on_batch

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

    async def predict(self, predictor: Predictor, pixels: np.ndarray) -> Answer:
        """``predictor``'s answer for ``pixels``, batched with other requests.

        A request of more than ``max_size`` images is split into parts of ``max_size``
        (rather than run alone): ``max_size`` bounds every onnxruntime call, so one big
        request cannot hold the others up for longer than a full batch takes.
        """
        if len(pixels) > self.max_size:
            parts = [
                self.predict(predictor, pixels[start : start + self.max_size])
                for start in range(0, len(pixels), self.max_size)
            ]
            answers = await asyncio.gather(*parts)
            return Answer(*(np.concatenate(column) for column in zip(*answers, strict=True)))
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(predictor, pixels, future))
        return await future

    async def _next(self, timeout: float) -> _Job | None:
        """A queued job, else one arriving within ``timeout`` seconds, else None."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _gather(self) -> list[_Job]:
        # Like BentoML's CorkDispatcher._get_inputs: a job joins the batch only if it
        # fits; the first one that does not is held back to start the next batch.
        first = self._held or await self._queue.get()
        self._held = None
        jobs, size = [first], len(first.pixels)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_size:
            job = await self._next(deadline - time.perf_counter())
            if job is None:
                break
            if size + len(job.pixels) > self.max_size:
                self._held = job
                break
            jobs.append(job)
            size += len(job.pixels)
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
            await self._run_group(group)
            if self._on_batch is not None:
                self._on_batch(
                    sum(len(job.pixels) for job in group),
                    [started - job.queued_at for job in group],
                )

    async def _run_group(self, group: list[_Job]) -> None:
        """One onnxruntime call for jobs of one predictor; each job gets its rows."""
        batch = np.concatenate([job.pixels for job in group])
        try:
            if len(batch) <= self.inline_images:
                answer = group[0].predictor.answer(batch)
            else:
                answer = await asyncio.to_thread(group[0].predictor.answer, batch)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        offset = 0
        for job in group:
            count = len(job.pixels)
            if not job.future.done():
                job.future.set_result(answer.rows(offset, offset + count))
            offset += count
