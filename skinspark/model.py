"""The classifier and its self-describing model directory.

`build_model` returns a plain Keras model that knows nothing of Horovod. Its input is the ingested
uint8 pixels; pixel scaling (`Rescaling(1/255)`) is the model's first layer, so training and scoring
share it by construction and no caller ever scales twice.

A model directory holds everything scoring needs (see `save_model_dir`):

    model.keras            Keras native format (weights and architecture, no optimizer)
    labels.json            {"labels": [...schema.LABELS], "names": {label: long name}}
    preprocessing.json     {"height", "width", "channels", "input_dtype", "pixel_scaling", "decoder"}
    _config.yaml           the resolved training config
    ingest_manifest.json   the manifest of the ingested table the model was trained on
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinspark import schema

if TYPE_CHECKING:  # TensorFlow is imported where a model is built or loaded, not to read the JSON files
    import tensorflow as tf

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
CONFIG_FILE = "_config.yaml"
INGEST_MANIFEST_FILE = "ingest_manifest.json"
PIXEL_SCALING = "model: Rescaling(1/255)"


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
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
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


def local_path(path: str) -> str:
    """A model directory as a local path: `file:` URIs are accepted, other schemes are not.

    Raises:
        ValueError: a non-local URI (hdfs:, s3a:, ...): Keras and checkpoints write with plain file I/O.
    """
    if path.startswith("file://"):
        return path[len("file://") :]
    if path.startswith("file:"):
        return path[len("file:") :]
    if "://" in path:
        raise ValueError(f"the model directory must be a local or shared (mounted) path, got {path!r}")
    return path


def preprocessing_spec(height: int, width: int, decoder: str) -> dict[str, Any]:
    """What scoring must do to a raw image before `model.predict` (scaling is inside the model)."""
    return {
        "height": int(height),
        "width": int(width),
        "channels": 3,
        "input_dtype": "uint8",
        "pixel_scaling": PIXEL_SCALING,
        "decoder": decoder,
    }


def labels_spec() -> dict[str, Any]:
    """The model's output units: label codes in unit order and their long names."""
    return {"labels": list(schema.LABELS), "names": dict(schema.LABEL_NAMES)}


def save_model_dir(
    model: tf.keras.Model,
    model_dir: str,
    ingest_manifest: Mapping[str, Any],
    config_yaml: str,
) -> None:
    """Write the model and its description into `model_dir` (created if missing).

    Each file is written to a temporary name and renamed into place, so a reader sees either the
    previous file or the new one, never half of one.

    Args:
        model: the trained model (its optimizer, if any, is not saved).
        model_dir: a local or mounted directory.
        ingest_manifest: the `_manifest.json` of the ingested table (gives image shape and decoder).
        config_yaml: the resolved training config as YAML.
    """
    directory = Path(local_path(model_dir))
    directory.mkdir(parents=True, exist_ok=True)
    height, width, _ = ingest_manifest["image_shape"]
    decoder = ingest_manifest.get("config", {}).get("decoder", "simplejpeg")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".model-") as staging:
        staged = Path(staging) / MODEL_FILE
        model.save(staged)
        os.replace(staged, directory / MODEL_FILE)
    write_json_atomic(directory / LABELS_FILE, labels_spec())
    write_json_atomic(directory / PREPROCESSING_FILE, preprocessing_spec(height, width, decoder))
    write_json_atomic(directory / INGEST_MANIFEST_FILE, dict(ingest_manifest))
    write_text_atomic(directory / CONFIG_FILE, config_yaml)


def load_model(model_dir: str) -> tf.keras.Model:
    """Load the model saved by `save_model_dir` (uncompiled: for prediction).

    Raises:
        FileNotFoundError: `model_dir` has no model file.
    """
    import tensorflow as tf

    path = Path(local_path(model_dir)) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {model_dir}")
    return tf.keras.models.load_model(path, compile=False)


def read_preprocessing(model_dir: str) -> dict[str, Any]:
    """The preprocessing spec of a model directory: keys height, width, channels, input_dtype,
    pixel_scaling, decoder.

    Raises:
        FileNotFoundError: `model_dir` has no preprocessing.json.
    """
    return json.loads((Path(local_path(model_dir)) / PREPROCESSING_FILE).read_text())


def read_labels(model_dir: str) -> list[str]:
    """The model's output labels, in output-unit order."""
    return list(json.loads((Path(local_path(model_dir)) / LABELS_FILE).read_text())["labels"])


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file through a temporary sibling and a rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
