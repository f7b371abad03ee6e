"""The scoring job's inputs: image files listed by binaryFile, zip archives' members planned from their
central directories, or the ingested table; each gives a narrow listing to plan with and the scored
rows of one chunk."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import schema, storage
from skinspark.config import ScoreConfig
from skinspark.errors import first_line
from skinspark.images import (
    CONTENT,
    FILE_PATH,
    Listing,
    dicom,
    file_index,
    image_id_column,
    list_sources,
    listed_files,
    read_columns,
    resolve_reader,
)
from skinspark.images.archives import is_archive
from skinspark.score.columns import (
    ERROR,
    ERROR_REASON,
    LABEL_COLUMNS,
    NOTE,
    PATH,
    prediction_fields,
    value_fields,
)
from skinspark.score.errors import ScoreError
from skinspark.score.keyspace import KEY, Source
from skinspark.score.predict import score_partition


class ImageFiles(Source):
    """Files listed with binaryFile and read by `reader`. The key hashes `_metadata.file_path`, a
    column Spark evaluates against its file listing, so a chunk's key range prunes the files a chunk's
    query opens."""

    def __init__(self, frame: DataFrame, max_image_bytes: int, reader: str):
        self.frame = frame
        self.key = F.xxhash64(F.col(f"_metadata.{FILE_PATH}"))
        self.max_image_bytes = max_image_bytes
        self.reader = reader
        self.empty: DataFrame | None = None

    def listing(self) -> DataFrame:
        listing = self.frame.select(PATH, self.key.alias(KEY))
        return listing if self.empty is None else listing.unionByName(self.empty.select(PATH, KEY))

    def find_empty_files(self, scanned: int) -> int:
        """Find zero-byte files: Spark's file index lists them but its scans skip them, so without
        this they would have no row. Only when the listing holds more files than the scan returned
        (`scanned`) is the listing turned into rows (in the JVM: the paths never reach Python).

        Returns:
            The number of zero-byte files, which `listing` and `chunk` then include.
        """
        listed = listed_files(self.frame)
        if len(listed) <= scanned:
            return 0
        scan = self.frame.select(self.key.alias(KEY))
        empty = self._index(listed).join(scan, KEY, "left_anti")
        self.empty = empty.persist()
        return self.empty.count()

    def _index(self, listed=None) -> DataFrame:
        """`path` and `_key` of every file in Spark's file index (`images.file_index`)."""
        index = file_index(self.frame, listed)
        return index.select(PATH, F.xxhash64(FILE_PATH).alias(KEY))

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
            empty = self.empty.where(F.col(KEY).between(chunk.low, chunk.high)).select(PATH)
        if done is not None:
            readable = readable.join(done, PATH, "left_anti")
            too_large = too_large.join(done, PATH, "left_anti")
            empty = None if empty is None else empty.join(done, PATH, "left_anti")
        predictions = _predicted_files(readable, self.reader, self.labels, udf_args)
        limit = f"file is %d bytes, over the {self.max_image_bytes:,}-byte limit (max_image_bytes)"
        rows = predictions.unionByName(
            _error_rows(too_large, schema.REASON_TOO_LARGE, F.format_string(limit, "length"), self.labels)
        )
        if empty is not None:
            message = F.lit("file is empty (0 bytes)")
            rows = rows.unionByName(_error_rows(empty, schema.REASON_EMPTY, message, self.labels))
        return rows.withColumn(schema.IMAGE_ID, image_id_column(PATH))

    def complete_chunk(self, staging, chunk, done):
        """Error rows for the files of `chunk` that are neither in `staging` nor `done`: Spark's scan
        skips a file that vanished after the listing instead of failing the task."""
        spark = self.frame.sparkSession
        parts = storage.part_files(spark, staging)
        if parts:
            written = spark.read.parquet(*parts).select(PATH)
        else:
            written = spark.createDataFrame([], T.StructType([T.StructField(PATH, T.StringType())]))
        if written.count() >= chunk.files:
            return None
        written = written if done is None else written.unionByName(done)
        listed = self._index().where(F.col(KEY).between(chunk.low, chunk.high)).select(PATH)
        gone = listed.join(written, PATH, "left_anti")
        message = F.lit("cannot read the file: listed, but gone or unreadable when it was read")
        rows = _error_rows(gone, schema.REASON_UNREADABLE, message, self.labels)
        return rows.withColumn(schema.IMAGE_ID, image_id_column(PATH))


