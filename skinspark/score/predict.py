"""Prediction on the Python workers: the model as a worker loads it, and the function that decodes a
batch of images and predicts it (the scoring job's and the UDF's)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import SparkSession

from skinspark import model_cache, schema
from skinspark import model_dir as model_dir_module
from skinspark import precision as precision_module
from skinspark.images import (
    batch_contents,
)
from skinspark.preprocess import ImageError, decode_noted, stored_pixels
from skinspark.score.columns import CONFIDENCE, ERROR, ERROR_REASON, NOTE, PATH, PREDICTED_LABEL
from skinspark.score.errors import ScoreError
from skinspark.session import task_cpus


def open_model(model_dir: str) -> tuple[str, str, dict]:
    """(absolute local path, model id, checked preprocessing spec) of a model directory to score with.

    Raises:
        ScoreError: not a local path, missing files, other labels, or a spec scoring cannot follow.
    """
    try:
        path = model_dir_module.local_path(model_dir)
        return path, model_dir_module.model_id(path), model_dir_module.read_model_spec(path)
    except model_dir_module.ModelDirError as error:
        raise ScoreError(str(error)) from None


def open_models(model_dirs: Sequence[str]) -> tuple[list[tuple[str, str]], str, dict]:
    """Open one model directory, or the members of an ensemble.

    Returns:
        The members as (absolute local path, model id), the id of the whole (the model's own for one
        model; `ensemble-<hash of the members' ids>` for several) and the preprocessing spec they share.

    Raises:
        ScoreError: no model, a bad directory (`open_model`), one given twice, or members that take
            different input (size or decoder): their probabilities could not be averaged per image.
    """
    if not model_dirs:
        raise ScoreError("give at least one model directory")
    opened = [open_model(directory) for directory in model_dirs]
    members = [(path, identifier) for path, identifier, _ in opened]
    if len({path for path, _ in members}) < len(members):
        raise ScoreError("an ensemble lists the same model directory twice")
    first_path, _, spec = opened[0]
    for path, _, other in opened[1:]:
        if other["labels"] != spec["labels"]:
            raise ScoreError(
                f"ensemble members must predict the same labels: {first_path} predicts {spec['labels']} "
                f"({spec['task']}), {path} predicts {other['labels']} ({other['task']})"
            )
        if other != spec:
            raise ScoreError(
                f"ensemble members must take the same input: {first_path} takes {_describe(spec)}, "
                f"{path} takes {_describe(other)} (ingest and train them at one size)"
            )
    if len(members) == 1:
        return members, members[0][1], spec
    digest = hashlib.sha256("+".join(identifier for _, identifier in members).encode()).hexdigest()
    return members, f"ensemble-{digest[:12]}", spec


def _describe(spec: dict) -> str:
    return f"{spec['width']}x{spec['height']} pixels decoded by {spec['decoder']}"


@dataclasses.dataclass(frozen=True)
class WorkerModel:
    """What a Python worker needs to load a model directory once and feed it the right pixels."""

    location: str  # the model directory, or a shipped archive (`sparkfiles:<name>.zip`)
    identifier: str  # model_id: a changed model under the same path is another cache entry
    threads: int  # TensorFlow's pools in each worker: the task's cores
    height: int
    width: int
    decoder: str
    precision: str = "auto"  # as requested: each worker resolves `auto` on its own CPU
    # The other models of an ensemble, (location, identifier) each: their probabilities and this one's
    # are averaged.
    others: tuple[tuple[str, str], ...] = ()
    ensemble_id: str | None = None  # the whole ensemble's id (`open_models`), written as `model_id`
    runtime: str = "keras"  # or "tflite": a directory holding a TensorFlow Lite export
    labels: tuple[str, ...] = schema.LABELS  # the model's output units, in order

    @property
    def model_id(self) -> str:
        """What the output's `model_id` column holds: the model's id, or the ensemble's."""
        return self.ensemble_id or self.identifier

    @classmethod
    def ship(
        cls, spark: SparkSession, model_dir: str, identifier: str, spec: dict, precision: str = "auto"
    ) -> WorkerModel:
        """Make the model reachable from every executor (`skinspark.model_dir.ship`) and describe it."""
        location = model_dir_module.ship(spark, model_dir, identifier)
        runtime = (
            "tflite"
            if model_dir_module.model_files(model_dir)[0] == model_dir_module.TFLITE_FILE
            else "keras"
        )
        return cls(
            location,
            identifier,
            task_cpus(spark),
            spec["height"],
            spec["width"],
            spec["decoder"],
            precision,
            runtime=runtime,
            labels=tuple(spec["labels"]),
        )

    @classmethod
    def ship_ensemble(
        cls,
        spark: SparkSession,
        members: Sequence[tuple[str, str]],
        ensemble_id: str,
        spec: dict,
        precision: str = "auto",
    ) -> WorkerModel:
        """The (model_dir, model_id) members of one preprocessing `spec`, each shipped: a worker averages
        their probabilities. One member is just that model."""
        first = cls.ship(spark, members[0][0], members[0][1], spec, precision)
        if len(members) == 1:
            return first
        others = tuple((model_dir_module.ship(spark, path, name), name) for path, name in members[1:])
        return dataclasses.replace(first, others=others, ensemble_id=ensemble_id)

    def local_dir(self) -> str:
        """The model directory on this worker's machine."""
        return model_dir_module.unpacked(self.location)

    def worker_precision(self) -> str:
        """The precision this worker predicts in: `precision` resolved on this machine's CPU ("tflite"
        for a TensorFlow Lite model, which computes as it was exported)."""
        if self.runtime == "tflite":
            return "tflite"
        return precision_module.resolve(self.precision)

    def loader(self, precision: str) -> Callable[[], object]:
        """Returns the model computing in `precision` (`worker_precision()`), loaded on this
        process's first call (`skinspark.model_cache`)."""
        location = self.local_dir()
        if not self.others:
            return functools.partial(
                model_cache.get_model, location, self.identifier, self.threads, precision
            )
        members = [(location, self.identifier)]
        members += [(model_dir_module.unpacked(where), name) for where, name in self.others]
        return functools.partial(_ensemble, members, self.threads, precision)


