"""Scoring: run a model directory over an archive of images (or the ingested table) on Spark.

The flow (the driver sees file names' hashes, counts and a few numbers per chunk; image bytes and
predictions stay on executors):

1. `skinspark.images.list_images`: Spark's `binaryFile` source, recursive, any-case .jpg/.jpeg/.png.
   Only the listing (path, length) is read to plan; `--table` reads the ingested Parquet instead.
   Zero-byte files, which Spark's file scans skip, are found by comparing the scan with the file index.
2. Planning: files already in the output (`--mode resume`) are flagged by a join on `path`; the rest
   are cut into chunks of about `chunk_files` files: ranges of a 64-bit hash of the file's path
   (xxhash64), split at approximate quantiles (`percentile_approx`). Each chunk's hash range is a
   filter on the `_metadata.file_path` column, which Spark applies to its file listing, so a chunk's
   query opens only that chunk's files.
3. Each chunk: `mapInPandas` over Arrow batches of `batch_size` paths; the Python worker reads each
   file itself (`reader: python`; or Spark ships its bytes in `content`, `reader: spark`), decodes with
   `skinspark.preprocess.decode_image` (the path training used) and predicts the whole batch with one
   model call. The model is loaded once per Python worker process (`skinspark.model_cache`). Files
   over `max_image_bytes` are never read (the `length` filter is pushed into binaryFile); they and
   undecodable or vanished files become rows with an error.
4. Commit: the chunk is written as Parquet into a hidden staging directory inside the output and
   renamed to `chunk=NNNNNN/`. A reader (and `--mode resume`) sees whole chunks or nothing, so a kill
   loses at most the chunk in flight.
5. The manifest (`_manifest.json`: counts over the whole output, this run's speed, model id, config,
   versions) and, for a labelled table, `_metrics.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import SparkFiles, StorageLevel
from pyspark.accumulators import AccumulatorParam
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import model_cache, schema, storage
from skinspark.config import ScoreConfig
from skinspark.errors import first_line
from skinspark.images import (
    CONTENT,
    IMAGE_KINDS,
    batch_contents,
    image_id_column,
    list_images,
    read_columns,
    read_files,
    resolve_reader,
    scan_settings,
)
from skinspark.preprocess import DECODERS, ImageError, decode_image, pixels_from_bytes
from skinspark.session import query_settings, task_cpus
from skinspark.versions import package_versions

MODES = ("overwrite", "resume")
MODEL_FILES = ("model.keras", "labels.json", "preprocessing.json")  # what model_id hashes
MANIFEST_FILE = "_manifest.json"
CONFIG_FILE = "_config.yaml"
METRICS_FILE = "_metrics.json"
CHUNK = "chunk"  # the partition column of the output: one directory per committed chunk

PATH = "path"
PREDICTED_DX = "predicted_dx"
PREDICTED_LABEL = "predicted_label"
CONFIDENCE = "confidence"
MODEL_ID = "model_id"
SCORED_AT = "scored_at"
ERROR_REASON = "error_reason"  # a schema.REASON_* code, or null
ERROR = "error"  # "reason: message", or null
LABEL_COLUMNS = (schema.DX, schema.LABEL, schema.SPLIT)  # carried through from a labelled table

_KEY = "_key"
_DONE = "_done"
_SPARKFILES = "sparkfiles:"

# What the scoring function returns for each row (then `image_id`, `model_id`, `scored_at` are added).
_PREDICTION_FIELDS = [
    T.StructField(PREDICTED_LABEL, T.IntegerType(), True),
    T.StructField(CONFIDENCE, T.FloatType(), True),
    *[T.StructField(name, T.FloatType(), True) for name in schema.PROB_COLUMNS],
    T.StructField(ERROR_REASON, T.StringType(), True),
    T.StructField(ERROR, T.StringType(), True),
]


class ScoreError(RuntimeError):
    """A problem that stops the whole job (bad model directory, missing input, a foreign output).

    The message is one line meant for the person running the job.
    """


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """What `score` wrote and counted."""

    output: str
    manifest: dict

    @property
    def ok(self) -> bool:
        return self.manifest["status"] == "complete"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A range of path hashes holding `files` files still to score and `done` already scored."""

    low: int
    high: int
    files: int
    done: int = 0


def output_columns(labelled: bool = False) -> list[str]:
    """The output table's columns, in order (reading the directory adds the partition column `chunk`)."""
    carried = list(LABEL_COLUMNS) if labelled else []
    return [
        PATH,
        schema.IMAGE_ID,
        *carried,
        PREDICTED_DX,
        *[f.name for f in _PREDICTION_FIELDS[:-2]],
        MODEL_ID,
        SCORED_AT,
        ERROR_REASON,
        ERROR,
    ]


# --------------------------------------------------------------------------------------------------
# The model directory


