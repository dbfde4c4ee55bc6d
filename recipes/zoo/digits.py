"""Small CNNs for scikit-learn's 8x8 digits, one per framework, used by the example recipes.

Inputs are pixel values divided by 16 (so 0..1): NCHW (N, 1, 8, 8) for torch and NHWC
(N, 8, 8, 1) for Keras, each framework's native layout.
"""

from __future__ import annotations

from typing import Any

NUM_CLASSES = 10


def digits_cnn() -> Any:
    """A torch CNN taking (N, 1, 8, 8) float pixels and returning (N, 10) logits."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


def digits_keras() -> Any:
    """The same network in Keras 3, taking (N, 8, 8, 1) float pixels and returning logits."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="pixels"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, name="logits"),
        ],
        name="digits_keras",
    )
