"""Batch scoring: ``mnistops predict`` streams images from files, folders, globs, archives
and Parquet through the predictor, a chunk at a time, and writes each chunk's scores as it
goes (:mod:`mnistops.batch.sources` reads, :mod:`mnistops.batch.outputs` writes).

One thread reads and decodes the next chunks while the main thread scores and writes the
current one, so memory is bounded by a few chunks whatever the input's size. What cannot
be read is reported with its name and skipped (``strict`` stops the run at it), and the
summary counts what was scored, skipped and why. ``--resume`` skips what an interrupted
run already wrote. :mod:`mnistops.batch.spark` runs the same job on Apache Spark.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.batch.outputs import COLUMNS, Output, OutputError, open_output, scores_table
from mnistops.batch.sources import ACCEPTED, Input, ParquetFile, Piece, Skipped, expand
from mnistops.config import Settings
from mnistops.errors import MnistopsError

__all__ = [
    "ACCEPTED",
    "COLUMNS",
    "BatchError",
    "OutputError",
    "Summary",
    "predict_stream",
]

DEFAULT_CHUNK = 4096
"""Images per chunk: one onnxruntime call, one write."""
READ_AHEAD = 2
"""Chunks read ahead of the one being scored."""
REPORTED = 50
"""Skipped inputs reported one by one; past this, counted only."""


class BatchError(MnistopsError):
    """The run stopped: ``--strict`` met an input it cannot read, or nothing was given."""


@dataclass
class Summary:
    """What a run did."""

    scored: int = 0
    resumed: int = 0
    """Images an earlier run had written, not scored again."""
    skipped: int = 0
    """Images (or files, when their images are not counted) that could not be read."""
    reasons: Counter[str] = field(default_factory=Counter)
    ignored: int = 0
    """Files in folders and globs of a type that is not read."""
    seconds: float = 0.0
    interrupted: bool = False
    model_version: str = ""

    def lines(self) -> list[str]:
        rate = self.scored / self.seconds if self.seconds > 0 else 0.0
        said = [
            f"scored {self.scored} images in {self.seconds:.1f} s ({rate:,.0f} images/s) "
            f"with model version {self.model_version}"
        ]
        if self.resumed:
            said.append(f"resumed: {self.resumed} images were already written")
        if self.skipped:
            said.append(f"skipped {self.skipped}:")
            said.extend(f"  {n} × {why}" for why, n in self.reasons.most_common(10))
            if len(self.reasons) > 10:
                said.append(f"  and {len(self.reasons) - 10} other reasons")
        if self.ignored:
            said.append(f"passed over {self.ignored} files of other types in the folders/globs")
        if self.interrupted:
            said.append("interrupted: run again with --resume to go on")
        return said


@dataclass(frozen=True)
class Chunk:
    """Images of one or more sources, scored and written together."""

    pieces: tuple[Piece, ...]

    @property
    def pixels(self) -> np.ndarray:
        if len(self.pieces) == 1:
            return self.pieces[0].pixels
        return np.concatenate([p.pixels for p in self.pieces])

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Per image, its source and its index there."""
        counts = [len(p.pixels) for p in self.pieces]
        sources = np.repeat(np.array([p.source for p in self.pieces], dtype=object), counts)
        indices = np.concatenate([np.arange(p.start, p.start + len(p.pixels)) for p in self.pieces])
        return sources, indices


def chunks(
    inputs: Sequence[Input], chunk: int, done: Mapping[str, int], max_pixels: int
) -> Iterator[Chunk | Skipped]:
    """The inputs' images in chunks of at most ``chunk``, in order, with what could not
    be read where it was met."""
    held: list[Piece] = []
    size = 0
    for one in inputs:
        for item in one.read(chunk, done, max_pixels):
            if isinstance(item, Skipped):
                yield item
                continue
            if size + len(item.pixels) > chunk and held:
                yield Chunk(tuple(held))
                held, size = [], 0
            held.append(item)
            size += len(item.pixels)
    if held:
        yield Chunk(tuple(held))


_END = object()


