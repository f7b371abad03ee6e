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

import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from skinspark import storage
from skinspark.config import ScoreConfig
from skinspark.errors import ConfigError
from skinspark.images import IMAGE_KINDS, scan_settings
from skinspark.manifest import write_record
from skinspark.model_dir import threshold_of
from skinspark.score import chunks
from skinspark.score.chunks import (
    CHUNK,
    check_output,
    chunk_dirs,
    plan_chunks,
    progress_line,
    remove_leftovers,
)
from skinspark.score.columns import (
    CONFIDENCE,
    ERROR,
    ERROR_REASON,
    LABEL_COLUMNS,
    MODEL_ID,
    PATH,
    PREDICTED_DX,
    PREDICTED_LABEL,
    PREDICTION_STRUCT,
    SCORED_AT,
    output_columns,
)
from skinspark.score.errors import ScoreError
from skinspark.score.isic import check_submission_task, evaluate_against_truth, write_submission
from skinspark.score.keyspace import Chunk, Source
from skinspark.score.predict import WorkerModel, open_models, predict_frame
from skinspark.score.report import (
    ScoreResult,
    count_output,
    labelled_metrics,
    score_summary,
    start_manifest,
    verdict,
    write_metrics,
)
from skinspark.score.sources import open_source
from skinspark.score.udf import UDF_NAME, predict_series, predict_udf, register_predict_udf
from skinspark.session import query_settings
from skinspark.tasks import Task, task_of_labels

__all__ = [
    "CHUNK",
    "CONFIDENCE",
    "ERROR",
    "ERROR_REASON",
    "LABEL_COLUMNS",
    "MODEL_ID",
    "PATH",
    "PREDICTED_DX",
    "PREDICTED_LABEL",
    "PREDICTION_STRUCT",
    "SCORED_AT",
    "UDF_NAME",
    "Chunk",
    "ScoreError",
    "ScoreResult",
    "WorkerModel",
    "output_columns",
    "plan_chunks",
    "predict_frame",
    "predict_series",
    "predict_udf",
    "register_predict_udf",
    "score",
    "score_summary",
    "verdict",
]


