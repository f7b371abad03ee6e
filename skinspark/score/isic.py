"""The ISIC 2018 Task 3 formats, the field's standard outside evaluation: a scoring output written as a
submission CSV, and a scoring output evaluated against the challenge's one-hot ground-truth CSV.

Both files have the columns `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`: one row per image, probabilities
in a submission, 0/1 (exactly one 1) in the ground truth. A submission needs a seven-diagnosis model;
the ground truth also evaluates a benign/malignant model, its diagnoses grouped as the model's task
groups them.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from skinspark import schema, storage
from skinspark.errors import first_line
from skinspark.manifest import staging_path
from skinspark.metrics import classification_metrics
from skinspark.score.columns import ERROR_REASON
from skinspark.score.errors import ScoreError
from skinspark.tasks import DX7, Task

IMAGE_COLUMN = "image"
CLASS_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")  # the challenge's order
_LABEL_OF = {column: column.lower() for column in CLASS_COLUMNS}


def write_submission(spark: SparkSession, output: str, path: str, task: Task = DX7) -> dict:
    """Write the scored rows of `output` as one submission CSV at `path` (any Hadoop URI), through
    Spark's CSV writer, sorted by image; rows with an error have no probabilities and are not written.

    Returns:
        {"path", "rows" written, "error_rows" left out, "duplicate_images"} for the manifest.

    Raises:
        ScoreError: the model is not a seven-diagnosis one (`check_submission_task`).
    """
    check_submission_task(task)
    scored = spark.read.parquet(output)
    errors = scored.where(F.col(ERROR_REASON).isNotNull()).count()
    rows = scored.where(F.col(ERROR_REASON).isNull()).select(
        F.col(schema.IMAGE_ID).alias(IMAGE_COLUMN),
        *[F.col(f"prob_{_LABEL_OF[column]}").alias(column) for column in CLASS_COLUMNS],
    )
    written, distinct = rows.agg(F.count("*"), F.count_distinct(IMAGE_COLUMN)).first()
    target = storage.qualify(spark, path)
    staging = staging_path(target)
    try:
        rows.orderBy(IMAGE_COLUMN).coalesce(1).write.option("header", True).csv(staging)
        parts = [name for name in storage.list_names(spark, staging) if name.startswith("part-")]
        if storage.exists(spark, target):
            storage.delete(spark, target)
        storage.rename(spark, f"{staging}/{parts[0]}", target)
    finally:
        storage.delete(spark, staging)
    return {
        "path": target,
        "rows": int(written),
        "error_rows": int(errors),
        "duplicate_images": int(written - distinct),
    }


def check_submission_task(task: Task) -> None:
    """ScoreError unless `task` is the seven diagnoses: a submission holds their seven probabilities."""
    if task.labels != DX7.labels:
        raise ScoreError(
            f"an ISIC 2018 Task 3 submission holds the seven diagnoses' probabilities; this model's task "
            f"is {task.name} ({', '.join(task.labels)}): drop --isic-csv, or score with a dx7 model"
        )


def read_truth(spark: SparkSession, path: str) -> DataFrame:
    """The ground-truth CSV as (`image_id`, `label`, `valid`): `valid` is false for a row that does not
    hold exactly one 1 among the class columns (its `label` is then null).

    Raises:
        ScoreError: the file is missing or lacks the challenge's columns.
    """
    try:
        truth = spark.read.option("header", True).csv(storage.qualify(spark, path))
    except Exception as error:  # noqa: BLE001 - Spark's AnalysisException and the JVM's errors alike
        raise ScoreError(f"ground-truth CSV not found or unreadable: {path} ({first_line(error)})") from None
    missing = [column for column in (IMAGE_COLUMN, *CLASS_COLUMNS) if column not in truth.columns]
    if missing:
        raise ScoreError(f"{path} is not an ISIC 2018 Task 3 ground-truth CSV: it lacks columns {missing}")
    values = {column: F.col(column).cast("double") for column in CLASS_COLUMNS}
    ones = sum((F.when(value == 1.0, 1).otherwise(0) for value in values.values()), F.lit(0))
    zeros = sum((F.when(value == 0.0, 1).otherwise(0) for value in values.values()), F.lit(0))
    valid = (ones == 1) & (zeros == len(CLASS_COLUMNS) - 1)
    label = F.lit(None).cast("int")
    for column, value in values.items():
        label = F.when(valid & (value == 1.0), F.lit(schema.LABEL_INDEX[_LABEL_OF[column]])).otherwise(label)
    return truth.select(
        F.col(IMAGE_COLUMN).alias(schema.IMAGE_ID), label.alias(schema.LABEL), valid.alias("valid")
    )


def evaluate_against_truth(
    spark: SparkSession, output: str, truth_path: str, threshold: float | None = None, task: Task = DX7
) -> dict:
    """Metrics of the scored rows of `output` against a ground-truth CSV, joined on the image id; for a
    benign/malignant model (`task`) the truth's diagnoses are grouped into its two classes.

    Nothing is dropped unannounced: truth rows with no scored image, scored images with no truth
    row, matched images whose scoring failed, and invalid truth rows are all counted.

    Returns:
        {"truth": path, "counts": {...}, "metrics": classification_metrics or None when nothing
        matched}.
    """
    truth = read_truth(spark, truth_path)
    probabilities = list(task.prob_columns)
    scored = spark.read.parquet(output).select(schema.IMAGE_ID, ERROR_REASON, *probabilities)
    valid = truth.where("valid")
    joined = valid.join(scored, schema.IMAGE_ID, "inner")
    counts = {
        "truth_rows": truth.count(),
        "invalid_truth_rows": truth.where(~F.col("valid")).count(),
        "truth_without_prediction": valid.join(scored, schema.IMAGE_ID, "left_anti").count(),
        "predictions_without_truth": scored.join(truth, schema.IMAGE_ID, "left_anti").count(),
        "matched_with_error": joined.where(F.col(ERROR_REASON).isNotNull()).count(),
    }
    rows = joined.where(F.col(ERROR_REASON).isNull()).select(schema.LABEL, *probabilities).toPandas()
    counts["evaluated"] = len(rows)
    metrics = None
    if len(rows):
        metrics = classification_metrics(
            task.map_labels(rows[schema.LABEL].to_numpy()),
            rows[probabilities].to_numpy(),
            task.labels,
            threshold,
        )
    return {"truth": storage.qualify(spark, truth_path), "counts": counts, "metrics": metrics}
