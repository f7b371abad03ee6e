"""Chunks: the plan that cuts the files still to score into path-hash ranges, and the commits that
make the output whole chunks or nothing (staging, rename, resume's checks)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from skinspark import storage
from skinspark.manifest import publish, read_record, staging_path
from skinspark.score.columns import MODEL_ID, PATH, final_columns
from skinspark.score.errors import ScoreError
from skinspark.score.keyspace import KEY, Chunk, Source
from skinspark.score.predict import WorkerModel, WorkerStats
from skinspark.score.report import worker_summary

CHUNK = "chunk"  # the partition column of the output: one directory per committed chunk
_DONE = "_done"


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
            splits = todo.agg(F.percentile_approx(KEY, fractions, accuracy)).first()[0]
            bucket = F.size(F.filter(F.array(*[F.lit(int(s)) for s in splits]), lambda s: s < F.col(KEY)))
        else:
            bucket = F.lit(0)
        bounds = (
            todo.groupBy(bucket.alias("bucket"))
            .agg(F.min(KEY).alias("low"), F.max(KEY).alias("high"), F.count("*").alias("files"))
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
        done.join(F.broadcast(ranges), F.col(KEY).between(F.col("low"), F.col("high")))
        .groupBy("i")
        .count()
        .collect()
    )
    counts = {row["i"]: row["count"] for row in inside}
    return [dataclasses.replace(chunk, done=int(counts.get(i, 0))) for i, chunk in enumerate(chunks)]


def chunk_dirs(spark: SparkSession, output: str) -> list[int]:
    """Numbers of the committed chunk directories in `output` (hidden staging ones are not listed)."""
    numbers = []
    for name in storage.list_names(spark, output):
        prefix = f"{CHUNK}="
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            numbers.append(int(name[len(prefix) :]))
    return sorted(numbers)


def remove_leftovers(spark: SparkSession, output: str) -> None:
    """Delete staging directories of chunks a killed run never committed."""
    for name in storage.list_names(spark, output):
        if name.startswith(f".{CHUNK}=") and ".staging-" in name:
            storage.delete(spark, f"{output}/{name}")


def check_output(spark: SparkSession, output: str, mode: str, identifier: str, kind: str) -> list[int]:
    """Check the output may be replaced (overwrite) or continued (resume); changes nothing.

    Returns:
        The committed chunk numbers that resume keeps ([] for overwrite).

    Raises:
        ScoreError: the output exists but is not a scoring output (overwrite refuses to delete it), or
            holds another model's predictions or another kind of input (resume).
    """
    names = [name for name in storage.list_names(spark, output) if not name.startswith(".")]
    manifest = read_record(spark, output)
    chunks = chunk_dirs(spark, output)
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


def commit_chunk(
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
    staging = staging_path(final)
    try:
        frame.write.mode("errorifexists").parquet(staging)
        if complete is not None:
            complete(staging)
        publish(spark, staging, final, replace=False)
    except BaseException:
        storage.delete(spark, staging)
        raise
    return final


def score_chunks(
    spark: SparkSession,
    source: Source,
    chunks: Sequence[Chunk],
    output: str,
    first: int,
    model: WorkerModel,
    progress: Callable[[int, Chunk], None],
    batch_size: int,
) -> dict:
    """Score and commit each chunk in turn as `chunk=<first + index>`; returns the worker statistics."""
    stats = spark.sparkContext.accumulator({}, WorkerStats())
    udf_args = {"model": model, "stats": stats, "max_batch": batch_size}
    identifier = model.model_id
    for index, chunk in enumerate(chunks):
        done = None
        if chunk.done:  # files scored earlier inside this chunk's range (added to the archive since)
            in_range = source.listing().where(F.col(KEY).between(chunk.low, chunk.high)).select(PATH)
            done = spark.read.parquet(output).select(PATH).join(in_range, PATH, "left_semi")
            if chunk.done <= 200_000:
                done = F.broadcast(done)
        frame = final_columns(source.chunk(chunk, done, udf_args), identifier, source.labelled, source.labels)

        def complete(staging: str, chunk: Chunk = chunk, done: DataFrame | None = done) -> None:
            missing = source.complete_chunk(staging, chunk, done)
            if missing is not None:
                final_columns(missing, identifier, source.labelled, source.labels).write.mode(
                    "append"
                ).parquet(staging)

        # One file per chunk: a small shuffle of prediction rows (not images) after the parallel scoring.
        sorted_frame = frame.repartition(1).sortWithinPartitions(PATH)
        commit_chunk(spark, sorted_frame, output, first + index, complete)
        progress(index, chunk)
    return worker_summary(stats.value)


def progress_line(progress, started: float, seen: int, already: int, total: int) -> Callable:
    """A `progress(index, chunk)` for `score_chunks` that hands `progress` one line per committed chunk."""
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
