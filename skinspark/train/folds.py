"""One fold of a cross-validation as a table of its own: the ingested table with `split` set from its
`fold` column (fold k validates, the other folds train, test stays test), written beside the model so
that both backends, the driver's whole-split reads and the class weights read it like any table."""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from skinspark import schema, storage
from skinspark.config import IngestConfig
from skinspark.manifest import publish, read_record, split_counts, staging_path, to_json, write_record
from skinspark.model_dir import local_path
from skinspark.table import petastorm_url, read_ingest_manifest
from skinspark.train.errors import TrainInputError, table_errors

FOLD_DATA = "_fold_data"  # the fold's table inside MODEL_DIR, removed once the run is complete
SOURCE_DIGEST = "source_manifest_sha256"  # which ingest run the fold's table was cut from


def fold_count(ingest_manifest: dict, data_dir: str) -> int:
    """The number of folds an ingested table holds.

    Raises:
        TrainInputError: the table was ingested without `--folds`.
    """
    folds = int(ingest_manifest.get("folds") or 0)
    if folds < 2:
        raise TrainInputError(
            f"the ingested table {data_dir} has no folds: ingest it with --folds K to train a fold "
            "or cross-validate"
        )
    return folds


def fold_frame(table: DataFrame, fold: int) -> DataFrame:
    """The table with `split` set for one fold: 'val' for the rows of fold `fold`, 'train' for the other
    train and val rows, 'test' unchanged."""
    split = (
        F.when(F.col(schema.SPLIT) == schema.TEST, F.lit(schema.TEST))
        .when(F.col(schema.FOLD) == fold, F.lit(schema.VAL))
        .otherwise(F.lit(schema.TRAIN))
    )
    return table.withColumn(schema.SPLIT, split)


@table_errors()
def fold_table(spark: SparkSession, data_dir: str, model_dir: str | Path, fold: int) -> str:
    """Write the table of fold `fold` of `data_dir` to `model_dir/_fold_data` (or reuse it), with its
    own `_manifest.json`; returns its URI.

    The table is written to a staging path and moved into place whole. One left by an earlier run (a
    run to `--resume`) is reused when it is complete and was cut from the same ingest run for the same
    fold; otherwise it is rebuilt, which gives the same rows.

    Raises:
        TrainInputError: `data_dir` is no complete ingested table, has no folds, or has no fold `fold`.
    """
    source = petastorm_url(storage.qualify(spark, data_dir))
    manifest = read_ingest_manifest(spark, source)
    folds = fold_count(manifest, data_dir)
    if not 0 <= fold < folds:
        raise TrainInputError(f"fold {fold} is not a fold of {data_dir}, which has folds 0 to {folds - 1}")
    target = storage.qualify(spark, f"{local_path(str(model_dir))}/{FOLD_DATA}")
    digest = hashlib.sha256(to_json(manifest).encode()).hexdigest()
    existing = read_record(spark, target)
    if existing is not None and (existing.get("fold"), existing.get(SOURCE_DIGEST)) == (fold, digest):
        return target
    view = fold_frame(spark.read.parquet(source), fold)
    staging = staging_path(target)
    try:
        rows = view.select(schema.SPLIT, schema.DX, schema.LESION_ID).toPandas()
        _write(view, staging, len(rows), manifest.get("config", {}), spark.sparkContext.defaultParallelism)
        splits = split_counts(rows)
        record = copy.deepcopy(manifest)
        record["counts"]["splits"] = splits
        record.update({"fold": fold, "folds": folds, "source": source, SOURCE_DIGEST: digest})
        write_record(spark, staging, record)
        publish(spark, staging, target)
    except BaseException:
        storage.delete(spark, staging)
        raise
    return target


def _write(view: DataFrame, target: str, rows: int, ingest_config: dict, cores: int) -> None:
    """Write the fold's table partitioned by split, in files and row groups sized as ingest sized the
    table's (so each rank's shard is cut the same way)."""
    rows_per_file = int(ingest_config.get("rows_per_file", IngestConfig.rows_per_file))
    row_group_mb = int(ingest_config.get("row_group_mb", IngestConfig.row_group_mb))
    writers = cores * max(1, math.ceil(rows / (rows_per_file * cores)))
    (
        view.coalesce(writers)
        .sortWithinPartitions(schema.SPLIT, schema.IMAGE_ID)
        .write.mode("overwrite")
        .option("maxRecordsPerFile", rows_per_file)
        .option("parquet.block.size", row_group_mb * 1024 * 1024)
        .partitionBy(schema.SPLIT)
        .parquet(target)
    )


def remove_fold_table(spark: SparkSession, model_dir: str | Path) -> None:
    """Delete `model_dir/_fold_data` (after a complete run: `fold_table` rebuilds the same rows)."""
    storage.delete(spark, storage.qualify(spark, f"{local_path(str(model_dir))}/{FOLD_DATA}"))


def fold_fields(ingest_manifest: dict) -> dict:
    """What a training manifest records of a fold's table: `fold`, `folds` and the source table as
    `data` ({} for a plain ingested table)."""
    if ingest_manifest.get("fold") is None:
        return {}
    return {
        "data": ingest_manifest["source"],
        "fold": ingest_manifest["fold"],
        "folds": ingest_manifest["folds"],
    }
