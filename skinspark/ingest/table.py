"""The one pass over the images: read, decode and write the planned files as the table."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import pandas as pd
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from skinspark import images, schema, storage
from skinspark.config import IngestConfig
from skinspark.ingest.fates import GONE_MESSAGE, read_settings
from skinspark.preprocess import decode_many
from skinspark.session import query_settings


@dataclasses.dataclass(frozen=True)
class TablePass:
    """What the one pass over the images found besides the rows it wrote: each planned file that could
    not be read or decoded ({source_path: (reason, message)}), and each ingested image's note
    ({source_path: note}: a multi-frame DICOM whose first frame was used)."""

    failures: dict[str, tuple[str, str]]
    notes: dict[str, str]


def write_table(
    spark: SparkSession, frame: DataFrame, plan: pd.DataFrame, config: IngestConfig, reader: str, target: str
) -> TablePass:
    """The one pass over the images: read, decode and write the planned files as the table at `target`.

    The plan (a few hundred bytes per image) travels to the workers as a broadcast variable, so the
    pixels are neither joined nor shuffled: each task reads its share of the listing, keeps the planned
    files, and writes their rows partitioned by split.

    Returns:
        The failures and notes of the pass (`TablePass`).
    """
    table_schema = _table_schema(plan)
    rows = _plan_rows(plan, table_schema)
    sc = spark.sparkContext
    failures = sc.accumulator([], _ListParam())
    notes = sc.accumulator([], _ListParam())
    seen = sc.accumulator(0)
    decode = functools.partial(
        _decode_planned,
        plan=sc.broadcast(rows),
        columns=table_schema.fieldNames(),
        height=config.height,
        width=config.width,
        decoder=config.decoder,
        reader=reader,
        failures=failures,
        notes=notes,
        seen=seen,
    )
    columns = images.read_columns(reader, members=True)
    # Files of about rows_per_file rows, as many writers as cores (or a multiple of them), so no core
    # idles through a last lone file; merging scan partitions costs no read parallelism below that.
    cores = sc.defaultParallelism
    writers = cores * max(1, math.ceil(len(plan) / (config.rows_per_file * cores)))
    table = (
        frame.select(*columns)
        .mapInPandas(decode, table_schema)
        .coalesce(writers)
        .sortWithinPartitions(schema.SPLIT, schema.IMAGE_ID)
    )
    with query_settings(spark, read_settings(config)):
        (
            table.write.mode("overwrite")
            .option("maxRecordsPerFile", config.rows_per_file)
            .option("parquet.block.size", config.row_group_mb * 1024 * 1024)
            .partitionBy(schema.SPLIT)
            .parquet(target)
        )
    failed = {path: (reason, message) for path, reason, message in failures.value}
    if seen.value != len(plan):
        # Spark's scan skips a file that vanished after the listing: find what is in neither list.
        parts = [
            part
            for name in storage.list_names(spark, target)
            if name.startswith(f"{schema.SPLIT}=")
            for part in storage.part_files(spark, f"{target}/{name}")
        ]
        written = set()  # no part file at all: every planned file is gone
        if parts:
            table = spark.read.parquet(*parts)
            written = set(table.select(schema.SOURCE_PATH).toPandas()[schema.SOURCE_PATH])
        for path in set(plan[schema.SOURCE_PATH]) - written - set(failed):
            failed[path] = (schema.REASON_UNREADABLE, GONE_MESSAGE)
    return TablePass(failed, dict(notes.value))


def _decode_planned(
    batches: Iterator[pd.DataFrame],
    plan,
    columns: list[str],
    height: int,
    width: int,
    decoder: str,
    reader: str,
    failures,
    notes,
    seen,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the planned files of each batch, read, decoded and joined with their plan rows."""
    planned = plan.value
    for batch in batches:
        batch = batch[batch[images.PATH].isin(planned.index)]
        if batch.empty:
            continue
        results = decode_many(images.batch_contents(batch, reader), height, width, decoder)
        paths = batch[images.PATH].to_numpy()
        ok = [index for index, result in enumerate(results) if result.pixels is not None]
        failures.add(
            [
                (paths[i], result.reason, result.message)
                for i, result in enumerate(results)
                if result.pixels is None
            ]
        )
        notes.add([(paths[i], result.note) for i, result in enumerate(results) if result.note])
        seen.add(len(batch))
        rows = planned.loc[paths[ok]].reset_index()
        rows[schema.IMAGE] = [results[index].pixels.tobytes() for index in ok]
        rows[schema.HEIGHT] = height
        rows[schema.WIDTH] = width
        yield rows[columns]


class _ListParam(AccumulatorParam):
    """An accumulator of a list: tasks add lists, the driver reads their concatenation."""

    def zero(self, value):
        return []

    def addInPlace(self, total, update):
        total.extend(update)
        return total


def _table_schema(plan: pd.DataFrame) -> T.StructType:
    known = {*schema.INGESTED_SCHEMA.fieldNames(), schema.SPLIT, schema.FOLD}
    extra = [name for name in plan.columns if name not in known]
    # The fold is a number that training compares (extra CSV columns are carried through as text).
    fold = [T.StructField(schema.FOLD, T.IntegerType(), True)] if schema.FOLD in plan.columns else []
    return T.StructType(
        [
            *schema.INGESTED_SCHEMA,
            *[T.StructField(name, T.StringType(), True) for name in extra],
            *fold,
            T.StructField(schema.SPLIT, T.StringType(), False),
        ]
    )


def _plan_rows(plan: pd.DataFrame, table_schema: T.StructType) -> pd.DataFrame:
    """The plan's columns of the table, indexed by source path, with None for every missing value."""
    plan = plan.assign(**{schema.LABEL: plan[schema.DX].map(schema.LABEL_INDEX).astype("int32")})
    names = [name for name in table_schema.fieldNames() if name in plan.columns]
    rows = plan[names].astype(object).where(plan[names].notna(), None)
    rows[schema.LABEL] = plan[schema.LABEL].astype("int32")
    rows[schema.AGE] = plan[schema.AGE].astype("float32")
    if schema.FOLD in rows:  # Python ints and None: Arrow casts them to int32 with nulls
        folds = [None if pd.isna(fold) else int(fold) for fold in plan[schema.FOLD]]
        rows[schema.FOLD] = pd.Series(folds, index=rows.index, dtype=object)
    return rows.set_index(schema.SOURCE_PATH, drop=False).rename_axis(images.PATH)
