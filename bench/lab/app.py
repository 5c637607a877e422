"""The lab's Exercise 4 server, as written: Flask loads the Keras model once and calls
``model.predict`` for every request to ``/predict``.

Body: ``{"image": [784 numbers in [0, 1]]}``. Run: MODEL_PATH=... PORT=... python app.py
"""

import os

import numpy as np
from flask import Flask, jsonify, request
from tensorflow import keras

app = Flask(__name__)
model = keras.models.load_model(os.environ.get("MODEL_PATH", "mnist_model.keras"))


@app.route("/predict", methods=["POST"])
def predict():
    data = request.get_json()
    image = np.array(data["image"], dtype="float32").reshape(1, 784)
    prediction = model.predict(image)
    digit = int(np.argmax(prediction))
    return jsonify({"digit": digit, "confidence": float(prediction[0][digit])})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
