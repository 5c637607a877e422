"""The batch inference suite: the predictor against numpy's float32 GEMM on the same products."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.results import BatchResult
from bench.workspace import HOME, WORK, export_champion, mnistops, run

if TYPE_CHECKING:
    from mnistops.bundle import ModelBundle

BATCH = 4096
GIGA = 1e9


def bench_batch(repeats: int) -> BatchResult:
    """Best of ``repeats`` for both, over the 10,000 test images; and the whole CLI command."""
    from mnistops.bundle import load_bundle
    from mnistops.config import load_settings
    from mnistops.data import load_mnist

    model_dir = export_champion()
    bundle = load_bundle(model_dir)
    threads = os.cpu_count() or 1
    x_test = load_mnist(load_settings(home=HOME)).x_test
    pixels = (x_test.reshape(-1, 784) / np.float32(255)).astype(np.float32)
    shapes = weight_shapes(bundle.onnx_path)
    flops_per_image = sum(2 * a * b for a, b in shapes)  # 2 per multiply-add
    n = len(pixels)
    ours_s = best_seconds(predicting(bundle, pixels, threads), repeats)
    gemm_s = best_seconds(gemm(pixels, shapes), repeats)
    return BatchResult(
        images=n,
        batch=BATCH,
        threads=threads,
        flops_per_image=flops_per_image,
        ours_images_per_s=n / ours_s,
        ours_gflops=n * flops_per_image / ours_s / GIGA,
        gemm_gflops=n * flops_per_image / gemm_s / GIGA,
        cli_seconds=time_predict_command(model_dir, x_test),
    )


def predicting(bundle: ModelBundle, pixels: np.ndarray, threads: int) -> Callable[[], None]:
    """The predictor (onnxruntime on ``threads`` threads) over ``pixels``, batch by batch."""
    from mnistops.predictor import Predictor

    predictor = Predictor(bundle, intra_op_threads=threads)
    predictor.load()

    def run_predictor() -> None:
        for batch in _batches(pixels):
            predictor.predict(batch)

    return run_predictor


def weight_shapes(onnx_path: Path) -> list[tuple[int, int]]:
    """The shapes of the model's dense weight matrices."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = (numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 2)
    return [(int(a.shape[0]), int(a.shape[1])) for a in arrays]


def gemm(pixels: np.ndarray, shapes: list[tuple[int, int]]) -> Callable[[], None]:
    """The model's matrix products on random weights over ``pixels``, batch by batch."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]

    def run_gemm() -> None:
        for x in _batches(pixels):
            for w in weights:
                x = x @ w if x.shape[1] == w.shape[0] else x @ w.T

    return run_gemm


def best_seconds(work: Callable[[], None], repeats: int) -> float:
    """The fastest of ``repeats`` timed runs, after one untimed."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def time_predict_command(model_dir: Path, x_test: np.ndarray) -> float:
    """Seconds of ``mnistops predict`` on ``x_test`` saved as .npy, the whole command."""
    npy = WORK / "x_test.npy"
    np.save(npy, x_test)
    out = WORK / "predictions.csv"
    started = time.perf_counter()
    run(mnistops("predict", "--model", str(model_dir), str(npy), "--out", str(out)))
    return time.perf_counter() - started


def _batches(pixels: np.ndarray) -> list[np.ndarray]:
    return [pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)]