def _read_ahead(items: Iterator[Any], stop: threading.Event) -> Iterator[Any]:
    """``items``, produced on another thread at most :data:`READ_AHEAD` ahead."""
    ahead: queue.Queue[Any] = queue.Queue(READ_AHEAD)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
            return
        put(_END)

    thread = threading.Thread(target=produce, name="batch-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(5)


Progress = Callable[[int], None]
"""Told how many images were just scored (or passed over)."""


def predict_stream(
    arguments: Sequence[str],
    settings: Settings,
    *,
    out: Path | None = None,
    chunk: int = DEFAULT_CHUNK,
    resume: bool = False,
    strict: bool = False,
    column: str | None = None,
    on_skipped: Callable[[Skipped], None] | None = None,
    progress: Callable[[int | None, int], Progress] | None = None,
) -> Summary:
    """Score every image the arguments name with the version ``settings.model_uri`` names.

    Args:
        arguments: files, folders and glob patterns.
        out: a .csv or .parquet file (None: lines on standard output).
        chunk: images per onnxruntime call and per write.
        resume: skip the images an earlier run wrote to ``out``.
        strict: stop at the first input that cannot be read.
        column: the Parquet column to read (default: see :data:`sources.PARQUET_COLUMNS`).
        on_skipped: told of each input that cannot be read, as it is met.
        progress: given (total images or None, images already done), returns what to tell
            of each chunk's images.

    Raises:
        BatchError: ``strict`` and an input cannot be read, or no input was named.
        OutputError: ``out`` cannot be written or resumed from.
        BundleError, RegistryError: the model cannot be loaded.
    """
    from mnistops.predictor import Predictor
    from mnistops.registry import resolve

    if not arguments:
        raise BatchError(f"name at least one input: {ACCEPTED}")
    inputs, missing, ignored = expand(arguments)
    if strict and missing:
        raise BatchError(f"{missing[0]}; stopped (--strict), nothing was scored")
    if not inputs:
        said = "; ".join(str(s) for s in missing[:3]) or "the folders hold no accepted file"
        raise BatchError(f"nothing to score: {said}; give {ACCEPTED}")
    for one in inputs:
        if isinstance(one, ParquetFile):
            one.column = column
    predictor = Predictor(
        resolve(settings.model_uri, settings),
        intra_op_threads=os.cpu_count() or 1,
        precision=settings.precision,
    )
    predictor.load()
    output, done = open_output(out, resume=resume, version=predictor.version)
    summary = Summary(ignored=ignored, model_version=predictor.version)
    summary.resumed = sum(done.values())
    counts = [one.count for one in inputs]
    total = None if None in counts else sum(c for c in counts if c is not None)
    tell = progress(total, summary.resumed) if progress else None
    started = time.perf_counter()
    stop = threading.Event()
    try:
        for skipped in missing:
            _skip(summary, skipped, strict, on_skipped)
        for item in _read_ahead(chunks(inputs, chunk, done, settings.max_image_pixels), stop):
            if isinstance(item, Skipped):
                _skip(summary, item, strict, on_skipped)
                if tell is not None:
                    tell(item.images)
                continue
            _score(predictor, item, output)
            summary.scored += sum(len(p.pixels) for p in item.pieces)
            if tell is not None:
                tell(sum(len(p.pixels) for p in item.pieces))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        stop.set()
        output.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _score(predictor: Any, chunk: Chunk, output: Output) -> None:
    answer = predictor.answer(chunk.pixels)
    sources, indices = chunk.positions()
    output.write(
        scores_table(sources, indices, answer.probabilities, answer.is_digit, predictor.version)
    )


def _skip(
    summary: Summary, skipped: Skipped, strict: bool, told: Callable[[Skipped], None] | None
) -> None:
    if strict:
        raise BatchError(f"{skipped}; stopped (--strict), nothing after it was scored")
    summary.skipped += skipped.images
    summary.reasons[_reason_kind(skipped.reason)] += skipped.images
    if told is not None and sum(summary.reasons.values()) <= REPORTED:
        told(skipped)


def _reason_kind(reason: str) -> str:
    """A reason without what differs from image to image (row numbers)."""
    if reason.startswith(("images ", "rows ")) and ": " in reason:
        return reason.split(": ", 1)[1]
    return reason
