"""The classifier architectures behind `--model`.

`build_model` returns a plain Keras model that knows nothing of Horovod. Its input is the ingested
uint8 pixels; pixel scaling (`Rescaling(1/255)`) is the model's first layer, so training and scoring
share it by construction and no caller ever scales twice. Saving, loading and describing a trained
model is `skinspark.model_dir`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from skinspark import schema

if TYPE_CHECKING:  # TensorFlow is imported where a model is built
    import tensorflow as tf


def paper_cnn(input_shape: tuple[int, int, int], num_classes: int, dropout: float) -> tf.keras.Model:
    """The CNN of Benbrahim et al. (2020), Table 6.1: 788,551 parameters for 75x100x3 and 7 classes.

    Convolutions are unpadded ("valid"): the table prints 75x100 for the first one's output, but its
    next row (36x49) and its parameter count only fit 73x98.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape, dtype="uint8", name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    for index, filters in enumerate((64, 64, 128, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="valid", activation="relu", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(512, activation="relu", name="dense")(x)
    # float32 even under a mixed precision policy: the softmax is computed, and sums to 1, in full precision.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name="paper_cnn")


# Architectures selectable with `--model`. Each builder takes (input_shape, num_classes, dropout) and
# returns an uncompiled model whose input is uint8 pixels and whose output is class probabilities.
MODELS: dict[str, Callable[[tuple[int, int, int], int, float], tf.keras.Model]] = {
    "paper_cnn": paper_cnn,
}


def build_model(
    name: str = "paper_cnn",
    input_shape: tuple[int, int, int] = (75, 100, 3),
    num_classes: int = schema.NUM_CLASSES,
    dropout: float = 0.5,
) -> tf.keras.Model:
    """Build an uncompiled classifier.

    Args:
        name: a key of `MODELS`.
        input_shape: (height, width, channels) of the uint8 input.
        num_classes: output units (softmax).
        dropout: dropout rate before the dense head.

    Returns:
        A plain `tf.keras.Model` (no Horovod, no optimizer).

    Raises:
        ValueError: an unknown model name, or a dropout outside [0, 1).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return MODELS[name](tuple(input_shape), int(num_classes), float(dropout))
