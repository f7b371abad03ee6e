"""The scoring output's columns: their names, types and order, and the columns every scored row gets.

The probability columns follow the model's output units: `prob_<label>` for each of its task's labels
(seven diagnoses, or `prob_benign` and `prob_malignant`); `predicted_dx` holds the predicted label.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import schema

PATH = "path"
PREDICTED_DX = "predicted_dx"
PREDICTED_LABEL = "predicted_label"
CONFIDENCE = "confidence"
MODEL_ID = "model_id"
SCORED_AT = "scored_at"
ERROR_REASON = "error_reason"  # a schema.REASON_* code, or null
ERROR = "error"  # "reason: message", or null
NOTE = "note"  # something worth knowing about a scored image (a multi-frame DICOM's first frame), or null
LABEL_COLUMNS = (schema.DX, schema.LABEL, schema.SPLIT)  # carried through from a labelled table


def prob_columns(labels: Sequence[str] = schema.LABELS) -> list[str]:
    """One probability column per output unit, in unit order."""
    return [f"prob_{label}" for label in labels]


def value_fields(labels: Sequence[str] = schema.LABELS) -> list[T.StructField]:
    """The predicted values of a row: `predicted_label`, `confidence` and the probabilities."""
    return [
        T.StructField(PREDICTED_LABEL, T.IntegerType(), True),
        T.StructField(CONFIDENCE, T.FloatType(), True),
        *[T.StructField(name, T.FloatType(), True) for name in prob_columns(labels)],
    ]


def prediction_fields(labels: Sequence[str] = schema.LABELS) -> list[T.StructField]:
    """What the scoring function returns for each row (then `image_id`, `model_id`, `scored_at` are
    added), for a model with these output labels."""
    return [
        *value_fields(labels),
        T.StructField(ERROR_REASON, T.StringType(), True),
        T.StructField(ERROR, T.StringType(), True),
        T.StructField(NOTE, T.StringType(), True),
    ]


def prediction_struct(labels: Sequence[str] = schema.LABELS) -> T.StructType:
    """What `predict_udf` returns for each row, for a model with these output labels."""
    return T.StructType(
        [
            T.StructField(PREDICTED_DX, T.StringType(), True),
            T.StructField(CONFIDENCE, T.FloatType(), True),
            *[T.StructField(name, T.FloatType(), True) for name in prob_columns(labels)],
            T.StructField(ERROR_REASON, T.StringType(), True),
            T.StructField(ERROR, T.StringType(), True),
            T.StructField(NOTE, T.StringType(), True),
        ]
    )


PREDICTION_FIELDS = prediction_fields()  # a seven-diagnosis model's
PREDICTION_STRUCT = prediction_struct()


def output_columns(labelled: bool = False, labels: Sequence[str] = schema.LABELS) -> list[str]:
    """The output table's columns, in order (reading the directory adds the partition column `chunk`)."""
    carried = list(LABEL_COLUMNS) if labelled else []
    return [
        PATH,
        schema.IMAGE_ID,
        *carried,
        PREDICTED_DX,
        *[f.name for f in value_fields(labels)],
        MODEL_ID,
        SCORED_AT,
        ERROR_REASON,
        ERROR,
        NOTE,
    ]


def final_columns(
    frame: DataFrame, identifier: str, labelled: bool, labels: Sequence[str] = schema.LABELS
) -> DataFrame:
    names = F.array(*[F.lit(label) for label in labels])
    columns = {
        # get (0-based) keeps a null label null; element_at(labels, null + 1) is the last label on Spark 4.3.
        PREDICTED_DX: F.get(names, F.col(PREDICTED_LABEL)),
        MODEL_ID: F.lit(identifier),
        SCORED_AT: F.current_timestamp(),
    }
    return frame.withColumns(columns).select(*output_columns(labelled, labels))