def score(
    spark: SparkSession,
    model_dir: str | Sequence[str],
    output: str,
    config: ScoreConfig,
    images: Sequence[str] | None = None,
    table: str | None = None,
    config_text: str = "",
    progress: Callable[[str], None] | None = None,
    isic_csv: str | None = None,
    truth: str | None = None,
) -> ScoreResult:
    """Score every image of an archive (`images`) or of an ingested table (`table`) with a model.

    Args:
        spark: the session.
        model_dir: a model directory (model.keras, labels.json, preprocessing.json), local or mounted;
            or several, an ensemble whose probabilities are averaged (one label order and one input
            size and decoder for all).
        output: the predictions directory (any Hadoop URI): `chunk=NNNNNN/` Parquet directories plus
            `_manifest.json`, `_config.yaml` and, for a labelled table, `_metrics.json`.
        config: batch size, mode, size limit, chunking and partitioning.
        images: directories (searched recursively) or globs; or
        table: an ingested table directory (then labels are carried and metrics written).
        config_text: the resolved config as YAML, written as `_config.yaml`.
        progress: called with one line per committed chunk (the job prints them).
        isic_csv: also write the predictions as an ISIC 2018 Task 3 submission CSV here.
        truth: an ISIC 2018 Task 3 ground-truth CSV to evaluate the predictions against.

    Returns:
        ScoreResult; its manifest's status is "failed" when the output's share of error rows is over
        `config.max_bad_fraction` (the rows are written all the same).

    Raises:
        ScoreError: bad model directory or config, missing input, no images, or an output that is not
            this model's predictions (resume) or not a scoring output at all.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        config.check()
    except ConfigError as error:
        raise ScoreError(str(error)) from None
    if (images is None) == (table is None):
        raise ScoreError("give either image paths or a table, not both or neither")
    one = isinstance(model_dir, str | os.PathLike)
    members, identifier, spec = open_models(
        [os.fspath(model_dir)] if one else [os.fspath(d) for d in model_dir]
    )
    model_dir = members[0][0]
    task = task_of_labels(spec["labels"])
    if isic_csv is not None:
        check_submission_task(task)  # before any image is scored
    output = storage.qualify(spark, output).rstrip("/")
    with query_settings(spark, _settings(spark, config)):
        source, inputs = open_source(spark, config, spec, images, table)
        try:
            kept, seen, already, plan = _plan(spark, source, inputs, output, config, identifier)
            run = {
                "started_at": started_at,
                "mode": config.mode,
                "files_seen": seen,
                "already_scored": already,
                "chunks_planned": len(plan),
            }
            record = {"dir": model_dir, "model_id": identifier, "preprocessing": spec}
            if len(members) > 1:
                record["ensemble"] = [{"dir": path, "model_id": name} for path, name in members]
            manifest = start_manifest(source, inputs, output, record, config, run)
            write_record(spark, output, manifest, config_text)
            first = (kept[-1] + 1) if kept else 0
            model = WorkerModel.ship_ensemble(spark, members, identifier, spec, config.precision)
            report = progress_line(progress, started, seen, already, len(plan))
            workers = chunks.score_chunks(
                spark, source, plan, output, first, model, report, config.batch_size
            )
        finally:
            source.release()
        seconds = time.perf_counter() - started
        written = sum(chunk.files for chunk in plan)
        run.update(
            files_scored=written,
            chunks_committed=len(plan),
            seconds=round(seconds, 3),
            images_per_second=round(written / seconds, 1),
            workers=workers,
        )
        manifest.update(count_output(spark, output, len(chunk_dirs(spark, output)), first, source.labels))
        threshold = threshold_of(model_dir) if len(members) == 1 else None
        manifest.update(_evaluate(spark, output, threshold, source.labelled, isic_csv, truth, task))
        manifest.update(verdict(manifest, config))
        write_record(spark, output, manifest)
        return ScoreResult(output, manifest)


def _evaluate(
    spark, output: str, threshold: float | None, labelled: bool, isic_csv, truth, task: Task
) -> dict:
    """Metrics of a labelled table or against a ground-truth CSV (`_metrics.json`), and the ISIC
    submission file; the operating point (melanoma's, or malignant's for a benign/malignant model) is
    the one the model's training fixed (none for an ensemble: no training fixed one for the average)."""
    metrics = labelled_metrics(spark, output, threshold, task) if labelled else {}
    record = {}
    if truth is not None:
        evaluated = evaluate_against_truth(spark, output, truth, threshold, task)
        if evaluated["metrics"] is not None:
            metrics["truth"] = evaluated["metrics"]
        record["truth"] = {"truth": evaluated["truth"], "counts": evaluated["counts"]}
    if isic_csv is not None:
        record["isic_csv"] = write_submission(spark, output, isic_csv, task)
    record.update(write_metrics(spark, output, metrics))
    return record


def _plan(
    spark: SparkSession, source: Source, inputs: dict, output: str, config: ScoreConfig, identifier: str
):
    """Check the output, list the input and plan the chunks; an overwritten output is deleted only
    once the plan holds files.

    Returns:
        (chunk numbers kept from an earlier run, files seen, files already scored, chunks to score).
    """
    kind = "table" if source.labelled else "images"
    kept = check_output(spark, output, config.mode, identifier, kind)
    if config.mode == "resume":
        remove_leftovers(spark, output)
    done = spark.read.parquet(output).select(PATH) if kept else None
    seen, already, plan = plan_chunks(source.listing(), done, config.chunk_files)
    if source.find_empty_files(seen):
        seen, already, plan = plan_chunks(source.listing(), done, config.chunk_files)
    if seen == 0:
        raise ScoreError(f"no {IMAGE_KINDS} images found in {', '.join(map(str, inputs.values()))}")
    if config.mode == "overwrite" and storage.exists(spark, output):
        storage.delete(spark, output)  # only now: a failed listing leaves the old output alone
    return kept, seen, already, plan


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
