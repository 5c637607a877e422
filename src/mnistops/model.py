"""The architectures, all taking [N, 784] pixels: the lab's MLP, a small convnet, and the
fast recipe (a strided convnet trained on distorted digits in under two minutes of CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES

if TYPE_CHECKING:
    import keras

MODELS = ("mlp", "cnn", "fast")


class Architecture(StrEnum):
    """The architectures of :data:`MODELS`, as a command-line choice."""

    MLP = "mlp"
    CNN = "cnn"
    FAST = "fast"


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained by default."""

    epochs: int
    batch_size: int
    learning_rate: float
    distort: bool = False
    """Train on randomly distorted digits (:mod:`mnistops.augment`), new ones every epoch."""
    label_smoothing: float = 0.0
    one_cycle: bool = False
    """Warm the learning rate up over the first fifth of the steps, then cosine-decay it."""
    weight_average: bool = False
    """Serve an exponential moving average of the weights (over the last 100 steps)."""


RECIPES = {
    "mlp": Recipe(epochs=5, batch_size=128, learning_rate=1e-3),
    "cnn": Recipe(epochs=8, batch_size=128, learning_rate=1e-3),
    "fast": Recipe(
        epochs=7,
        batch_size=256,
        learning_rate=3e-3,
        distort=True,
        label_smoothing=0.1,
        one_cycle=True,
        weight_average=True,
    ),
}
"""The lab's 5 epochs of batch 128 for the MLP; the convnet needs 8 to pass 99.3 %; the fast
recipe's figures are in docs/model.md."""
DEFAULT_EPOCHS = {name: recipe.epochs for name, recipe in RECIPES.items()}
INPUT_NAME = "pixels"
FAST_FILTERS = (24, 48, 96)
"""Channels of the fast recipe's three 3x3 convolutions, each of stride 2 (28 -> 14 -> 7 -> 4):
strided rather than pooled because XLA's CPU gradient of a max pool or a full-resolution
convolution costs 5-6 times the whole strided layer."""
FAST_HIDDEN = 128


def build_model(
    name: str, learning_rate: float | None = None, total_steps: int | None = None
) -> keras.Model:
    """Build and compile a classifier.

    All take float32 ``[N, 784]`` pixels in ``[0, 1]`` (the flat layout the lab uses,
    so serving feeds every architecture the same tensor) and end in a 10-way softmax.

    Args:
        name: ``"mlp"``, the lab's network (Dense 512 relu, Dropout 0.2, Dense 10
            softmax), ``"cnn"``, a small convnet, or ``"fast"``, the fast recipe.
        learning_rate: Adam's (peak) step size; default the recipe's.
        total_steps: the gradient steps of the whole fit, which a one-cycle schedule
            spans (default: a fixed step size).

    Raises:
        ValueError: an unknown architecture name.
    """
    import keras
    from keras import layers

    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    recipe = RECIPES[name]
    inputs = keras.Input(shape=(IMAGE_PIXELS,), name=INPUT_NAME)
    if name == "mlp":
        x = layers.Dense(512, activation="relu")(inputs)
        x = layers.Dropout(0.2)(x)
    elif name == "cnn":
        x = layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1))(inputs)
        for filters in (32, 64):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.Conv2D(filters, 3, activation="relu")(x)
            x = layers.MaxPooling2D()(x)
            x = layers.Dropout(0.25)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(256, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    else:
        x = layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1))(inputs)
        for filters in FAST_FILTERS:
            x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(FAST_HIDDEN, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"mnist_{name}")
    model.compile(
        optimizer=_optimizer(recipe, learning_rate or recipe.learning_rate, total_steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
        if recipe.label_smoothing
        else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def one_hot_labels(name: str) -> bool:
    """Whether the recipe's loss takes one-hot labels (label smoothing needs them)."""
    return RECIPES[name].label_smoothing > 0


def _optimizer(recipe: Recipe, learning_rate: float, total_steps: int | None) -> keras.Optimizer:
    import keras

    if not (recipe.one_cycle and total_steps):
        return keras.optimizers.Adam(learning_rate=learning_rate, use_ema=recipe.weight_average)
    warmup = max(1, total_steps // 5)
    # the average spans the last ~100 steps, fewer in a short run (no bias correction)
    momentum = 1.0 - 1.0 / max(10.0, min(100.0, total_steps / 10))
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate / 10,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.01,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(
        learning_rate=schedule,
        beta_1=0.9,
        beta_2=0.99,
        use_ema=recipe.weight_average,
        ema_momentum=momentum,
    )
