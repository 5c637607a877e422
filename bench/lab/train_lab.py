"""The lab's Exercise 1, as written: a Keras MLP on MNIST with TensorFlow.

Only two things are added, outside the lab's code: MNIST is read from a local
Keras-format ``mnist.npz`` (the arrays ``keras.datasets.mnist.load_data`` returns,
without the download), and the time spent in ``fit`` is measured the same way
``mnistops train`` measures it (the sum of the epochs' wall times). One JSON line
is printed at the end for the benchmark to read.

Usage: python train_lab.py MNIST_NPZ MODEL_OUT [SEED]
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow import keras

npz_path, model_out = sys.argv[1], sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
keras.utils.set_random_seed(seed)

# --- the lab ---------------------------------------------------------------
with np.load(npz_path) as f:
    (x_train, y_train), (x_test, y_test) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])

x_train = x_train.reshape(60000, 784).astype("float32") / 255
x_test = x_test.reshape(10000, 784).astype("float32") / 255

model = keras.Sequential(
    [
        keras.layers.Input(shape=(784,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])


class EpochTimer(keras.callbacks.Callback):
    seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        EpochTimer.seconds += time.perf_counter() - self.started


model.fit(
    x_train,
    y_train,
    epochs=5,
    batch_size=128,
    validation_split=0.1,
    callbacks=[EpochTimer()],
    verbose=2,
)
test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
print(f"Test accuracy: {test_acc:.4f}")
model.save(model_out)
# ----------------------------------------------------------------------------

print(
    json.dumps(
        {
            "fit_seconds": EpochTimer.seconds,
            "test_accuracy": float(test_acc),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
    )
)
