"""The classifier architectures behind `--model`: the paper's CNN and four ImageNet backbones.

`build_model` returns a plain Keras model that knows nothing of Horovod. Its input is the ingested
uint8 pixels; pixel scaling is the model's first layers (`Rescaling(1/255)` for the paper's CNN, each
backbone's own ImageNet preprocessing for the others), so training and scoring share it by construction
and no caller ever scales twice. Saving, loading and describing a trained model is `skinspark.model_dir`'s.

A backbone (`mobilenet_v2`, `resnet50`, `inception_v3`, `densenet201`, from `tf.keras.applications`)
gets a new head: global average pooling, dropout and a softmax layer. Its weights are random
(`weights="none"`) or come from a local file of Keras's "no top" ImageNet weights (`weights=PATH`, or
`weights="imagenet"` for the file in Keras's cache, `~/.keras/models`); nothing is downloaded, since
executors seldom reach the internet.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


class WeightsError(ValueError):
    """Weights that cannot be used: a missing file, ImageNet weights not downloaded, or weights asked
    of a model that has none to load."""


@dataclass(frozen=True)
class Backbone:
    """A `tf.keras.applications` network used as a feature extractor under a new head."""

    application: str  # the class in tf.keras.applications
    preprocessing: (
        str  # "tf": pixels to [-1, 1]; "caffe": BGR less the ImageNet mean; "torch": ImageNet mean/std
    )
    min_size: int  # the smallest height and width it accepts
    weights_file: str  # Keras's name for its no-top ImageNet weights
    weights_folder: str  # where that file sits under WEIGHTS_URL


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(
        "MobileNetV2",
        "tf",
        32,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "mobilenet_v2",
    ),
    "resnet50": Backbone(
        "ResNet50", "caffe", 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet"
    ),
    "inception_v3": Backbone(
        "InceptionV3", "tf", 75, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "inception_v3"
    ),
    "densenet201": Backbone(
        "DenseNet201", "torch", 32, "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet"
    ),
}
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications"
WEIGHT_CHOICES = ("none", "imagenet")  # or a path
# The paper's CNN: its unpadded convolutions and four poolings need at least this many pixels a side.
PAPER_CNN_MIN_SIZE = 46
BACKBONE_LAYER = "backbone"
# ImageNet statistics of the "caffe" (BGR means, 0..255) and "torch" (RGB, 0..1) preprocessing modes.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def min_input_size(name: str) -> int:
    """The smallest height and width `--model name` accepts."""
    return BACKBONES[name].min_size if name in BACKBONES else PAPER_CNN_MIN_SIZE


def imagenet_weights_path(name: str) -> Path:
    """Where Keras keeps the no-top ImageNet weights of backbone `name` (`$KERAS_HOME/models`)."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / BACKBONES[name].weights_file


def resolve_weights(name: str, weights: str | None) -> str | None:
    """The weights file to load into `--model name`, or None for random weights.

    `weights` is "none" (or None), "imagenet" (Keras's cached file) or a path. Raises WeightsError for
    a file that does not exist, ImageNet weights not yet downloaded (saying where to put them), or
    weights asked of the paper's CNN, which trains from scratch.
    """
    if weights in (None, "", "none"):
        return None
    if name not in BACKBONES:
        raise WeightsError(f"--weights {weights}: the {name} model trains from scratch; use --weights none")
    if weights == "imagenet":
        path = imagenet_weights_path(name)
        if not path.is_file():
            backbone = BACKBONES[name]
            raise WeightsError(
                f"ImageNet weights for {name} are not here and are never downloaded: fetch "
                f"{WEIGHTS_URL}/{backbone.weights_folder}/{backbone.weights_file} and pass --weights PATH, "
                f"or put it at {path}"
            )
        return str(path)
    if not Path(weights).is_file():
        raise WeightsError(f"--weights {weights}: no such file (a Keras no-top .h5 of {name}'s weights)")
    return str(weights)


