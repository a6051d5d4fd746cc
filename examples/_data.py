"""Shared by the examples: scikit-learn's bundled digits (8x8 images, 10 classes), no download."""
from __future__ import annotations

import numpy as np


def digits(train_samples: int | None = None, val_samples: int = 200, seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]  # (n, 8, 8, 1) in [0, 1]
    y = d.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    xv, yv = x[:val_samples], y[:val_samples]
    xt, yt = x[val_samples:], y[val_samples:]
    if train_samples:
        xt, yt = xt[:train_samples], yt[:train_samples]
    return (xt, yt), (xv, yv), [str(i) for i in range(10)]


def small_cnn(keras, filters: int = 8):
    return keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Conv2D(filters, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def hold(step: int, at: int | None) -> None:
    """Test hook: at step ``at``, say so and block until stdin closes or gets a line.

    Lets a test SIGKILL training at a known point without sleeping.
    """
    if at is not None and step == at:
        import sys

        print(f"HOLD {step}", flush=True)
        sys.stdin.readline()