def model_id(model_dir: str) -> str:
    """A 12-character hash of the files that decide predictions (model.keras, labels.json,
    preprocessing.json); plots, logs and checkpoints beside them do not change it.

    Raises:
        ScoreError: one of those files is missing.
    """
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            raise ScoreError(f"model directory {model_dir} has no {name}")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def read_model_spec(model_dir: str) -> dict:
    """The model's preprocessing (height, width, decoder) and labels, checked against the schema.

    Raises:
        ScoreError: missing or unreadable files, labels other than schema.LABELS in that order, or a
            preprocessing spec scoring cannot follow.
    """
    # Read as plain JSON (the files skinspark.model.save_model_dir writes): importing skinspark.model
    # would start TensorFlow in the driver, which only the Python workers need.
    try:
        spec = json.loads((Path(model_dir) / "preprocessing.json").read_text())
        labels = list(json.loads((Path(model_dir) / "labels.json").read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ScoreError(f"cannot read the model directory {model_dir}: {error}") from None
    if tuple(labels) != schema.LABELS:
        raise ScoreError(f"model labels {labels} differ from {list(schema.LABELS)} (order matters)")
    try:
        height, width, channels = int(spec["height"]), int(spec["width"]), int(spec.get("channels", 3))
    except (KeyError, TypeError, ValueError):
        raise ScoreError(
            f"preprocessing.json in {model_dir} needs integer height and width: {spec}"
        ) from None
    decoder = spec.get("decoder", "simplejpeg")
    if channels != 3 or height <= 0 or width <= 0 or decoder not in DECODERS:
        raise ScoreError(f"preprocessing.json in {model_dir} asks for what scoring cannot do: {spec}")
    spec.update(height=height, width=width, channels=channels, decoder=decoder)
    return spec


def _local_dir(model_dir: str) -> str:
    """The model directory as an absolute local path; `file:` URIs are accepted, other schemes not
    (as `skinspark.model.local_path`, without importing TensorFlow into the driver)."""
    if model_dir.startswith("file:"):
        model_dir = "/" + model_dir[len("file:") :].lstrip("/")
    elif "://" in model_dir:
        raise ScoreError(f"the model directory must be a local or shared (mounted) path, got {model_dir!r}")
    return str(Path(model_dir).resolve())


def _model_location(spark: SparkSession, model_dir: str, identifier: str, ship: bool | None = None) -> str:
    """Where executors find the model: its own path on a local master (same machine), otherwise a zip
    of its three files shipped with `SparkContext.addArchive` and unpacked by every executor
    (`sparkfiles:<name>.zip`). Spark ships single files and archives to a cluster, not directories."""
    if ship is None:
        ship = not spark.sparkContext.master.startswith("local")
    if not ship:
        return model_dir
    name = f"skinspark-model-{identifier}.zip"  # the content hash: one name, one content
    archive = Path(tempfile.gettempdir()) / name
    if not archive.is_file():
        with tempfile.TemporaryDirectory(prefix=".skinspark-model-", dir=archive.parent) as staging:
            staged = Path(staging) / name
            with zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED) as bundle:
                for file_name in MODEL_FILES:
                    bundle.write(Path(model_dir) / file_name, file_name)
            os.replace(staged, archive)  # whole or absent, also when two jobs stage it at once
    spark.sparkContext.addArchive(str(archive))
    return _SPARKFILES + name


def _local_model_dir(location: str) -> str:
    return SparkFiles.get(location[len(_SPARKFILES) :]) if location.startswith(_SPARKFILES) else location


@dataclasses.dataclass(frozen=True)
class WorkerModel:
    """What a Python worker needs to load a model directory once and feed it the right pixels."""

    location: str  # the model directory, or a shipped archive (`sparkfiles:<name>.zip`)
    identifier: str  # model_id: a changed model under the same path is another cache entry
    threads: int  # TensorFlow's pools in each worker: the task's cores
    height: int
    width: int
    decoder: str

    @classmethod
    def ship(cls, spark: SparkSession, model_dir: str, identifier: str, spec: dict) -> WorkerModel:
        """Make the model reachable from every executor (`_model_location`) and describe it."""
        location = _model_location(spark, model_dir, identifier)
        return cls(location, identifier, task_cpus(spark), spec["height"], spec["width"], spec["decoder"])

    def local_dir(self) -> str:
        """The model directory on this worker's machine."""
        return _local_model_dir(self.location)

    def loader(self) -> Callable[[], object]:
        """Returns the model, loaded on this process's first call (`skinspark.model_cache`)."""
        return functools.partial(model_cache.get_model, self.local_dir(), self.identifier, self.threads)


# --------------------------------------------------------------------------------------------------
# Predicting one batch (plain pandas: testable without Spark)


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
) -> pd.DataFrame:
    """Decode a batch of images and predict them, `max_batch` images per model call.

    The one prediction function of the scoring job and of `predict_udf`.

    Args:
        batch: rows with `data_column` (encoded file bytes, an `ImageError` for a file that could not
            be read, or raw pixels when `raw_pixels`; then also `height` and `width` columns) and the
            `passthrough` columns.
        load_model: returns the Keras model (uint8 pixels in, probabilities over schema.LABELS out);
            called only when the batch has a decodable image.
        height, width, decoder: the model's preprocessing.
        raw_pixels: the data are stored pixels (the ingested table) instead of encoded files.
        passthrough: columns copied to the output unchanged.
        max_batch: the most images per `predict_on_batch` call (a SQL UDF's Arrow batch can hold
            10,000 rows, far more than a model call should take at once).

    Returns:
        `passthrough` columns, `predicted_label` (nullable Int32), `confidence`, one `prob_<label>`
        per class (float32), `error_reason` and `error`. A failed row has NaN (null in Spark)
        probabilities and its error.

    Raises:
        ValueError: the model's output is not one row of NUM_CLASSES probabilities per image.
    """
    count = len(batch)
    probabilities = np.full((count, schema.NUM_CLASSES), np.nan, dtype=np.float32)
    reasons: list[str | None] = [None] * count
    errors: list[str | None] = [None] * count
    pixels, decoded = [], []
    for index, data in enumerate(batch[data_column]):
        try:
            if isinstance(data, ImageError):
                raise data
            if raw_pixels:
                stored = (batch[schema.HEIGHT].iat[index], batch[schema.WIDTH].iat[index])
                pixels.append(_stored_pixels(data, *stored, height, width))
            else:
                pixels.append(decode_image(data, height, width, decoder))
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
            if predicted.shape != (len(rows), schema.NUM_CLASSES):
                expected = (len(rows), schema.NUM_CLASSES)
                raise ValueError(f"model returned shape {predicted.shape}, expected {expected}")
            probabilities[rows] = predicted.astype(np.float32)
    failed = np.isnan(probabilities).any(axis=1)
    best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
    frame = pd.DataFrame({name: batch[name].to_numpy() for name in passthrough}, index=range(count))
    labels = [None if bad else int(label) for bad, label in zip(failed, best, strict=True)]
    frame[PREDICTED_LABEL] = pd.array(labels, dtype="Int32")
    frame[CONFIDENCE] = probabilities.max(axis=1)  # NaN (null) for a failed row
    for column, name in enumerate(schema.PROB_COLUMNS):
        frame[name] = probabilities[:, column]
    frame[ERROR_REASON] = reasons
    frame[ERROR] = errors
    return frame