def _preprocessing(kind: str, x):
    """The backbone's ImageNet pixel preprocessing as layers, computed in float32."""
    import numpy as np
    import tensorflow as tf

    layers = tf.keras.layers
    if kind == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype="float32", name="to_unit_range")(x)
    if kind == "caffe":
        x = layers.Rescaling(1.0, dtype="float32", name="to_float")(x)
        # RGB to BGR and the ImageNet mean removed, as one fixed linear map on the channel axis.
        swap = layers.Dense(3, trainable=False, dtype="float32", name="bgr_less_mean")
        x = swap(x)
        swap.set_weights([np.eye(3, dtype=np.float32)[::-1], -np.asarray(CAFFE_BGR_MEAN, dtype=np.float32)])
        return x
    x = layers.Rescaling(1.0 / 255, dtype="float32", name="rescaling")(x)
    variance = [value * value for value in TORCH_STD]
    return layers.Normalization(
        mean=TORCH_MEAN, variance=variance, dtype="float32", name="imagenet_normalization"
    )(x)


def backbone_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, dropout: float, weights: str | None = None
) -> tf.keras.Model:
    """Backbone `name` of `BACKBONES` under a new head, its weights from the file `weights` or random.

    The backbone runs in inference mode (`training=False`), so its batch-normalisation statistics stay
    those it was built or pretrained with, as Keras's transfer-learning guide does; its layers train
    unless frozen (see `set_trainable_layers`).
    """
    import tensorflow as tf

    spec = BACKBONES[name]
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape, dtype="uint8", name="pixels")
    x = _preprocessing(spec.preprocessing, inputs)
    application = getattr(tf.keras.applications, spec.application)
    network = application(include_top=False, weights=weights, input_shape=input_shape)
    network._name = BACKBONE_LAYER
    x = network(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name=name)


def set_trainable_layers(model: tf.keras.Model, top_layers: int | None) -> None:
    """Freeze a backbone model's backbone (`top_layers=0`), let only its top `top_layers` layers train,
    or all of them (`None`); the head always trains. The model must be compiled again afterwards."""
    network = model.get_layer(BACKBONE_LAYER)
    network.trainable = top_layers != 0
    if top_layers:
        for index, layer in enumerate(network.layers):
            layer.trainable = index >= len(network.layers) - top_layers


# Architectures selectable with `--model`. Each builder takes (input_shape, num_classes, dropout) and
# returns an uncompiled model whose input is uint8 pixels and whose output is class probabilities.
MODELS: dict[str, Callable[..., tf.keras.Model]] = {
    "paper_cnn": paper_cnn,
    **{name: functools.partial(backbone_model, name) for name in BACKBONES},
}


def build_model(
    name: str = "paper_cnn",
    input_shape: tuple[int, int, int] = (75, 100, 3),
    num_classes: int = schema.NUM_CLASSES,
    dropout: float = 0.5,
    weights: str | None = None,
) -> tf.keras.Model:
    """Build an uncompiled classifier.

    Args:
        name: a key of `MODELS`.
        input_shape: (height, width, channels) of the uint8 input.
        num_classes: output units (softmax).
        dropout: dropout rate before the dense head.
        weights: for a backbone, "none" (random), "imagenet" (Keras's cached file) or a path to a
            no-top weights file; the paper's CNN takes "none" only.

    Returns:
        A plain `tf.keras.Model` (no Horovod, no optimizer).

    Raises:
        ValueError: an unknown model name, a dropout outside [0, 1), or an input smaller than the
            model accepts.
        WeightsError: weights that cannot be loaded (see `resolve_weights`).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    smallest = min_input_size(name)
    if min(input_shape[0], input_shape[1]) < smallest:
        raise ValueError(
            f"{name} needs images of at least {smallest}x{smallest}, got {input_shape[0]}x{input_shape[1]}: "
            "ingest again with larger --height/--width"
        )
    path = resolve_weights(name, weights)
    if name in BACKBONES:
        return backbone_model(name, tuple(input_shape), int(num_classes), float(dropout), path)
    return MODELS[name](tuple(input_shape), int(num_classes), float(dropout))
