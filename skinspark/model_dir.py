"""The self-describing model directory: write it, read it, name it by its content, ship it.

A model directory holds everything scoring needs (see `save_model_dir`):

    model.keras            Keras native format (weights and architecture, no optimizer); or instead
    model.tflite           a TensorFlow Lite export of it (`jobs/export.py`), which scoring runs as well
    labels.json            {"task": "dx7" | "malignant", "labels": [...the task's output units],
                           "names": {label: long name}}
    preprocessing.json     {"height", "width", "channels", "input_dtype", "pixel_scaling", "decoder"}
    _config.yaml           the resolved training config
    ingest_manifest.json   the manifest of the ingested table the model was trained on

Every file name of a model directory is a constant here, and only here: training writes them, export
adds its own, scoring, tracking and the tools read them. (The records beside any job's output,
`_manifest.json` and `_config.yaml`, are named in `skinspark.manifest`.)

Reading the JSON files, hashing and shipping import no TensorFlow (the scoring driver never starts
it); only `save_model_dir` and `load_model` do.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark import SparkFiles
from pyspark.sql import SparkSession

from skinspark.manifest import CONFIG_FILE, staged, write_json_atomic, write_text_atomic
from skinspark.metrics import OPERATING_POINTS
from skinspark.preprocess import DECODERS
from skinspark.tasks import DX7, Task, task_of_labels

if TYPE_CHECKING:
    import tensorflow as tf

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
INGEST_MANIFEST_FILE = "ingest_manifest.json"
METRICS_FILE = "metrics.json"  # the test split's metrics, written by training
MODEL_FILES = (MODEL_FILE, LABELS_FILE, PREPROCESSING_FILE)  # what decides predictions: model_id hashes these
TFLITE_FILE = "model.tflite"
EXPORT_FILE = "export.json"  # an export's check against the Keras model (`skinspark.export`)
# Training's figures and plots of the test split.
HISTORY_FILE = "history.csv"
TEST_PREDICTIONS_FILE = "test_predictions.csv"
TRAINING_CURVES_FILE = "training_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
RELIABILITY_DIAGRAM_FILE = "reliability_diagram.png"
# A cross-validation's records, in the directory that holds its fold-k model directories.
CROSS_VALIDATION_JSON = "cross_validation.json"
CROSS_VALIDATION_CSV = "cross_validation.csv"
PIXEL_SCALING = "model: Rescaling(1/255)"
_SPARKFILES = "sparkfiles:"


class ModelDirError(ValueError):
    """A model directory that cannot be used: a missing file, other labels, an odd preprocessing spec."""


def local_path(path: str) -> str:
    """A model directory as an absolute local path: `file:` URIs are accepted, other schemes are not.

    Raises:
        ModelDirError: a non-local URI (hdfs:, s3a:, ...): Keras and checkpoints use plain file I/O.
    """
    if path.startswith("file:"):
        path = "/" + path[len("file:") :].lstrip("/")
    elif "://" in path:
        raise ModelDirError(f"the model directory must be a local or shared (mounted) path, got {path!r}")
    return str(Path(path).resolve())


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


def labels_spec(task: Task = DX7) -> dict[str, Any]:
    """The model's output units: its task, label codes in unit order and their long names."""
    return {"task": task.name, "labels": list(task.labels), "names": dict(task.names)}


def save_model_dir(
    model: tf.keras.Model,
    model_dir: str,
    ingest_manifest: Mapping[str, Any],
    config_yaml: str,
    task: Task = DX7,
) -> None:
    """Write the model and its description into `model_dir` (created if missing).

    Each file is written to a temporary name and renamed into place, so a reader sees either the
    previous file or the new one, never half of one.

    Args:
        model: the trained model (its optimizer, if any, is not saved).
        model_dir: a local or mounted directory.
        ingest_manifest: the `_manifest.json` of the ingested table (gives image shape and decoder).
        config_yaml: the resolved training config as YAML.
        task: what the model predicts (its output units, in labels.json).
    """
    directory = Path(local_path(model_dir))
    directory.mkdir(parents=True, exist_ok=True)
    height, width, _ = ingest_manifest["image_shape"]
    decoder = ingest_manifest.get("config", {}).get("decoder", "simplejpeg")
    with staged(directory / MODEL_FILE) as temporary:
        model.save(temporary)
    write_json_atomic(directory / LABELS_FILE, labels_spec(task))
    write_json_atomic(directory / PREPROCESSING_FILE, preprocessing_spec(height, width, decoder))
    write_json_atomic(directory / INGEST_MANIFEST_FILE, dict(ingest_manifest))
    write_text_atomic(directory / CONFIG_FILE, config_yaml)


def model_files(model_dir: str) -> tuple[str, ...]:
    """The files that decide a directory's predictions: MODEL_FILES, or model.tflite with the two JSON
    files where the directory holds a TensorFlow Lite export and no model.keras."""
    directory = Path(model_dir)
    if not (directory / MODEL_FILE).is_file() and (directory / TFLITE_FILE).is_file():
        return (TFLITE_FILE, LABELS_FILE, PREPROCESSING_FILE)
    return MODEL_FILES