class ArchiveMembers(Source):
    """The image members of zip archives (`skinspark.images.archives`), planned on the driver from the
    central directories and read by the Python workers at their offsets. The key hashes the member's
    path (`<archive>!/<name>`); a broken archive is one row of its own, scored as an error."""

    reader = "python"

    def __init__(self, spark: SparkSession, listing: Listing, max_image_bytes: int):
        # Only the counts stay on the driver: the members live in the Spark frame from here on.
        self.counts = {"totals": listing.archives.totals(), "by_archive": listing.archives.counts}
        self.frame = listing.members_frame(spark)
        listing.archives = None
        self.key = F.xxhash64(F.col(PATH))
        self.max_image_bytes = max_image_bytes

    def listing(self) -> DataFrame:
        return self.frame.select(PATH, self.key.alias(KEY))

    def record(self) -> dict:
        return {"archives": self.counts}

    def chunk(self, chunk, done, udf_args):
        selection = self.frame.where(self.key.between(chunk.low, chunk.high))
        if done is not None:
            selection = selection.join(done, PATH, "left_anti")
        planned = F.col("reason").isNull()
        readable = selection.where(planned & (F.col("length") <= self.max_image_bytes))
        columns = read_columns(self.reader, members=True)
        predictions = _predicted_files(readable.select(*columns), self.reader, self.labels, udf_args)
        limit = f"member is %d bytes, over the {self.max_image_bytes:,}-byte limit (max_image_bytes)"
        too_large = selection.where(planned & (F.col("length") > self.max_image_bytes))
        refused = selection.where(~planned)
        rows = predictions.unionByName(
            _error_rows(too_large, schema.REASON_TOO_LARGE, F.format_string(limit, "length"), self.labels)
        ).unionByName(_error_rows(refused, F.col("reason"), F.col("message"), self.labels))
        return rows.withColumn(schema.IMAGE_ID, image_id_column(PATH))


class Combined(Source):
    """Folders and archives given together: each chunk's key range is applied to both."""

    reader = "python"

    def __init__(self, parts: Sequence[Source]):
        self.parts = list(parts)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.parts[0].labels

    @labels.setter
    def labels(self, labels: tuple[str, ...]) -> None:
        for part in self.parts:
            part.labels = labels

    def listing(self) -> DataFrame:
        frames = [part.listing() for part in self.parts]
        return functools.reduce(DataFrame.unionByName, frames)

    def find_empty_files(self, scanned: int) -> int:
        files, members = self.parts
        return files.find_empty_files(scanned - members.listing().count())

    def complete_chunk(self, staging, chunk, done):
        missing = [part.complete_chunk(staging, chunk, done) for part in self.parts]
        missing = [frame for frame in missing if frame is not None]
        return functools.reduce(DataFrame.unionByName, missing) if missing else None

    def chunk(self, chunk, done, udf_args):
        frames = [part.chunk(chunk, done, udf_args) for part in self.parts]
        return functools.reduce(DataFrame.unionByName, frames)

    def release(self) -> None:
        for part in self.parts:
            part.release()

    def record(self) -> dict:
        return {key: value for part in self.parts for key, value in part.record().items()}


