"""Test-set metrics (accuracy, loss, calibration, per-class scores) and their plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.features import IMAGE_SIDE, NUM_CLASSES

ECE_BINS = 15
MISCLASSIFIED_SHOWN = 36


@dataclass
class Evaluation:
    """What a model scored on a labelled set."""

    accuracy: float
    loss: float
    ece: float
    report: dict[str, Any] = field(default_factory=dict)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES)))

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: test_*, ece and per-class precision/recall/F1."""
        flat = {"test_accuracy": self.accuracy, "test_loss": self.loss, "ece": self.ece}
        for digit in range(NUM_CLASSES):
            scores = self.report[str(digit)]
            flat[f"precision_{digit}"] = scores["precision"]
            flat[f"recall_{digit}"] = scores["recall"]
            flat[f"f1_{digit}"] = scores["f1-score"]
        return flat


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def evaluate(probs: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Score predicted probabilities against true labels."""
    from sklearn.metrics import classification_report, confusion_matrix

    labels = labels.astype(np.int64)
    predicted = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    digits = list(range(NUM_CLASSES))
    return Evaluation(
        accuracy=float((predicted == labels).mean()),
        loss=float(-np.log(picked).mean()),
        ece=expected_calibration_error(probs, labels),
        report=classification_report(
            labels, predicted, labels=digits, output_dict=True, zero_division=0
        ),
        confusion=confusion_matrix(labels, predicted, labels=digits),
    )


def plot_confusion(confusion: np.ndarray, path: Path) -> None:
    """Save the confusion matrix as a PNG heat map with counts."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(confusion, cmap="Blues")
    for (row, col), count in np.ndenumerate(confusion):
        colour = "white" if count > confusion.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")
    ax.set_xticks(range(NUM_CLASSES))
    ax.set_yticks(range(NUM_CLASSES))
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(history: dict[str, list[float]], path: Path) -> None:
    """Save loss and accuracy per epoch, training against validation, as a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + metric, [])
            ax.plot(range(1, len(values) + 1), values, style, label=prefix + metric)
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, path: Path
) -> None:
    """Save a grid of misclassified test digits with true and predicted labels."""
    plt = _pyplot()
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)[:MISCLASSIFIED_SHOWN]
    side = 6
    fig, axes = plt.subplots(side, side, figsize=(8, 8.6))
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[index].reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray_r")
        ax.set_title(
            f"true {labels[index]} → {predicted[index]} ({probs[index].max():.2f})", fontsize=7
        )
    fig.suptitle(f"{len(np.flatnonzero(predicted != labels))} misclassified test digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