def _stored_pixels(raw: bytes, stored_height, stored_width, height: int, width: int) -> np.ndarray:
    if (int(stored_height), int(stored_width)) != (height, width):
        raise ImageError(
            schema.REASON_UNDECODABLE,
            f"stored image is {stored_width}x{stored_height}, the model takes {width}x{height}",
        )
    size = 0 if raw is None else len(raw)
    if size != height * width * 3:
        raise ImageError(
            schema.REASON_TRUNCATED, f"stored pixels are {size} bytes, expected {height * width * 3}"
        )
    return pixels_from_bytes(raw, height, width)


# --------------------------------------------------------------------------------------------------
# A UDF for people who score inside their own Spark code

PREDICTION_STRUCT = T.StructType(
    [
        T.StructField(PREDICTED_DX, T.StringType(), True),
        T.StructField(CONFIDENCE, T.FloatType(), True),
        *[T.StructField(name, T.FloatType(), True) for name in schema.PROB_COLUMNS],
        T.StructField(ERROR_REASON, T.StringType(), True),
        T.StructField(ERROR, T.StringType(), True),
    ]
)
UDF_NAME = "skinspark_predict"


def predict_udf(model_dir: str, batch_size: int = 256, spark: SparkSession | None = None):
    """An iterator pandas UDF that scores a column of image paths or of encoded image bytes.

        predict = predict_udf("out/model")
        files = spark.read.format("binaryFile").load("archive/").select("path")
        files.select("path", predict("path").alias("p")).select("path", "p.predicted_dx", "p.confidence")

    A string value is a path (`file:/a.jpg`, `/a.jpg`, `hdfs://...`, `s3a://...`), read in the Python
    worker; a binary value is the file's bytes (e.g. `binaryFile`'s `content`). The model is loaded
    once per Python worker and reused by every later batch and task; each call predicts at most
    `batch_size` images at once. The scoring job predicts with the same function (`predict_frame`).

    Returns:
        A UDF returning a struct of `predicted_dx`, `confidence`, the 7 `prob_<label>` columns,
        `error_reason` and `error` (predictions null and the reason set for a file that cannot be
        read or decoded).

    Raises:
        ScoreError: no active session, or a bad model directory.
    """
    spark = spark or SparkSession.getActiveSession()
    if spark is None:
        raise ScoreError("predict_udf needs an active SparkSession")
    model_dir = _local_dir(model_dir)
    identifier = model_id(model_dir)
    spec = read_model_spec(model_dir)
    model = WorkerModel.ship(spark, model_dir, identifier, spec)
    batch_size = max(1, int(batch_size))

    def skinspark_predict(values: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from predict_series(values, model, batch_size)

    return F.pandas_udf(skinspark_predict, PREDICTION_STRUCT)


def register_predict_udf(spark: SparkSession, model_dir: str, name: str = UDF_NAME, batch_size: int = 256):
    """Register `predict_udf(model_dir)` for Spark SQL: `SELECT skinspark_predict(path) FROM files`.

    Returns:
        The UDF, for DataFrame code too.
    """
    udf = predict_udf(model_dir, batch_size, spark)
    spark.udf.register(name, udf)
    return udf


def predict_series(
    values: Iterator[pd.Series], model: WorkerModel, batch_size: int
) -> Iterator[pd.DataFrame]:
    """The UDF's body: paths are read here, bytes taken as they are, `batch_size` rows at a time."""
    load = model.loader()
    for series in values:
        parts = []
        for start in range(0, len(series), batch_size):
            contents = _udf_contents(series.iloc[start : start + batch_size])
            frame = predict_frame(
                pd.DataFrame({CONTENT: contents}),
                load,
                model.height,
                model.width,
                model.decoder,
                CONTENT,
                passthrough=(),
            )
            labels = frame[PREDICTED_LABEL]
            frame[PREDICTED_DX] = [None if pd.isna(label) else schema.LABELS[int(label)] for label in labels]
            parts.append(frame[PREDICTION_STRUCT.fieldNames()])
        yield (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame({name: [] for name in PREDICTION_STRUCT.fieldNames()})
        )


def _udf_contents(values: pd.Series) -> list:
    paths = [value for value in values if isinstance(value, str)]
    read = iter(read_files(paths))
    contents = []
    for value in values:
        if isinstance(value, str):
            contents.append(next(read))
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            contents.append(ImageError(schema.REASON_EMPTY, "no image: the value is null"))
        else:
            contents.append(bytes(value))
    return contents


class _WorkerStats(AccumulatorParam):
    """Per Python worker ("host:pid"): [tasks run, times this process loaded the model]."""

    def zero(self, value):
        return {}

    def addInPlace(self, total, update):
        for worker, (tasks, loads) in update.items():
            seen_tasks, seen_loads = total.get(worker, (0, 0))
            total[worker] = (seen_tasks + tasks, max(seen_loads, loads))
        return total


def _score_partition(
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
    load = model.loader()
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
        )
    loads = model_cache.load_count(model.local_dir(), model.identifier)
    stats.add({f"{socket.gethostname()}:{os.getpid()}": (1, loads)})


# --------------------------------------------------------------------------------------------------
# Inputs


class _Source:
    """One kind of input: its narrow listing (`path`, `_key`) and the scored rows of one chunk."""

    labelled = False
    reader: str | None = None  # who reads each file's bytes; None for stored pixels

    def listing(self) -> DataFrame:
        raise NotImplementedError

    def find_empty_files(self, scanned: int) -> int:
        """Add rows Spark's scan skips (zero-byte files) to `listing`; returns how many."""
        return 0

    def complete_chunk(self, staging: str, chunk: Chunk, done: DataFrame | None) -> DataFrame | None:
        """Rows the chunk written to `staging` is missing (files gone since the listing), or None."""
        return None

    def chunk(self, chunk: Chunk, done: DataFrame | None, udf_args: dict) -> DataFrame:
        """Rows of the files in `chunk`'s key range, minus `done` paths when given, scored."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop anything cached for the run."""


class _ImageFiles(_Source):
    """Files listed with binaryFile and read by `reader`. The key hashes `_metadata.file_path`, a
    column Spark evaluates against its file listing, so a chunk's key range prunes the files a chunk's
    query opens."""

    def __init__(self, frame: DataFrame, max_image_bytes: int, reader: str):
        self.frame = frame
        self.key = F.xxhash64(F.col("_metadata.file_path"))
        self.max_image_bytes = max_image_bytes
        self.reader = reader
        self.empty: DataFrame | None = None

    def listing(self) -> DataFrame:
        listing = self.frame.select(PATH, self.key.alias(_KEY))
        return listing if self.empty is None else listing.unionByName(self.empty.select(PATH, _KEY))

    def find_empty_files(self, scanned: int) -> int:
        """Find zero-byte files: Spark's file index lists them but its scans skip them, so without
        this they would have no row. Only when the listing holds more files than the scan returned
        (`scanned`) is the listing turned into rows (in the JVM: the paths never reach Python).

        Returns:
            The number of zero-byte files, which `listing` and `chunk` then include.
        """
        listed = self.frame._jdf.inputFiles()
        if len(listed) <= scanned:
            return 0
        scan = self.frame.select(F.col("_metadata.file_path").alias("file_path"))
        empty = self._index(listed).join(scan.select(self.key.alias(_KEY)), _KEY, "left_anti")
        self.empty = empty.persist()
        return self.empty.count()

    def _index(self, listed=None) -> DataFrame:
        """`path` and `_key` of every file in Spark's file index, built in the JVM (the paths never
        reach Python): the scan skips zero-byte files and files gone since the listing; the index
        still holds them."""
        listed = self.frame._jdf.inputFiles() if listed is None else listed
        spark = self.frame.sparkSession
        every = Column(spark._jvm.org.apache.spark.sql.functions.lit(listed))
        # The index writes `file:///a`, the scan `file:/a`; both are URI-encoded.
        file_path = F.regexp_replace("file_path", r"^([A-Za-z][A-Za-z0-9+.-]*):///", "$1:/")
        decoded = F.call_function(
            "reflect",
            F.lit("java.net.URLDecoder"),
            F.lit("decode"),
            F.regexp_replace("file_path", r"\+", "%2B"),
            F.lit("UTF-8"),
        )
        return (
            spark.range(1)
            .select(F.explode(every).alias("file_path"))
            .select(file_path.alias("file_path"))
            .select(decoded.alias(PATH), F.xxhash64("file_path").alias(_KEY))
        )

    def release(self) -> None:
        if self.empty is not None:
            self.empty.unpersist()

    def chunk(self, chunk, done, udf_args):
        selection = self.frame.where(self.key.between(chunk.low, chunk.high))
        # binaryFile pushes the length filter down: oversized files are listed but never opened.
        columns = read_columns(self.reader)
        readable = selection.where(F.col("length") <= self.max_image_bytes).select(*columns)
        too_large = selection.where(F.col("length") > self.max_image_bytes).select(PATH, "length")
        empty = None
        if self.empty is not None:
            empty = self.empty.where(F.col(_KEY).between(chunk.low, chunk.high)).select(PATH)
        if done is not None:
            readable = readable.join(done, PATH, "left_anti")
            too_large = too_large.join(done, PATH, "left_anti")
            empty = None if empty is None else empty.join(done, PATH, "left_anti")
        predictions = readable.mapInPandas(
            functools.partial(
                _score_partition,
                data_column=CONTENT,
                raw_pixels=False,
                passthrough=[PATH],
                reader=self.reader,
                **udf_args,
            ),
            T.StructType([T.StructField(PATH, T.StringType(), False), *_PREDICTION_FIELDS]),
        )
        limit = f"file is %d bytes, over the {self.max_image_bytes:,}-byte limit (max_image_bytes)"
        rows = predictions.unionByName(
            _error_rows(too_large, schema.REASON_TOO_LARGE, F.format_string(limit, "length"))
        )
        if empty is not None:
            message = F.lit("file is empty (0 bytes)")
            rows = rows.unionByName(_error_rows(empty, schema.REASON_EMPTY, message))
        return rows.withColumn(schema.IMAGE_ID, image_id_column(PATH))

    def complete_chunk(self, staging, chunk, done):
        """Error rows for the files of `chunk` that are neither in `staging` nor `done`: Spark's scan
        skips a file that vanished after the listing instead of failing the task."""
        # By its part files: Spark warns about (but reads) a directory whose name starts with '.'.
        written = self.frame.sparkSession.read.parquet(f"{staging}/part-*").select(PATH)
        if written.count() >= chunk.files:
            return None
        written = written if done is None else written.unionByName(done)
        listed = self._index().where(F.col(_KEY).between(chunk.low, chunk.high)).select(PATH)
        gone = listed.join(written, PATH, "left_anti")
        message = F.lit("cannot read the file: listed, but gone or unreadable when it was read")
        rows = _error_rows(gone, schema.REASON_UNREADABLE, message)
        return rows.withColumn(schema.IMAGE_ID, image_id_column(PATH))


def _error_rows(files: DataFrame, reason: str, message: Column) -> DataFrame:
    """Rows for files that are never decoded: null predictions, the reason and 'reason: message'."""
    return files.select(
        PATH,
        *[F.lit(None).cast(field.dataType).alias(field.name) for field in _PREDICTION_FIELDS[:-2]],
        F.lit(reason).alias(ERROR_REASON),
        F.concat(F.lit(f"{reason}: "), message).alias(ERROR),
    )


class _Table(_Source):
    """The ingested table: stored pixels, scored with their labels carried along."""

    labelled = True

    def __init__(self, frame: DataFrame):
        self.frame = frame
        self.key = F.xxhash64(F.col(schema.SOURCE_PATH))

    def listing(self) -> DataFrame:
        return self.frame.select(F.col(schema.SOURCE_PATH).alias(PATH), self.key.alias(_KEY))

    def chunk(self, chunk, done, udf_args):
        carried = [PATH, schema.IMAGE_ID, *LABEL_COLUMNS]
        rows = self.frame.where(self.key.between(chunk.low, chunk.high)).select(
            F.col(schema.SOURCE_PATH).alias(PATH),
            schema.IMAGE_ID,
            schema.DX,
            schema.LABEL,
            schema.SPLIT,
            schema.IMAGE,
            schema.HEIGHT,
            schema.WIDTH,
        )
        if done is not None:
            rows = rows.join(done, PATH, "left_anti")
        carried_fields = [rows.schema[name] for name in carried]
        return rows.mapInPandas(
            functools.partial(
                _score_partition, data_column=schema.IMAGE, raw_pixels=True, passthrough=carried, **udf_args
            ),
            T.StructType([*carried_fields, *_PREDICTION_FIELDS]),
        )


def read_table(spark: SparkSession, table: str) -> DataFrame:
    """The ingested Parquet table (`DIR/split=.../*.parquet`).

    Raises:
        ScoreError: missing, or lacking the columns scoring needs.
    """
    try:
        frame = spark.read.parquet(storage.qualify(spark, table))
    except AnalysisException as error:
        raise ScoreError(f"table not found or unreadable: {table} ({first_line(error)})") from None
    needed = [
        schema.IMAGE_ID,
        schema.DX,
        schema.LABEL,
        schema.IMAGE,
        schema.HEIGHT,
        schema.WIDTH,
        schema.SOURCE_PATH,
        schema.SPLIT,
    ]
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise ScoreError(f"{table} is not an ingested table: it lacks columns {missing}")
    return frame


# --------------------------------------------------------------------------------------------------
# Planning chunks


def plan_chunks(listing: DataFrame, done: DataFrame | None, chunk_files: int) -> tuple[int, int, list[Chunk]]:
    """Split the files still to score into ranges of their path hash holding about `chunk_files` each.

    Args:
        listing: one row per file: `path` and `_key` (its path hash).
        done: `path` of rows already in the output, or None.
        chunk_files: the target number of files per chunk.

    Returns:
        (files listed, files already scored, chunks in key order). A chunk's range is tight (lowest to
        highest key of its files), so after a kill the files already scored, which were whole earlier
        chunks, fall outside it; `Chunk.done` counts the already scored files that do fall inside
        (files added to the archive since), which the chunk's query then skips by a join.
    """
    if chunk_files < 1:
        raise ValueError(f"chunk_files must be at least 1, got {chunk_files}")
    if done is not None:
        marks = done.select(PATH).distinct().withColumn(_DONE, F.lit(True))
        flagged = listing.join(marks, PATH, "left").withColumn(_DONE, F.coalesce(F.col(_DONE), F.lit(False)))
    else:
        flagged = listing.withColumn(_DONE, F.lit(False))
    # Narrow rows (a path and two numbers) reused by the three aggregates below.
    flagged = flagged.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {row[_DONE]: row["count"] for row in flagged.groupBy(_DONE).count().collect()}
        seen, already = sum(counts.values()), counts.get(True, 0)
        todo = flagged.where(~F.col(_DONE))
        pieces = math.ceil((seen - already) / chunk_files)
        if pieces == 0:
            return seen, already, []
        if pieces > 1:
            accuracy = max(10_000, 100 * pieces)
            fractions = [index / pieces for index in range(1, pieces)]
            splits = todo.agg(F.percentile_approx(_KEY, fractions, accuracy)).first()[0]
            bucket = F.size(F.filter(F.array(*[F.lit(int(s)) for s in splits]), lambda s: s < F.col(_KEY)))
        else:
            bucket = F.lit(0)
        bounds = (
            todo.groupBy(bucket.alias("bucket"))
            .agg(F.min(_KEY).alias("low"), F.max(_KEY).alias("high"), F.count("*").alias("files"))
            .orderBy("bucket")
            .collect()
        )
        chunks = [Chunk(int(row["low"]), int(row["high"]), int(row["files"])) for row in bounds]
        if already:
            chunks = _count_done_inside(flagged, chunks)
        return seen, already, chunks
    finally:
        flagged.unpersist()


def _count_done_inside(flagged: DataFrame, chunks: list[Chunk]) -> list[Chunk]:
    spark = flagged.sparkSession
    ranges = spark.createDataFrame(
        [(i, chunk.low, chunk.high) for i, chunk in enumerate(chunks)], "i int, low long, high long"
    )
    done = flagged.where(F.col(_DONE))
    inside = (
        done.join(F.broadcast(ranges), F.col(_KEY).between(F.col("low"), F.col("high")))
        .groupBy("i")
        .count()
        .collect()
    )
    counts = {row["i"]: row["count"] for row in inside}
    return [dataclasses.replace(chunk, done=int(counts.get(i, 0))) for i, chunk in enumerate(chunks)]


# --------------------------------------------------------------------------------------------------
# The output directory


def _chunk_dirs(spark: SparkSession, output: str) -> list[int]:
    """Numbers of the committed chunk directories in `output` (hidden staging ones are not listed)."""
    numbers = []
    for name in _list_names(spark, output):
        prefix = f"{CHUNK}="
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            numbers.append(int(name[len(prefix) :]))
    return sorted(numbers)


def _list_names(spark: SparkSession, directory: str) -> list[str]:
    fs, path = storage._fs_and_path(spark, directory)
    if not fs.exists(path):
        return []
    return [status.getPath().getName() for status in fs.listStatus(path)]


def _remove_leftovers(spark: SparkSession, output: str) -> None:
    """Delete staging directories of chunks a killed run never committed."""
    for name in _list_names(spark, output):
        if name.startswith(f".{CHUNK}=") and ".staging-" in name:
            storage.delete(spark, f"{output}/{name}")


def _read_manifest(spark: SparkSession, output: str) -> dict | None:
    try:
        text = storage.read_text(spark, f"{output}/{MANIFEST_FILE}")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _check_output(spark: SparkSession, output: str, mode: str, identifier: str, kind: str) -> list[int]:
    """Check the output may be replaced (overwrite) or continued (resume); changes nothing.

    Returns:
        The committed chunk numbers that resume keeps ([] for overwrite).

    Raises:
        ScoreError: the output exists but is not a scoring output (overwrite refuses to delete it), or
            holds another model's predictions or another kind of input (resume).
    """
    names = [name for name in _list_names(spark, output) if not name.startswith(".")]
    manifest = _read_manifest(spark, output)
    chunks = _chunk_dirs(spark, output)
    if names and (manifest or {}).get("job") != "score" and not chunks:
        raise ScoreError(f"{output} exists and is not a scoring output; refusing to {mode} it")
    if mode == "overwrite":
        return []
    if manifest is not None:
        previous = manifest.get("model", {}).get("model_id")
        if previous != identifier:
            raise ScoreError(
                f"{output} holds predictions of model {previous}, not {identifier}; "
                "use --mode overwrite or another --output"
            )
        if manifest.get("input_kind") != kind:
            raise ScoreError(
                f"{output} scored {manifest.get('input_kind')} input, not {kind}; "
                "use --mode overwrite or another --output"
            )
    if chunks:
        found = [row[0] for row in spark.read.parquet(output).select(MODEL_ID).distinct().limit(3).collect()]
        if found and found != [identifier]:
            raise ScoreError(
                f"{output} holds predictions of model(s) {found}, not {identifier}; "
                "use --mode overwrite or another --output"
            )
    return chunks


def _commit_chunk(
    spark: SparkSession,
    frame: DataFrame,
    output: str,
    number: int,
    complete: Callable[[str], None] | None = None,
) -> str:
    """Write one chunk into a hidden staging directory inside `output` (then `complete(staging)` may add
    to it), then rename it into place.

    Spark skips names starting with '.' when reading a directory, and a rename is atomic on HDFS and
    local disks, so readers and `--mode resume` see the whole chunk or none of it.
    """
    final = f"{output}/{CHUNK}={number:06d}"
    staging = f"{output}/.{CHUNK}={number:06d}.staging-{os.urandom(6).hex()}"
    try:
        frame.write.mode("errorifexists").parquet(staging)
        if complete is not None:
            complete(staging)
        _publish_chunk(spark, staging, final)
    except BaseException:
        storage.delete(spark, staging)
        raise
    return final


def _publish_chunk(spark: SparkSession, staging: str, final: str) -> None:
    fs, final_path = storage._fs_and_path(spark, final)
    _, staging_path = storage._fs_and_path(spark, staging)
    if fs.exists(final_path):
        raise OSError(f"chunk {final} already exists")
    if not fs.rename(staging_path, final_path):
        raise OSError(f"could not move {staging} to {final}")


# --------------------------------------------------------------------------------------------------
# The job


def score(
    spark: SparkSession,
    model_dir: str,
    output: str,
    config: ScoreConfig,
    images: Sequence[str] | None = None,
    table: str | None = None,
    config_text: str = "",
    progress: Callable[[str], None] | None = None,
) -> ScoreResult:
    """Score every image of an archive (`images`) or of an ingested table (`table`) with a model.

    Args:
        spark: the session.
        model_dir: a model directory (model.keras, labels.json, preprocessing.json), local or mounted.
        output: the predictions directory (any Hadoop URI): `chunk=NNNNNN/` Parquet directories plus
            `_manifest.json`, `_config.yaml` and, for a labelled table, `_metrics.json`.
        config: batch size, mode, size limit, chunking and partitioning.
        images: directories (searched recursively) or globs; or
        table: an ingested table directory (then labels are carried and metrics written).
        config_text: the resolved config as YAML, written as `_config.yaml`.
        progress: called with one line per committed chunk (the job prints them).

    Returns:
        ScoreResult; its manifest's status is "failed" when the output's share of error rows is over
        `config.max_bad_fraction` (the rows are written all the same).

    Raises:
        ScoreError: bad model directory or config, missing input, no images, or an output that is not
            this model's predictions (resume) or not a scoring output at all.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    _check_config(config)
    if (images is None) == (table is None):
        raise ScoreError("give either image paths or a table, not both or neither")
    model_dir = _local_dir(model_dir)
    identifier = model_id(model_dir)
    spec = read_model_spec(model_dir)
    output = storage.qualify(spark, output).rstrip("/")
    with query_settings(spark, _settings(spark, config)):
        source, inputs = _open_source(spark, config, spec, images, table)
        kind = "table" if source.labelled else "images"
        try:
            kept = _check_output(spark, output, config.mode, identifier, kind)
            if config.mode == "resume":
                _remove_leftovers(spark, output)
            done = spark.read.parquet(output).select(PATH) if kept else None
            seen, already, chunks = plan_chunks(source.listing(), done, config.chunk_files)
            if source.find_empty_files(seen):
                seen, already, chunks = plan_chunks(source.listing(), done, config.chunk_files)
            if seen == 0:
                raise ScoreError(f"no {IMAGE_KINDS} images found in {', '.join(map(str, inputs.values()))}")
            if config.mode == "overwrite" and storage.exists(spark, output):
                storage.delete(spark, output)  # only now: a failed listing leaves the old output alone
            manifest = _start_manifest(
                source, inputs, output, model_dir, identifier, spec, config, started_at, seen, already, chunks
            )
            storage.write_text(
                spark, f"{output}/{MANIFEST_FILE}", json.dumps(manifest, indent=2, default=str)
            )
            storage.write_text(spark, f"{output}/{CONFIG_FILE}", config_text)
            first = (kept[-1] + 1) if kept else 0
            workers = _score_chunks(
                spark,
                source,
                chunks,
                output,
                first,
                model_dir,
                identifier,
                spec,
                _progress_line(progress, started, seen, already, len(chunks)),
                config.batch_size,
            )
        finally:
            source.release()
        seconds = time.perf_counter() - started
        written = sum(chunk.files for chunk in chunks)
        manifest["run"].update(
            {
                "files_scored": written,
                "chunks_committed": len(chunks),
                "seconds": round(seconds, 3),
                "images_per_second": round(written / seconds, 1),
                "workers": workers,
            }
        )
        manifest.update(_count_output(spark, output, first))
        if source.labelled:
            manifest.update(_write_metrics(spark, output))
        manifest.update(_verdict(manifest, config))
        storage.write_text(spark, f"{output}/{MANIFEST_FILE}", json.dumps(manifest, indent=2, default=str))
        return ScoreResult(output, manifest)


def _open_source(
    spark: SparkSession, config: ScoreConfig, spec: dict, images: Sequence[str] | None, table: str | None
) -> tuple[_Source, dict]:
    """The job's input, image files or an ingested table, and its record for the manifest.

    Raises:
        ScoreError: a missing path or table, a bad reader, or a table of another image size.
    """
    if images is not None:
        paths = [storage.qualify(spark, path) for path in images]
        try:
            reader = resolve_reader(config.reader, paths)
            source: _Source = _ImageFiles(list_images(spark, paths), config.max_image_bytes, reader)
        except ValueError as error:  # ImagePathError included
            raise ScoreError(str(error)) from None
        inputs = {"images": paths}
    else:
        frame = read_table(spark, table)
        _check_table_size(frame, spec)
        source = _Table(frame)
        inputs = {"table": storage.qualify(spark, table)}
    return source, inputs


def _start_manifest(
    source: _Source,
    inputs: dict,
    output: str,
    model_dir: str,
    identifier: str,
    spec: dict,
    config: ScoreConfig,
    started_at: str,
    seen: int,
    already: int,
    chunks: Sequence[Chunk],
) -> dict:
    """The manifest written before the first chunk (status "running")."""
    kind = "table" if source.labelled else "images"
    return {
        "job": "score",
        "status": "running",
        "input_kind": kind,
        "inputs": inputs,
        "reader": source.reader,  # None for a table: its pixels are stored
        "output": output,
        "model": {"dir": model_dir, "model_id": identifier, "preprocessing": spec},
        "columns": output_columns(source.labelled),
        "error_columns": {ERROR_REASON: "a reason code, or null", ERROR: "'reason: message', or null"},
        "config": dataclasses.asdict(config),
        "versions": package_versions(),
        "run": {
            "started_at": started_at,
            "mode": config.mode,
            "files_seen": seen,
            "already_scored": already,
            "chunks_planned": len(chunks),
        },
    }


def _write_metrics(spark: SparkSession, output: str) -> dict:
    """Write `_metrics.json` of a labelled output; returns the manifest's headline figures."""
    metrics = _labelled_metrics(spark, output)
    if not metrics:
        return {}
    storage.write_text(spark, f"{output}/{METRICS_FILE}", json.dumps(metrics, indent=2))
    headline = ("images", "accuracy", "balanced_accuracy", "macro_f1")
    return {"metrics": {split: {key: m[key] for key in headline} for split, m in metrics.items()}}


def _score_chunks(
    spark: SparkSession,
    source: _Source,
    chunks: Sequence[Chunk],
    output: str,
    first: int,
    model_dir: str,
    identifier: str,
    spec: dict,
    progress: Callable[[int, Chunk], None],
    batch_size: int,
) -> dict:
    """Score and commit each chunk in turn as `chunk=<first + index>`; returns the worker statistics."""
    stats = spark.sparkContext.accumulator({}, _WorkerStats())
    udf_args = {
        "model": WorkerModel.ship(spark, model_dir, identifier, spec),
        "stats": stats,
        "max_batch": batch_size,
    }
    for index, chunk in enumerate(chunks):
        done = None
        if chunk.done:  # files scored earlier inside this chunk's range (added to the archive since)
            in_range = source.listing().where(F.col(_KEY).between(chunk.low, chunk.high)).select(PATH)
            done = spark.read.parquet(output).select(PATH).join(in_range, PATH, "left_semi")
            if chunk.done <= 200_000:
                done = F.broadcast(done)
        frame = _final_columns(source.chunk(chunk, done, udf_args), identifier, source.labelled)

        def complete(staging: str, chunk: Chunk = chunk, done: DataFrame | None = done) -> None:
            missing = source.complete_chunk(staging, chunk, done)
            if missing is not None:
                _final_columns(missing, identifier, source.labelled).write.mode("append").parquet(staging)

        # One file per chunk: a small shuffle of prediction rows (not images) after the parallel scoring.
        sorted_frame = frame.repartition(1).sortWithinPartitions(PATH)
        _commit_chunk(spark, sorted_frame, output, first + index, complete)
        progress(index, chunk)
    return _worker_summary(stats.value)


def _progress_line(progress, started: float, seen: int, already: int, total: int) -> Callable:
    written = 0

    def report(index: int, chunk: Chunk) -> None:
        nonlocal written
        written += chunk.files
        if progress is not None:
            rate = written / (time.perf_counter() - started)
            progress(
                f"chunk {index + 1}/{total} committed: {chunk.files} files "
                f"({already + written}/{seen} done, {rate:.0f} images/s this run)"
            )

    return report


def _check_config(config: ScoreConfig) -> None:
    if config.mode not in MODES:
        raise ScoreError(f"mode must be one of {MODES}, got {config.mode!r}")
    for name in ("batch_size", "chunk_files", "max_image_bytes", "partition_mb"):
        if getattr(config, name) < 1:
            raise ScoreError(f"{name} must be at least 1, got {getattr(config, name)}")
    if not 0.0 <= config.max_bad_fraction <= 1.0:
        raise ScoreError(f"max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")


def _check_table_size(frame: DataFrame, spec: dict) -> None:
    sizes = frame.select(schema.HEIGHT, schema.WIDTH).distinct().limit(5).collect()
    wrong = [(row[0], row[1]) for row in sizes if (row[0], row[1]) != (spec["height"], spec["width"])]
    if wrong:
        raise ScoreError(
            f"the table's images are {wrong[0][1]}x{wrong[0][0]}, the model takes "
            f"{spec['width']}x{spec['height']}: ingest again with the model's size"
        )


def _settings(spark: SparkSession, config: ScoreConfig) -> dict[str, str]:
    """Spark settings for the job's queries, set and restored around them (`query_settings`)."""
    # A near-zero per-file open cost and ~partition_mb read tasks, not 4 files per task; Arrow
    # batches of batch_size files per call into Python (Spark's default is 10,000 rows).
    settings = scan_settings(config.partition_mb, config.open_cost_bytes, config.batch_size)
    if spark.conf.get("spark.sql.files.minPartitionNum", None) is None:
        # A chunk smaller than partition_mb per core still makes a few tasks per core: Spark's packing
        # would otherwise give e.g. 3 tasks to 2 cores, leaving one core idle for a third of the time.
        settings["spark.sql.files.minPartitionNum"] = str(4 * spark.sparkContext.defaultParallelism)
    # `scored_at` as a standard UTC timestamp (Spark's default INT96 reads back as a naive time elsewhere).
    settings["spark.sql.parquet.outputTimestampType"] = "TIMESTAMP_MICROS"
    return settings


def _final_columns(frame: DataFrame, identifier: str, labelled: bool) -> DataFrame:
    labels = F.array(*[F.lit(label) for label in schema.LABELS])
    columns = {
        PREDICTED_DX: F.element_at(labels, F.col(PREDICTED_LABEL) + 1),  # null stays null
        MODEL_ID: F.lit(identifier),
        SCORED_AT: F.current_timestamp(),
    }
    return frame.withColumns(columns).select(*output_columns(labelled))


def _worker_summary(stats: dict) -> dict:
    return {
        "python_processes": len(stats),
        "tasks": sum(tasks for tasks, _ in stats.values()),
        "model_loads": sum(loads for _, loads in stats.values()),
        "per_process": {
            worker: {"tasks": tasks, "model_loads": loads} for worker, (tasks, loads) in stats.items()
        },
    }


def _count_output(spark: SparkSession, output: str, first_new_chunk: int) -> dict:
    """Counts over the whole output (aggregates only): rows, errors by reason, predictions per class."""
    table = spark.read.parquet(output)
    grouped = table.groupBy(ERROR_REASON, PREDICTED_DX).count().collect()
    rows, paths = table.agg(F.count("*"), F.count_distinct(PATH)).first()
    errors = {row[ERROR_REASON]: 0 for row in grouped if row[ERROR_REASON] is not None}
    predicted = {label: 0 for label in schema.LABELS}
    for row in grouped:
        if row[ERROR_REASON] is not None:
            errors[row[ERROR_REASON]] += row["count"]
        elif row[PREDICTED_DX] is not None:
            predicted[row[PREDICTED_DX]] += row["count"]
    return {
        "counts": {
            "rows": int(rows),
            "distinct_paths": int(paths),
            "scored": sum(predicted.values()),
            "errors": sum(errors.values()),
            "errors_by_reason": dict(sorted(errors.items())),
            "predicted": predicted,
            "chunks": len(_chunk_dirs(spark, output)),
            "first_chunk_of_this_run": first_new_chunk,
        }
    }


def _labelled_metrics(spark: SparkSession, output: str) -> dict:
    """classification_metrics per split and over all rows with a label and a prediction.

    Brings `split`, `label` and seven probabilities per labelled row to the driver (about 40 bytes a
    row: a million rows is 40 MB); a labelled set is an evaluation set, not a whole archive.
    """
    from skinspark.metrics import classification_metrics

    rows = (
        spark.read.parquet(output)
        .where(F.col(ERROR_REASON).isNull() & F.col(schema.LABEL).isNotNull())
        .select(schema.SPLIT, schema.LABEL, *schema.PROB_COLUMNS)
        .toPandas()
    )
    if rows.empty:
        return {}
    metrics = {}
    splits = sorted(rows[schema.SPLIT].dropna().unique())
    groups = [("all", rows), *[(split, rows[rows[schema.SPLIT] == split]) for split in splits]]
    for name, group in groups:
        if not group.empty:
            metrics[name] = classification_metrics(
                group[schema.LABEL].to_numpy(), group[list(schema.PROB_COLUMNS)].to_numpy()
            )
    return metrics


def _verdict(manifest: dict, config: ScoreConfig) -> dict:
    counts = manifest["counts"]
    bad = counts["errors"] / max(counts["rows"], 1)
    verdict = {"status": "complete", "bad_fraction": round(bad, 6)}
    if counts["rows"] != counts["distinct_paths"]:
        verdict.update(status="failed", error=f"{counts['rows'] - counts['distinct_paths']} duplicate rows")
    elif bad > config.max_bad_fraction:
        verdict.update(
            status="failed",
            error=(
                f"{bad:.1%} of the rows are errors, over max_bad_fraction {config.max_bad_fraction:.1%} "
                f"(the rows are written; see the {ERROR_REASON} column)"
            ),
        )
    return verdict


def summary(manifest: dict) -> str:
    """A one-screen, human-readable summary of a scoring manifest."""
    run, counts = manifest["run"], manifest.get("counts", {})
    lines = [
        f"score {manifest['status']}: model {manifest['model']['model_id']} -> {manifest['output']}",
        f"  this run ({run['mode']}): {run['files_seen']} files seen, {run['already_scored']} already done, "
        f"{run.get('files_scored', 0)} scored in {run.get('seconds', 0):.1f} s "
        f"({run.get('images_per_second', 0):.0f} images/s)",
    ]
    if counts:
        lines.append(
            f"  output: {counts['rows']} rows in {counts['chunks']} chunks, "
            f"{counts['scored']} predicted, {counts['errors']} errors "
            f"({manifest.get('bad_fraction', 0):.2%})"
        )
        for reason, number in counts["errors_by_reason"].items():
            lines.append(f"    error {reason}: {number}")
        lines.append("  predicted " + " ".join(f"{label:>6}" for label in schema.LABELS))
        lines.append("            " + " ".join(f"{counts['predicted'][label]:>6}" for label in schema.LABELS))
    workers = run.get("workers")
    if workers:
        lines.append(
            f"  {workers['tasks']} tasks on {workers['python_processes']} Python workers, "
            f"{workers['model_loads']} model loads"
        )
    for split, metrics in manifest.get("metrics", {}).items():
        lines.append(
            f"  {split:<5} {metrics['images']:>6} images: accuracy {metrics['accuracy']:.4f}, "
            f"balanced accuracy {metrics['balanced_accuracy']:.4f}, "
            f"macro F1 {metrics['macro_f1']:.4f}"
        )
    if manifest.get("error"):
        lines.append(f"  ERROR: {manifest['error']}")
    return "\n".join(lines)