class Averaged:
    """Models of one label order and input whose probabilities are averaged, as one model."""

    def __init__(self, models: Sequence):
        self.models = list(models)

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        outputs = [np.asarray(model.predict_on_batch(pixels), dtype=np.float64) for model in self.models]
        return np.mean(outputs, axis=0)


def _ensemble(members: Sequence[tuple[str, str]], threads: int, precision: str) -> Averaged:
    model_cache.reserve(len(members))
    return Averaged([model_cache.get_model(path, name, threads, precision) for path, name in members])


def predict_frame(
    batch: pd.DataFrame,
    load_model: Callable[[], object],
    height: int,
    width: int,
    decoder: str = "simplejpeg",
    data_column: str = "content",
    raw_pixels: bool = False,
    passthrough: Sequence[str] = (PATH,),
    max_batch: int = 256,
    labels: Sequence[str] = schema.LABELS,
) -> pd.DataFrame:
    """Decode a batch of images and predict them, `max_batch` images per model call.

    The one prediction function of the scoring job and of `predict_udf`.

    Args:
        batch: rows with `data_column` (encoded file bytes, an `ImageError` for a file that could not
            be read, or raw pixels when `raw_pixels`; then also `height` and `width` columns) and the
            `passthrough` columns.
        load_model: returns the Keras model (uint8 pixels in, probabilities over `labels` out);
            called only when the batch has a decodable image.
        height, width, decoder: the model's preprocessing.
        raw_pixels: the data are stored pixels (the ingested table) instead of encoded files.
        passthrough: columns copied to the output unchanged.
        max_batch: the most images per `predict_on_batch` call (a SQL UDF's Arrow batch can hold
            10,000 rows, far more than a model call should take at once).
        labels: the model's output units (its task's labels).

    Returns:
        `passthrough` columns, `predicted_label` (nullable Int32), `confidence`, one `prob_<label>`
        per class (float32), `error_reason`, `error` and `note` (a multi-frame DICOM's first frame).
        A failed row has NaN (null in Spark) probabilities and its error.

    Raises:
        ValueError: the model's output is not one row of len(labels) probabilities per image.
    """
    count = len(batch)
    probabilities = np.full((count, len(labels)), np.nan, dtype=np.float32)
    reasons: list[str | None] = [None] * count
    errors: list[str | None] = [None] * count
    notes: list[str | None] = [None] * count
    pixels, decoded = [], []
    for index, data in enumerate(batch[data_column]):
        try:
            if isinstance(data, ImageError):
                raise data
            if raw_pixels:
                stored = (batch[schema.HEIGHT].iat[index], batch[schema.WIDTH].iat[index])
                pixels.append(_stored_pixels(data, *stored, height, width))
            else:
                image, notes[index] = decode_noted(data, height, width, decoder)
                pixels.append(image)
            decoded.append(index)
        except ImageError as error:
            reasons[index], errors[index] = error.reason, f"{error.reason}: {error.message}"
        except Exception as error:  # a decoder bug on one odd file must not stop the job
            reasons[index] = schema.REASON_UNDECODABLE
            errors[index] = f"{schema.REASON_UNDECODABLE}: {type(error).__name__}: {error}"
    if decoded:
        model = load_model()
        for start in range(0, len(decoded), max(1, max_batch)):
            rows = decoded[start : start + max(1, max_batch)]
            predicted = np.asarray(model.predict_on_batch(np.stack(pixels[start : start + len(rows)])))
            if predicted.shape != (len(rows), len(labels)):
                expected = (len(rows), len(labels))
                raise ValueError(f"model returned shape {predicted.shape}, expected {expected}")
            probabilities[rows] = predicted.astype(np.float32)
    failed = np.isnan(probabilities).any(axis=1)
    best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
    frame = pd.DataFrame({name: batch[name].to_numpy() for name in passthrough}, index=range(count))
    predicted_labels = [None if bad else int(label) for bad, label in zip(failed, best, strict=True)]
    frame[PREDICTED_LABEL] = pd.array(predicted_labels, dtype="Int32")
    frame[CONFIDENCE] = probabilities.max(axis=1)  # NaN (null) for a failed row
    for column, name in enumerate(f"prob_{label}" for label in labels):
        frame[name] = probabilities[:, column]
    frame[ERROR_REASON] = reasons
    frame[ERROR] = errors
    frame[NOTE] = notes
    return frame


