"""The two architectures: the lab's MLP and a small convnet, both taking [N, 784] pixels."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES

if TYPE_CHECKING:
    import keras

MODELS = ("mlp", "cnn")


class Architecture(StrEnum):
    """The architectures of :data:`MODELS`, as a command-line choice."""

    MLP = "mlp"
    CNN = "cnn"


DEFAULT_EPOCHS = {"mlp": 5, "cnn": 8}
"""Epochs of each recipe: the lab's 5 for the MLP; the convnet needs 8 to pass 99.3 %."""
INPUT_NAME = "pixels"


def build_model(name: str, learning_rate: float = 1e-3) -> keras.Model:
    """Build and compile a classifier.

    Both take float32 ``[N, 784]`` pixels in ``[0, 1]`` (the flat layout the lab uses,
    so serving feeds every architecture the same tensor) and end in a 10-way softmax.

    Args:
        name: ``"mlp"``, the lab's network (Dense 512 relu, Dropout 0.2, Dense 10
            softmax), or ``"cnn"``, a small convnet.
        learning_rate: Adam's step size.

    Raises:
        ValueError: an unknown architecture name.
    """
    import keras
    from keras import layers

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
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"mnist_{name}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
