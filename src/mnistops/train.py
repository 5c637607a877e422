"""Training: one MLflow run per call; resumable, seeded; ends registered and gated.

``train(settings, params)`` is a plain function (the CLI only wraps it): it fits the
model with per-epoch checkpoints, evaluates it on the test set, exports it to ONNX
with a parity check, computes the reference profile for drift detection, logs it all
to MLflow, registers a new version of the registered model, and runs the quality gate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.checkpoints import CHECKPOINT_FILE, RunProgress, load_progress, save_checkpoint
from mnistops.config import Settings
from mnistops.errors import MnistopsError
from mnistops.evaluate import evaluate, plot_confusion, plot_learning_curves, plot_misclassified
from mnistops.features import IMAGE_PIXELS
from mnistops.package import Splits, register_version

DEFAULT_BACKEND = "jax"
"""Measured fastest for the lab recipe on CPU (README: "Why JAX")."""


class TrainError(MnistopsError):
    """Training finished but its model must not be registered (e.g. failed ONNX parity)."""


@dataclass(frozen=True)
class TrainParams:
    """The hyperparameters of one run (every field is logged as an MLflow param)."""

    model: str = "mlp"
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    seed: int = 0
    limit: int | None = None

    @classmethod
    def for_recipe(cls, model: str = "mlp", **given: Any) -> TrainParams:
        """The recipe's defaults (epochs, batch size, learning rate), with ``given`` fields
        that are not None in their place."""
        from mnistops.model import RECIPES

        recipe = RECIPES[model]
        defaults = {
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "learning_rate": recipe.learning_rate,
        }
        chosen = {k: v for k, v in given.items() if v is not None}
        return cls(model=model, **{**defaults, **chosen})

    def check(self, fit_images: int) -> None:
        """Refuse hyperparameters no run can use (before anything is logged).

        Raises:
            TrainError: an unknown recipe, no epochs, a batch larger than the data, a
                step size that is not positive, or no images left to hold out or fit.
        """
        from mnistops.model import MODELS

        if self.model not in MODELS:
            raise TrainError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.epochs < 1:
            raise TrainError(f"epochs must be at least 1, got {self.epochs}")
        if not self.learning_rate > 0:
            raise TrainError(f"the learning rate must be above 0, got {self.learning_rate:g}")
        if not 0 < self.validation_split < 1:
            raise TrainError(
                f"the validation split must be between 0 and 1, got {self.validation_split:g}"
            )
        if fit_images < 1:
            raise TrainError("no training images left after holding out the validation split")
        if not 1 <= self.batch_size <= fit_images:
            raise TrainError(
                f"batch size {self.batch_size} is larger than the {fit_images} images "
                "it would train on; give a smaller --batch-size or more data"
            )

    def key(self, extra: str = "") -> str:
        """A short id of these params (and extra data), naming the checkpoint folder."""
        text = json.dumps(asdict(self), sort_keys=True) + extra
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What a run produced and what the gate decided."""

    run_id: str
    version: str
    test_accuracy: float
    decision: str
    reason: str
    bundle_path: Path
    fit_seconds: float
    resumed_from: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def _prepare(images: np.ndarray) -> np.ndarray:
    """Pixels as the model sees them: float32 [N, 784] in [0, 1] (the lab's / 255)."""
    return images.reshape(-1, IMAGE_PIXELS).astype(np.float32) / np.float32(255.0)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def train(
    settings: Settings,
    params: TrainParams,
    *,
    extra_train: tuple[np.ndarray, np.ndarray] | None = None,
    tags: dict[str, str] | None = None,
    experiment: str | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train, evaluate, export, log, register and gate one model.

    Args:
        settings: where the data, MLflow store and checkpoints live.
        params: the hyperparameters.
        extra_train: more training images (uint8 ``[K, 28, 28]``) and labels, fitted on
            with the MNIST training set, never held out (retraining on feedback-labelled
            traffic).
        tags: extra MLflow run tags.
        experiment: MLflow experiment name (default ``settings.experiment``).
        log: where progress sentences go.

    Raises:
        TrainError: the ONNX export does not match the Keras model.
    """
    os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
    import mlflow

    from mnistops.data import load_mnist
    from mnistops.registry import ensure_experiment

    data = load_mnist(settings)
    splits = _split(data, params, extra_train)
    params.check(len(splits.x_fit))
    checkpoint = settings.checkpoint_dir / params.key(splits.extra_key)
    progress = load_progress(checkpoint)
    model = _open_model(params, checkpoint, progress, len(splits.x_fit), log)
    experiment_id = ensure_experiment(settings, experiment or settings.experiment)
    run_id = progress.run_id if progress else None
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id) as run:
        if progress is None:
            _log_start(params, data.fingerprint(), len(splits.x_fit), tags)
            progress = RunProgress(run.info.run_id)
        resumed_from = progress.epoch
        _fit(model, params, splits, checkpoint, progress)
        mlflow.log_metric("fit_seconds", progress.fit_seconds)
        log(f"fit took {progress.fit_seconds:.1f} s")
        result = _evaluate_and_register(settings, params, model, splits, data.x_test, progress, log)
    shutil.rmtree(checkpoint, ignore_errors=True)
    result.resumed_from = resumed_from
    return result


def _evaluate_and_register(
    settings: Settings,
    params: TrainParams,
    model: Any,
    splits: Splits,
    test_images: np.ndarray,
    progress: RunProgress,
    log: Callable[[str], None],
) -> TrainResult:
    """Score the test set, log plots, export and register the version, run the gate."""
    import mlflow

    from mnistops.registry import gate

    test_probs = model.predict(splits.x_test, batch_size=1024, verbose=0)
    scores = evaluate(test_probs, splits.y_test)
    mlflow.log_metrics(scores.metrics())
    log(f"test accuracy {scores.accuracy:.4f}, loss {scores.loss:.4f}, ECE {scores.ece:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _log_plots(work, progress.history, scores, test_images, splits.y_test, test_probs)
        version, kept = register_version(
            settings, model, asdict(params), splits, test_probs, work, log
        )
    decision = gate(settings, version, scores.accuracy)
    mlflow.set_tags({"registered_version": version, "gate.decision": decision.alias})
    name = settings.registered_model
    log(f"registered {name} version {version}: {decision.alias} ({decision.reason})")
    return TrainResult(
        run_id=progress.run_id,
        version=version,
        test_accuracy=scores.accuracy,
        decision=decision.alias,
        reason=decision.reason,
        bundle_path=kept,
        fit_seconds=progress.fit_seconds,
        metrics=scores.metrics(),
    )


def _split(
    data: Any, params: TrainParams, extra_train: tuple[np.ndarray, np.ndarray] | None
) -> Splits:
    x_all, y_all = data.x_train, data.y_train
    if params.limit:
        x_all, y_all = x_all[: params.limit], y_all[: params.limit]
    # Hold out the last fraction of MNIST, as Keras' validation_split does. Extra images
    # (feedback-labelled traffic) are fitted on, never held out: the validation set and
    # the reference profile computed from it stay the distribution the gate judges on,
    # rather than a sample of whatever people chose to label.
    split = len(x_all) - int(len(x_all) * params.validation_split)
    x_fit, y_fit, x_val, y_val = x_all[:split], y_all[:split], x_all[split:], y_all[split:]
    extra_key = ""
    if extra_train is not None and len(extra_train[0]):
        x_fit = np.concatenate([x_fit, extra_train[0].astype(np.uint8)])
        y_fit = np.concatenate([y_fit, extra_train[1].astype(np.uint8)])
        extra_key = hashlib.sha256(extra_train[0].tobytes()).hexdigest()
    return Splits(
        _prepare(x_fit),
        y_fit.astype(np.int64),
        _prepare(x_val),
        y_val.astype(np.int64),
        _prepare(data.x_test),
        data.y_test.astype(np.int64),
        extra_key,
    )


def _open_model(
    params: TrainParams,
    checkpoint: Path,
    progress: RunProgress | None,
    fit_images: int,
    log: Callable[[str], None],
) -> Any:
    """The checkpointed model of an unfinished run, or a new one."""
    import keras

    keras.utils.set_random_seed(params.seed)
    if progress:
        log(
            f"Resuming run {progress.run_id} from epoch {progress.epoch + 1} "
            f"({progress.epoch} of {params.epochs} epochs already done)"
        )
        return keras.saving.load_model(checkpoint / CHECKPOINT_FILE)
    from mnistops.model import build_model

    steps = params.epochs * math.ceil(fit_images / params.batch_size)
    return build_model(params.model, params.learning_rate, total_steps=steps)


def _log_start(
    params: TrainParams, fingerprint: str, n_fit: int, tags: dict[str, str] | None
) -> None:
    import keras
    import mlflow

    mlflow.log_params({**asdict(params), "limit": params.limit or "none"})
    run_tags = {
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "data_fingerprint": fingerprint,
        "train_images": str(n_fit),
        **(tags or {}),
    }
    commit = _git_commit()
    if commit:
        run_tags["git_commit"] = commit
    mlflow.set_tags(run_tags)


def _fit(
    model: Any, params: TrainParams, splits: Splits, checkpoint: Path, progress: RunProgress
) -> None:
    """Fit from the last completed epoch, checkpointing and logging after each epoch."""
    from mnistops.model import RECIPES, one_hot_labels

    recipe = RECIPES[params.model]
    if progress.epoch >= params.epochs:
        if recipe.weight_average:  # killed between the last epoch and registering
            model.optimizer.finalize_variable_values(model.trainable_weights)
            _mend_averages(model)
        return
    y_fit, y_val = splits.y_fit, splits.y_val
    if one_hot_labels(params.model):
        y_fit, y_val = _one_hot(y_fit), _one_hot(y_val)
    inputs: dict[str, Any] = {"x": splits.x_fit, "y": y_fit, "batch_size": params.batch_size}
    if recipe.distort:
        inputs = {"x": _distorted(splits.x_fit, y_fit, params, progress.epoch)}
    model.fit(
        **inputs,
        validation_data=(splits.x_val, y_val),
        epochs=params.epochs,
        initial_epoch=progress.epoch,
        callbacks=[_epoch_recorder(model, checkpoint, progress, params.seed)],
        verbose=1 if os.isatty(1) else 2,
    )
    if recipe.weight_average:
        _mend_averages(model)


def _mend_averages(model: Any) -> None:
    """Give the optimizer's moving averages fresh copies of the averaged weights.

    At the end of a fit, Keras on JAX moves each average into its weight and leaves the
    average's buffer deleted, so that saving the model (with its optimizer) fails with
    "Array has been deleted"; the weights now hold the averages, so copies of them mend it.
    """
    averages = getattr(model.optimizer, "_model_variables_moving_average", None) or ()
    for weight, average in zip(model.trainable_variables, averages, strict=False):
        average.assign(np.array(weight.value))


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[labels]


def _distorted(x_fit: np.ndarray, y_fit: np.ndarray, params: TrainParams, first_epoch: int) -> Any:
    """The training set as a Keras dataset of freshly distorted batches, built on a second
    thread while the first one trains; batch ``i`` of epoch ``e`` is the same for the same
    seed, so a resumed run sees what an uninterrupted one would have."""
    import keras

    from mnistops.augment import distort

    class DistortedDigits(keras.utils.PyDataset):  # type: ignore[misc]  # Keras ships no types
        def __init__(self) -> None:
            super().__init__(workers=2, use_multiprocessing=False, max_queue_size=16)
            self.epoch = first_epoch
            self.order = self._shuffled()

        def _shuffled(self) -> np.ndarray:
            return np.random.default_rng([params.seed, self.epoch]).permutation(len(x_fit))

        def __len__(self) -> int:
            return math.ceil(len(x_fit) / params.batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self.order[index * params.batch_size : (index + 1) * params.batch_size]
            rng = np.random.default_rng([params.seed, self.epoch, index])
            return distort(x_fit[rows], rng), y_fit[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._shuffled()

    return DistortedDigits()


def _epoch_recorder(model: Any, checkpoint: Path, progress: RunProgress, seed: int) -> Any:
    """A Keras callback that times each epoch, logs its metrics to MLflow and checkpoints.

    Each epoch also starts numpy's global generator from (``seed``, epoch): Keras draws an
    epoch's shuffle from it, so epoch ``e`` sees the same order whether the run began at
    epoch 0 or resumed from a checkpoint (else a resumed run replays the first epochs'
    orders)."""
    import keras
    import mlflow

    class EpochRecorder(keras.callbacks.Callback):  # type: ignore[misc]  # Keras ships no types
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            np.random.seed([seed, epoch])  # Keras shuffles with the global generator
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items()}
            mlflow.log_metrics(values, step=epoch + 1)
            progress.record_epoch(epoch + 1, time.perf_counter() - self.started, values)
            save_checkpoint(checkpoint, model, progress)

    return EpochRecorder()


def _log_plots(
    work: Path,
    history: dict[str, list[float]],
    scores: Any,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
) -> None:
    import mlflow

    plots = work / "plots"
    plots.mkdir()
    plot_confusion(scores.confusion, plots / "confusion_matrix.png")
    plot_learning_curves(history, plots / "learning_curves.png")
    plot_misclassified(images, labels, probs, plots / "misclassified.png")
    (plots / "classification_report.json").write_text(json.dumps(scores.report, indent=2))
    mlflow.log_artifacts(str(plots), artifact_path="evaluation")