def _stored_pixels(raw: bytes, stored_height, stored_width, height: int, width: int) -> np.ndarray:
    if (int(stored_height), int(stored_width)) != (height, width):
        raise ImageError(
            schema.REASON_UNDECODABLE,
            f"stored image is {stored_width}x{stored_height}, the model takes {width}x{height}",
        )
    return stored_pixels(raw, height, width)


class WorkerStats(AccumulatorParam):
    """Per Python worker ("host:pid"): (tasks run, times this process loaded the model, the precision
    it predicted in)."""

    def zero(self, value):
        return {}

    def addInPlace(self, total, update):
        for worker, (tasks, loads, precision) in update.items():
            seen_tasks, seen_loads, _ = total.get(worker, (0, 0, precision))
            total[worker] = (seen_tasks + tasks, max(seen_loads, loads), precision)
        return total


def score_partition(
    batches: Iterator[pd.DataFrame],
    *,
    model: WorkerModel,
    data_column: str,
    raw_pixels: bool,
    passthrough: Sequence[str],
    stats,
    reader: str | None = None,
    max_batch: int = 256,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the model comes from the worker's module-level cache, loaded on first use.

    With `reader` set, each batch holds files by `path`: their bytes are read here ("python") or
    come in Spark's `content` column ("spark").
    """
    chosen = model.worker_precision()  # once per task: the CPU's flags read and any warning given once
    load = model.loader(chosen)
    for batch in batches:
        if reader is not None:
            batch = batch.assign(**{data_column: list(batch_contents(batch, reader))})
        yield predict_frame(
            batch,
            load,
            model.height,
            model.width,
            model.decoder,
            data_column,
            raw_pixels,
            passthrough,
            max_batch,
            model.labels,
        )
    loads = model_cache.load_count(model.local_dir(), model.identifier, chosen)
    stats.add({f"{socket.gethostname()}:{os.getpid()}": (1, loads, chosen)})