def load_model(model_dir: str, threads: int = 1):
    """Load the model saved by `save_model_dir` (uncompiled: for prediction), or the `TFLiteModel` of a
    directory holding only model.tflite (its interpreter on `threads` threads).

    Raises:
        FileNotFoundError: `model_dir` has no model file.
    """
    import tensorflow as tf

    directory = Path(local_path(model_dir))
    if model_files(str(directory))[0] == TFLITE_FILE:
        return TFLiteModel(directory / TFLITE_FILE, threads)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {model_dir}")
    return tf.keras.models.load_model(path, compile=False)


class TFLiteModel:
    """A TensorFlow Lite model that predicts batches as a Keras model does (`predict_on_batch`)."""

    def __init__(self, path: str | Path | None = None, threads: int = 1, content: bytes | None = None):
        import tensorflow as tf

        source = {"model_content": content} if content is not None else {"model_path": str(path)}
        self.interpreter = tf.lite.Interpreter(num_threads=max(1, int(threads)), **source)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    def predict_on_batch(self, pixels):
        import numpy as np

        pixels = np.asarray(pixels, dtype=self.input["dtype"])
        if self._batch != len(pixels):  # the interpreter is sized for one batch length at a time
            self.interpreter.resize_tensor_input(self.input["index"], list(pixels.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(pixels)
        self.interpreter.set_tensor(self.input["index"], pixels)
        self.interpreter.invoke()
        values = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output.get("quantization", (0.0, 0))
        if np.issubdtype(values.dtype, np.integer) and scale:
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)


def read_preprocessing(model_dir: str) -> dict[str, Any]:
    """The preprocessing spec of a model directory as written (height, width, channels, input_dtype,
    pixel_scaling, decoder).

    Raises:
        FileNotFoundError: `model_dir` has no preprocessing.json.
    """
    return json.loads((Path(local_path(model_dir)) / PREPROCESSING_FILE).read_text())


def read_labels(model_dir: str) -> list[str]:
    """The model's output labels, in output-unit order."""
    return list(json.loads((Path(local_path(model_dir)) / LABELS_FILE).read_text())["labels"])


def read_model_spec(model_dir: str) -> dict:
    """The preprocessing spec, checked for what scoring can follow (height, width and channels as
    integers and a known decoder), with the model's `labels` and `task` added: labels of a known task
    (`skinspark.tasks`), in its order.

    Raises:
        ModelDirError: missing or unreadable files, labels of no task or in another order, or a spec
            scoring cannot follow.
    """
    try:
        spec = read_preprocessing(model_dir)
        labels = read_labels(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelDirError(f"cannot read the model directory {model_dir}: {error}") from None
    try:
        task = task_of_labels(labels)
    except ValueError as error:
        raise ModelDirError(f"{model_dir}: {error}") from None
    try:
        height, width, channels = int(spec["height"]), int(spec["width"]), int(spec.get("channels", 3))
    except (KeyError, TypeError, ValueError):
        raise ModelDirError(
            f"preprocessing.json in {model_dir} needs integer height and width: {spec}"
        ) from None
    decoder = spec.get("decoder", "simplejpeg")
    if channels != 3 or height <= 0 or width <= 0 or decoder not in DECODERS:
        raise ModelDirError(f"preprocessing.json in {model_dir} asks for what scoring cannot do: {spec}")
    spec.update(height=height, width=width, channels=channels, decoder=decoder)
    spec.update(labels=list(task.labels), task=task.name)
    return spec


def threshold_of(model_dir: str) -> float | None:
    """The operating threshold training fixed on its validation split (`metrics.json`): on P(mel) for
    the diagnoses, on P(malignant) for the benign/malignant task; None when the directory records none
    (an older model, or a validation split without that class)."""
    try:
        metrics = json.loads((Path(local_path(model_dir)) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    for key in OPERATING_POINTS.values():
        try:
            return float(metrics[key]["at_threshold"]["threshold"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def model_id(model_dir: str) -> str:
    """A 12-character hash of the files that decide predictions (model.keras, labels.json,
    preprocessing.json); plots, logs and checkpoints beside them do not change it.

    Raises:
        ModelDirError: one of those files is missing.
    """
    digest = hashlib.sha256()
    for name in model_files(model_dir):
        path = Path(model_dir) / name
        if not path.is_file():
            raise ModelDirError(f"model directory {model_dir} has no {name}")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def ship(spark: SparkSession, model_dir: str, identifier: str, to_executors: bool | None = None) -> str:
    """Where executors find the model: its own path on a local master (same machine), otherwise a zip
    of its three files shipped with `SparkContext.addArchive` and unpacked by every executor
    (`sparkfiles:<name>.zip`). Spark ships single files and archives to a cluster, not directories.

    Args:
        to_executors: ship even on a local master (True) or never (False); None decides by the master.

    Returns:
        A location for `unpacked` on a worker.
    """
    if to_executors is None:
        to_executors = not spark.sparkContext.master.startswith("local")
    if not to_executors:
        return model_dir
    name = f"skinspark-model-{identifier}.zip"  # the content hash: one name, one content
    archive = Path(tempfile.gettempdir()) / name
    if not archive.is_file():
        # Whole or absent, also when two jobs stage it at once.
        with staged(archive) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as bundle:
            for file_name in model_files(model_dir):
                bundle.write(Path(model_dir) / file_name, file_name)
    spark.sparkContext.addArchive(str(archive))
    return _SPARKFILES + name


def unpacked(location: str) -> str:
    """The model directory on this worker's machine, for a location `ship` returned."""
    return SparkFiles.get(location[len(_SPARKFILES) :]) if location.startswith(_SPARKFILES) else location
