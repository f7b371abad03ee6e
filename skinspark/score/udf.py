"""`predict_udf`: scoring inside a user's own Spark code, as a pandas UDF or a Spark SQL function."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from skinspark import schema
from skinspark.config import check_precision
from skinspark.errors import ConfigError
from skinspark.images import (
    CONTENT,
    read_files,
)
from skinspark.preprocess import ImageError
from skinspark.score.columns import (
    PREDICTED_DX,
    PREDICTED_LABEL,
    prediction_struct,
)
from skinspark.score.errors import ScoreError
from skinspark.score.predict import WorkerModel, open_model, predict_frame

UDF_NAME = "skinspark_predict"


def predict_udf(
    model_dir: str, batch_size: int = 256, spark: SparkSession | None = None, precision: str = "auto"
):
    """An iterator pandas UDF that scores a column of image paths or of encoded image bytes.

        predict = predict_udf("out/model")
        files = spark.read.format("binaryFile").load("archive/").select("path")
        files.select("path", predict("path").alias("p")).select("path", "p.predicted_dx", "p.confidence")

    A string value is a path (`file:/a.jpg`, `/a.jpg`, `hdfs://...`, `s3a://...`), read in the Python
    worker; a binary value is the file's bytes (e.g. `binaryFile`'s `content`). The model is loaded
    once per Python worker and reused by every later batch and task; each call predicts at most
    `batch_size` images at once, in `precision` (`auto`: bfloat16 where the worker's CPU has the
    units). The scoring job predicts with the same function (`predict_frame`).

    Returns:
        A UDF returning a struct of `predicted_dx`, `confidence`, one `prob_<label>` column per output
        unit of the model's task (7 diagnoses, or `prob_benign` and `prob_malignant`), `error_reason`
        and `error` (predictions null and the reason set for a file that cannot be read or decoded).

    Raises:
        ScoreError: no active session, a bad model directory, or an unknown precision.
    """
    spark = spark or SparkSession.getActiveSession()
    if spark is None:
        raise ScoreError("predict_udf needs an active SparkSession")
    model_dir, identifier, spec = open_model(model_dir)
    try:
        check_precision(precision)
    except ConfigError as error:
        raise ScoreError(str(error)) from None
    model = WorkerModel.ship(spark, model_dir, identifier, spec, precision)
    batch_size = max(1, int(batch_size))

    def skinspark_predict(values: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from predict_series(values, model, batch_size)

    return F.pandas_udf(skinspark_predict, prediction_struct(model.labels))


def register_predict_udf(
    spark: SparkSession, model_dir: str, name: str = UDF_NAME, batch_size: int = 256, precision: str = "auto"
):
    """Register `predict_udf(model_dir)` for Spark SQL: `SELECT skinspark_predict(path) FROM files`.

    Returns:
        The UDF, for DataFrame code too.
    """
    udf = predict_udf(model_dir, batch_size, spark, precision)
    spark.udf.register(name, udf)
    return udf


def predict_series(
    values: Iterator[pd.Series], model: WorkerModel, batch_size: int
) -> Iterator[pd.DataFrame]:
    """The UDF's body: paths are read here, bytes taken as they are, `batch_size` rows at a time."""
    load = model.loader(model.worker_precision())
    fields = prediction_struct(model.labels).fieldNames()
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
                labels=model.labels,
            )
            labels = frame[PREDICTED_LABEL]
            frame[PREDICTED_DX] = [None if pd.isna(label) else model.labels[int(label)] for label in labels]
            parts.append(frame[fields])
        yield pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({name: [] for name in fields})


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