def _predicted_files(readable: DataFrame, reader: str, labels: Sequence[str], udf_args: dict) -> DataFrame:
    """The scored rows of files or members whose bytes the workers read (`reader`): `path` and the
    prediction fields."""
    return readable.mapInPandas(
        functools.partial(
            score_partition,
            data_column=CONTENT,
            raw_pixels=False,
            passthrough=[PATH],
            reader=reader,
            **udf_args,
        ),
        T.StructType([T.StructField(PATH, T.StringType(), False), *prediction_fields(labels)]),
    )


def _error_rows(files: DataFrame, reason: str | Column, message: Column, labels: Sequence[str]) -> DataFrame:
    """Rows for files that are never decoded: null predictions, the reason and 'reason: message'."""
    return files.select(
        PATH,
        *[F.lit(None).cast(field.dataType).alias(field.name) for field in value_fields(labels)],
        (reason if isinstance(reason, Column) else F.lit(reason)).alias(ERROR_REASON),
        F.concat(reason if isinstance(reason, Column) else F.lit(reason), F.lit(": "), message).alias(ERROR),
        F.lit(None).cast("string").alias(NOTE),
    )


class Table(Source):
    """The ingested table: stored pixels, scored with their labels carried along."""

    labelled = True

    def __init__(self, frame: DataFrame):
        self.frame = frame
        self.key = F.xxhash64(F.col(schema.SOURCE_PATH))

    def listing(self) -> DataFrame:
        return self.frame.select(F.col(schema.SOURCE_PATH).alias(PATH), self.key.alias(KEY))

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
                score_partition, data_column=schema.IMAGE, raw_pixels=True, passthrough=carried, **udf_args
            ),
            T.StructType([*carried_fields, *prediction_fields(self.labels)]),
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


def open_source(
    spark: SparkSession, config: ScoreConfig, spec: dict, images: Sequence[str] | None, table: str | None
) -> tuple[Source, dict]:
    """The job's input, image files or an ingested table, and its record for the manifest.

    Raises:
        ScoreError: a missing path or table, a bad reader, or a table of another image size.
    """
    if images is not None:
        paths = [storage.qualify(spark, path) for path in images]
        source = _image_source(spark, config, paths)
        inputs = {"images": paths}
    else:
        frame = read_table(spark, table)
        _check_table_size(frame, spec)
        source = Table(frame)
        inputs = {"table": storage.qualify(spark, table)}
    source.labels = tuple(spec["labels"])
    return source, inputs


def _image_source(spark: SparkSession, config: ScoreConfig, paths: Sequence[str]) -> Source:
    """Files in folders and globs, members of zip archives, or both (`Combined`).

    Raises:
        ScoreError: a missing path, a bad reader, or DICOM inputs without pydicom.
    """
    try:
        listing = list_sources(spark, paths)
        parts: list[Source] = []
        if listing.files is not None:
            folders = [path for path in paths if not is_archive(path)]
            reader = resolve_reader(config.reader, folders)
            parts.append(ImageFiles(listing.files, config.max_image_bytes, reader))
        if listing.archives is not None:
            parts.append(ArchiveMembers(spark, listing, config.max_image_bytes))
    except ValueError as error:  # ImagePathError included
        raise ScoreError(str(error)) from None
    source = parts[0] if len(parts) == 1 else Combined(parts)
    if not dicom.available():
        is_dicom = F.lower(F.col(PATH)).endswith(dicom.SUFFIX)
        if source.listing().where(is_dicom).limit(1).count():
            raise ScoreError(f"DICOM inputs (.dcm) need pydicom: {dicom.INSTALL_HINT}")
    return source


def _check_table_size(frame: DataFrame, spec: dict) -> None:
    sizes = frame.select(schema.HEIGHT, schema.WIDTH).distinct().limit(5).collect()
    wrong = [(row[0], row[1]) for row in sizes if (row[0], row[1]) != (spec["height"], spec["width"])]
    if wrong:
        raise ScoreError(
            f"the table's images are {wrong[0][1]}x{wrong[0][0]}, the model takes "
            f"{spec['width']}x{spec['height']}: ingest again with the model's size"
        )
