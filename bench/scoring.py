"""The batch scoring suite: a million images (the MNIST test set repeated) through
``mnistops predict`` as Parquet pixels and as a folder of PNGs, and through local Spark with
two executors, against the predictor's in-memory throughput on the same pixels; images per
second and peak resident memory of each whole command."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.servers import tree_rss_mb
from bench.workspace import HOME, WORK, base_env, export_champion, log, mnistops

IMAGES = 1_000_000
PNG_IMAGES = 1_000_000
ROW_GROUP = 100_000
CHUNK = 4096
MEMORY_TARGET_MB = 1024.0
RATE_TARGET = 0.8


@dataclass
class Scored:
    """One whole command: images, seconds, images/s, peak resident memory (process tree)."""

    images: int
    seconds: float
    peak_mb: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


@dataclass
class ScoringResult:
    in_memory_rate: float
    """The predictor alone on the same pixels, already in memory, chunks of :data:`CHUNK`."""
    runs: dict[str, Scored] = field(default_factory=dict)

    def markdown(self) -> list[str]:
        lines = [
            "## Batch scoring: `mnistops predict` and Spark",
            "",
            "The MNIST test set repeated; whole commands, model load and writing included; "
            "peak memory is the resident memory of the command's process tree "
            "(the JVM's too for Spark), sampled every 0.2 s.",
            "",
            "| run | images | seconds | images/s | peak memory (MB) |",
            "|---|---:|---:|---:|---:|",
            f"| predictor in memory (pixels, chunks of {CHUNK}) | | | "
            f"{self.in_memory_rate:,.0f} | |",
        ]
        for name, run in self.runs.items():
            lines.append(
                f"| {name} | {run.images:,} | {run.seconds:.1f} | {run.rate:,.0f} | "
                f"{run.peak_mb:.0f} |"
            )
        lines.append("")
        parquet = self.runs.get("mnistops predict, Parquet pixels")
        if parquet is not None:
            ratio = parquet.rate / self.in_memory_rate
            verdict = "met" if ratio >= RATE_TARGET else "not met"
            lines.append(
                f"- Parquet pixels against the predictor in memory: **{ratio:.2f}** "
                f"(target ≥ {RATE_TARGET}: {verdict})"
            )
        for name, run in self.runs.items():
            verdict = "met" if run.peak_mb < MEMORY_TARGET_MB else "not met"
            lines.append(
                f"- peak memory, {name}: **{run.peak_mb:.0f} MB** "
                f"(target < {MEMORY_TARGET_MB:.0f} MB: {verdict})"
            )
        return [*lines, ""]


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak MB of the process tree) of one command."""
    peak = 0.0
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env or base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_mb(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {stderr.decode()[-2000:]}")
    return seconds, peak


def _parquet(x_test: np.ndarray, images: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = WORK / f"scoring-{images}.parquet"
    if path.exists():
        return path
    flat = x_test.reshape(-1, 784)
    with pq.ParquetWriter(path, pa.schema([("pixels", pa.list_(pa.uint8()))])) as writer:
        for start in range(0, images, ROW_GROUP):
            rows = np.resize(flat, (min(ROW_GROUP, images - start), 784))
            values = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 784)
            writer.write_table(pa.table({"pixels": values.cast(pa.list_(pa.uint8()))}))
    return path


def _pngs(x_test: np.ndarray, images: int) -> Path:
    from PIL import Image

    folder = WORK / f"scoring-png-{images}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    encoded = []
    for image in x_test:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    for i in range(images):
        part = folder / f"{i // 10_000:03d}"
        if i % 10_000 == 0:
            part.mkdir(parents=True, exist_ok=True)
        (part / f"{i:07d}.png").write_bytes(encoded[i % len(encoded)])
    marker.touch()
    return folder


def bench_scoring(images: int = IMAGES, png_images: int = PNG_IMAGES) -> ScoringResult:
    """Each way of scoring once (a run of minutes already averages out the machine)."""
    from mnistops.bundle import load_bundle
    from mnistops.config import load_settings
    from mnistops.data import load_mnist
    from mnistops.predictor import Predictor

    model_dir = export_champion()
    x_test = load_mnist(load_settings(home=HOME)).x_test
    predictor = Predictor(load_bundle(model_dir), intra_op_threads=os.cpu_count() or 1)
    predictor.load()
    pixels = np.resize(x_test.reshape(-1, 784), (100_000, 784)).astype(np.float32) / 255
    started = time.perf_counter()
    for start in range(0, len(pixels), CHUNK):
        predictor.answer(pixels[start : start + CHUNK])
    result = ScoringResult(len(pixels) / (time.perf_counter() - started))
    log(f"predictor in memory: {result.in_memory_rate:,.0f} images/s")
    parquet = _parquet(x_test, images)
    out = WORK / "scoring-out.parquet"
    argv = mnistops("predict", str(parquet), "--model", str(model_dir), "--out", str(out))
    seconds, peak = _timed(argv)
    result.runs["mnistops predict, Parquet pixels"] = Scored(images, seconds, peak)
    log(f"Parquet: {images / seconds:,.0f} images/s, peak {peak:.0f} MB")
    if png_images:
        folder = _pngs(x_test, png_images)
        argv = mnistops("predict", str(folder), "--model", str(model_dir), "--out", str(out))
        seconds, peak = _timed(argv)
        result.runs["mnistops predict, folder of PNGs"] = Scored(png_images, seconds, peak)
        log(f"PNGs: {png_images / seconds:,.0f} images/s, peak {peak:.0f} MB")
    uri = os.environ.get("BENCH_SCORING_MODEL_URI", "models:/mnist-classifier@champion")
    argv = mnistops(
        "predict", str(parquet), "--model", uri, "--out", str(WORK / "scoring-spark"),
        "--engine", "spark", "--master", "local[2]",
    )  # fmt: skip
    seconds, peak = _timed(argv)
    result.runs["Spark local[2], Parquet pixels"] = Scored(images, seconds, peak)
    log(f"Spark: {images / seconds:,.0f} images/s, peak {peak:.0f} MB")
    return result
