"""The five tutorials in Keras, written once from their published recipes, for the benchmarks that run
Keras beside mnist_lit (vs_keras, onednn_vs_keras).

Layers, optimizer by name with Keras' defaults, epochs, batch size and loss, as each tutorial gives them.
This module imports Keras and nothing of torch or mnist_lit: it runs in the benchmarks' Keras processes,
often under another environment's Python (`--keras-python`), and only there.
"""

from __future__ import annotations

import keras
from keras import layers


def model(name: str) -> keras.Sequential:
    """The tutorial's network, built under the global mixed-precision policy already set. Its output layer
    stays float32 under a mixed policy, as Keras' guide advises."""
    out = dict(dtype="float32")
    if name == "cnn":
        return keras.Sequential([keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(500, activation="relu"),
            layers.Dense(10, activation="softmax", **out)])
    if name == "dense512":
        return keras.Sequential([keras.Input((28, 28)), layers.Flatten(), layers.Dense(512, activation="relu"),
                                 layers.Dense(10, activation="softmax", **out)])
    if name == "tiny_mlp":
        return keras.Sequential([keras.Input((28, 28)), layers.Flatten(), layers.Dense(16, activation="relu"),
                                 layers.Dense(16, activation="relu"), layers.Dropout(0.2),
                                 layers.Dense(10, activation="softmax", **out)])
    if name == "fashion_mlp":
        return keras.Sequential([keras.Input((28, 28)), layers.Flatten(), layers.Dense(128, activation="relu"),
                                 layers.Dense(10, **out)])
    if name == "softmax_regression":
        return keras.Sequential([keras.Input((28, 28)), layers.Flatten(),
                                 layers.Dense(10, activation="softmax", kernel_initializer="zeros", **out)])
    raise ValueError(f"no Keras recipe for {name!r}")


def recipe(name: str, test: tuple) -> dict:
    """`model.fit` arguments, with the optimizer (under "optimizer", for `compile`). tiny_mlp validates on
    the test set, `test` (images, labels), each epoch. softmax_regression runs 2000 steps of batch 64, as
    the TF1 tutorial did, which the caller sets up (it needs `tf.data`)."""
    if name == "softmax_regression":
        return dict(optimizer=keras.optimizers.SGD(0.001), batch_size=64)
    return {"cnn": dict(optimizer="rmsprop", epochs=10, batch_size=128),
            "dense512": dict(optimizer="rmsprop", epochs=5, batch_size=128),
            "tiny_mlp": dict(optimizer="adam", epochs=20, batch_size=32, validation_data=test),
            "fashion_mlp": dict(optimizer="adam", epochs=10, batch_size=32)}[name]


def loss(name: str) -> keras.losses.Loss:
    """fashion_mlp's network ends in logits; softmax_regression sums its loss over the batch, as TF1's did."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=name == "fashion_mlp",
        reduction="sum" if name == "softmax_regression" else "sum_over_batch_size")
