"""The training suite: the lab's TensorFlow script against ``mnistops train --model mlp``."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.results import TrainingResult, TrainRun
from bench.workspace import (
    LAB,
    LAB_MODEL,
    base_env,
    ensure_labenv,
    lab_env,
    log,
    mnist_npz,
    run,
    train_mlp,
)

_RUN_ID = re.compile(r"run (\w+): test_accuracy=")


RECIPES = ("fast", "cnn")
"""The recipes timed beside the lab's MLP (``--recipes`` chooses)."""


def bench_training(reps: int, recipes: tuple[str, ...] = RECIPES) -> TrainingResult:
    """Median fit time, accuracy and whole-process time of each, over ``reps`` repetitions
    (seeds 0..reps-1), interleaved so that every recipe sees the same machine."""
    python = ensure_labenv()
    npz = mnist_npz()
    lab: list[TrainRun] = []
    ours: list[TrainRun] = []
    others: dict[str, list[TrainRun]] = {name: [] for name in recipes}
    for rep in range(reps):
        log(f"training repetition {rep + 1}/{reps}: the lab's script")
        lab.append(_logged(train_lab(python, npz, seed=rep)))
        log(f"training repetition {rep + 1}/{reps}: mnistops train --model mlp")
        ours.append(_logged(train_ours(seed=rep)))
        for name in recipes:
            log(f"training repetition {rep + 1}/{reps}: mnistops train --model {name}")
            others[name].append(_logged(train_ours(seed=rep, model=name)))
    medians = {name: _median(runs) for name, runs in others.items()}
    return TrainingResult(reps, _median(lab), _median(ours), medians)


def train_lab(python: Path, npz: Path, seed: int) -> TrainRun:
    """The lab's script, from its own venv; it saves its model to LAB_MODEL."""
    argv = [str(python), str(LAB / "train_lab.py"), str(npz), str(LAB_MODEL), str(seed)]
    out, wall = _timed(lambda: run(argv, lab_env()))
    result = json.loads(out.strip().splitlines()[-1])
    return TrainRun(result["fit_seconds"], result["test_accuracy"], wall)


def ensure_lab_model(python: Path) -> Path:
    """The lab's trained model, trained once if it is missing."""
    if not LAB_MODEL.exists():
        train_lab(python, mnist_npz(), seed=0)
    return LAB_MODEL


def train_ours(seed: int, model: str = "mlp") -> TrainRun:
    """``mnistops train --model MODEL``; fit time and accuracy as it logged them to MLflow."""
    import mlflow

    out, wall = _timed(lambda: train_mlp(seed, model))
    match = _RUN_ID.search(out)
    if match is None:
        raise RuntimeError(f"unexpected output of mnistops train:\n{out}")
    client = mlflow.MlflowClient(tracking_uri=base_env()["MLFLOW_TRACKING_URI"])
    metrics = client.get_run(match.group(1)).data.metrics
    return TrainRun(metrics["fit_seconds"], metrics["test_accuracy"], wall)


def _timed(work: Callable[[], str]) -> tuple[str, float]:
    started = time.perf_counter()
    out = work()
    return out, time.perf_counter() - started


def _logged(result: TrainRun) -> TrainRun:
    log(f"  fit {result.fit_seconds:.1f} s, accuracy {result.test_accuracy:.4f}")
    return result


def _median(runs: list[TrainRun]) -> TrainRun:
    return TrainRun(
        float(statistics.median(r.fit_seconds for r in runs)),
        float(statistics.median(r.test_accuracy for r in runs)),
        float(statistics.median(r.wall_seconds for r in runs)),
    )
