"""Ingest: HAM10000 JPEGs + metadata CSV -> resized image tensors in Parquet, split by lesion.

The flow (every step runs on executors; the driver sees only counts and a few hundred bytes per
lesion):

1. `read_metadata` + `validate_metadata`: the CSV with an explicit all-string schema, checked row by
   row (bad rows get a reason instead of becoming silent nulls).
2. `read_image_files`: Spark's `binaryFile` source over directories or globs; files over the size cap
   are listed but never read.
3. `decode_images`: `mapInPandas` over Arrow batches with `skinspark.preprocess.decode_image`
   (JPEG DCT scaling), persisted so later steps reuse the pixels without decoding twice.
4. `resolve_fates`: every file and every CSV row gets exactly one fate, ingested or a quarantine
   reason (duplicates, conflicts, orphans), computed on narrow columns only.
5. `skinspark.split.assign_splits` per class (`applyInPandas`), then the table is written partitioned
   by split into a staging directory with `_quarantine/`, `_manifest.json` and `_config.yaml`, and
   moved into place.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import time
from collections.abc import Iterator, Sequence
from urllib.parse import unquote, urlsplit

import pandas as pd
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import schema, storage
from skinspark.config import IngestConfig
from skinspark.preprocess import decode_many
from skinspark.split import assign_splits, check_fractions
from skinspark.versions import package_versions

# Any-case .jpg / .jpeg (Hadoop glob syntax, applied to file names).
IMAGE_GLOB = "*.{[jJ][pP][gG],[jJ][pP][eE][gG]}"
CORRUPT_COLUMN = "_corrupt_record"
ROW_NUMBER = "_row"

DECODED_SCHEMA = T.StructType(
    [
        T.StructField(schema.SOURCE_PATH, T.StringType(), False),
        T.StructField("sha1", T.StringType(), True),
        T.StructField(schema.IMAGE, T.BinaryType(), True),
        T.StructField("reason", T.StringType(), True),
        T.StructField("message", T.StringType(), True),
    ]
)


class IngestError(RuntimeError):
    """A problem that stops the whole job (missing CSV, no images, too much bad input).

    The message is one line meant for the person running the job.
    """


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """What `ingest` wrote and counted."""

    output: str
    manifest: dict

    @property
    def ok(self) -> bool:
        return self.manifest["status"] == "complete"


# --------------------------------------------------------------------------------------------------
# Metadata


def read_metadata(spark: SparkSession, csv_path: str) -> DataFrame:
    """Read the metadata CSV with an explicit all-string schema taken from (and checked against) its header.

    The seven HAM10000 columns must be present; further columns (the current release's `dataset`) are
    carried through. Malformed lines land in `_corrupt_record` instead of failing the read.

    Raises:
        IngestError: the file is missing, empty or lacks required columns.
    """
    try:
        first = spark.read.text(csv_path).first()
    except AnalysisException as error:
        raise IngestError(
            f"metadata CSV not found or unreadable: {csv_path} ({_first_line(error)})"
        ) from None
    if first is None:
        raise IngestError(f"metadata CSV is empty: {csv_path}")
    columns = [name.strip().lstrip("\ufeff") for name in next(csv.reader([first.value]))]
    missing = [name for name in schema.METADATA_COLUMNS if name not in columns]
    if missing:
        raise IngestError(
            f"metadata CSV {csv_path} lacks required columns {missing}; its header has {columns}"
        )
    if len(set(columns)) != len(columns) or CORRUPT_COLUMN in columns or "" in columns:
        raise IngestError(f"metadata CSV {csv_path} has empty or repeated column names: {columns}")
    fields = [T.StructField(name, T.StringType(), True) for name in columns]
    csv_schema = T.StructType([*fields, T.StructField(CORRUPT_COLUMN, T.StringType(), True)])
    frame = spark.read.csv(
        csv_path,
        header=True,
        schema=csv_schema,
        enforceSchema=False,
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=CORRUPT_COLUMN,
    )
    return frame.withColumn(ROW_NUMBER, F.monotonically_increasing_id())


def validate_metadata(meta: pd.DataFrame) -> pd.DataFrame:
    """Check each CSV row; return the rows with `reason` and `message` (None for a valid row) and float `age`.

    Checks: a well-formed line, non-empty `image_id` and `lesion_id`, `dx` one of the 7 labels, `age`
    empty or a number in 0-120, `sex` male/female/unknown, and `image_id` unique. Identical repeats
    of a row are kept once (the others get `duplicate_row`); rows that share an `image_id` but
    disagree all get `duplicate_image_id`, since no one can tell which is right.

    Args:
        meta: the CSV as strings (`read_metadata(...).toPandas()`), with `_row` giving file order.
    """
    rows = meta.copy()
    for name in schema.METADATA_COLUMNS:
        rows[name] = rows[name].astype("string").str.strip()
    rows[schema.SEX] = rows[schema.SEX].str.lower()
    age_text = rows[schema.AGE].fillna("")
    age = pd.to_numeric(age_text.astype(object), errors="coerce").astype("float64")
    bad_age = (age_text != "") & ~age.between(schema.AGE_MIN, schema.AGE_MAX)
    labels = list(schema.LABELS)
    corrupt = rows[CORRUPT_COLUMN].notna() if CORRUPT_COLUMN in rows else pd.Series(False, index=rows.index)
    checks = [
        (corrupt, lambda r: "malformed CSV line (wrong number of fields)"),
        (_blank(rows[schema.IMAGE_ID]), lambda r: "image_id is empty"),
        (_blank(rows[schema.LESION_ID]), lambda r: "lesion_id is empty"),
        (
            ~rows[schema.DX].isin(labels).fillna(False),
            lambda r: f"dx '{_text(r[schema.DX])}' is not one of {labels}",
        ),
        (bad_age, lambda r: f"age '{_text(r[schema.AGE])}' is not empty or a number in 0-120"),
        (
            ~rows[schema.SEX].isin(schema.SEX_VALUES).fillna(False),
            lambda r: f"sex '{_text(r[schema.SEX])}' is not male/female/unknown",
        ),
    ]
    messages = pd.Series([[] for _ in range(len(rows))], index=rows.index, dtype=object)
    for failed, describe in checks:
        for index in rows.index[failed.fillna(False).to_numpy(dtype=bool)]:
            messages[index].append(describe(rows.loc[index]))
    rows["reason"] = None
    rows["message"] = None
    invalid = messages.map(bool)
    rows.loc[invalid, "reason"] = schema.REASON_INVALID_FIELD
    rows.loc[invalid, "message"] = messages[invalid].map("; ".join)
    _mark_duplicate_rows(rows, invalid, meta.columns)
    rows[schema.AGE] = age.where(age_text != "").astype("float32")
    return rows


def _mark_duplicate_rows(rows: pd.DataFrame, invalid: pd.Series, columns) -> None:
    data_columns = [name for name in columns if name not in (CORRUPT_COLUMN, ROW_NUMBER)]
    with_id = rows[~_blank(rows[schema.IMAGE_ID])]
    copies = with_id.groupby(schema.IMAGE_ID)[ROW_NUMBER].transform("size")
    repeated = with_id[copies > 1]
    if repeated.empty:
        return
    variants = (
        repeated[data_columns]
        .astype(str)
        .agg("\x1f".join, axis=1)
        .groupby(repeated[schema.IMAGE_ID])
        .nunique()
    )
    first_row = repeated.groupby(schema.IMAGE_ID)[ROW_NUMBER].transform("min")
    for index, row in repeated.iterrows():
        if invalid[index]:
            continue
        image_id = row[schema.IMAGE_ID]
        if variants[image_id] > 1:
            count = int((repeated[schema.IMAGE_ID] == image_id).sum())
            rows.loc[index, ["reason", "message"]] = [
                schema.REASON_DUPLICATE_ID,
                f"{count} rows with image_id {image_id} disagree",
            ]
        elif row[ROW_NUMBER] != first_row[index]:
            rows.loc[index, ["reason", "message"]] = [
                schema.REASON_DUPLICATE_ROW,
                f"identical repeat of the row for {image_id}; kept once",
            ]


def _blank(values: pd.Series) -> pd.Series:
    return values.isna() | (values.astype("string").str.strip() == "")


def _text(value) -> str:
    return "" if pd.isna(value) else str(value)


# --------------------------------------------------------------------------------------------------
# Images


def read_image_files(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Spark's `binaryFile` source over directories (searched recursively) or globs, any-case .jpg/.jpeg.

    Returns:
        Columns `path`, `modificationTime`, `length`, `content` (content is only read when selected).

    Raises:
        IngestError: a path does not exist.
    """
    if not paths:
        raise IngestError("no image paths given")
    try:
        return (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", IMAGE_GLOB)
            .load(list(paths))
        )
    except AnalysisException as error:
        raise IngestError(f"image path not found: {_first_line(error)}") from None


def image_id_column(path_column: str = "path"):
    """The file name without its extension (`.../ISIC_0024306.jpg` -> `ISIC_0024306`).

    binaryFile's `path` is already decoded, so the name is taken as it is: decoding it again would
    mangle names holding `%XX` and fail on a bare `%`.
    """
    name = F.regexp_extract(F.col(path_column), r"([^/]*)$", 1)
    return F.regexp_replace(name, r"\.[^.]*$", "")


def decode_images(
    files: DataFrame, height: int, width: int, decoder: str, arrow_batch_size: int
) -> DataFrame:
    """Decode and resize every file's bytes over Arrow batches; failures become rows with a reason.

    Returns:
        Columns `source_path`, `sha1` (of the file's bytes), `image` (raw uint8 pixels, row-major
        height x width x 3; null on failure), `reason`, `message`.
    """
    spark = files.sparkSession
    # Bounded Arrow batches: 10,000 rows (Spark's default) of full-size JPEGs would be over a gigabyte.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch_size))
    decode = functools.partial(_decode_batches, height=height, width=width, decoder=decoder)
    return files.select("path", "content").mapInPandas(decode, DECODED_SCHEMA)


def _decode_batches(batches: Iterator[pd.DataFrame], height: int, width: int, decoder: str):
    import hashlib

    for batch in batches:
        contents = batch["content"]
        results = decode_many(contents, height, width, decoder)
        yield pd.DataFrame(
            {
                schema.SOURCE_PATH: batch["path"],
                "sha1": [hashlib.sha1(data).hexdigest() for data in contents],
                schema.IMAGE: [
                    None if result.pixels is None else result.pixels.tobytes() for result in results
                ],
                "reason": [result.reason for result in results],
                "message": [result.message for result in results],
            }
        )


# --------------------------------------------------------------------------------------------------
# Fates


def resolve_fates(files: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every file and every CSV row exactly one fate: ingested (reason None) or a quarantine reason.

    Args:
        files: one row per file: `source_path`, `image_id`, `sha1`, `reason`, `message`
            (reason set when the file could not be decoded).
        rows: `validate_metadata`'s output.

    Returns:
        (files, rows) with final `reason` and `message`. Files: identical copies under one image_id
        keep the first path and record the others as `duplicate_file`; differing decodable files
        under one image_id are all `conflicting_image_files`; a file with no valid row is
        `image_without_metadata` or `metadata_row_rejected`. Rows: a valid row whose image is missing
        is `metadata_without_image`; one whose files were all quarantined is `image_rejected`.
    """
    files = files.copy()
    rows = rows.copy()
    decodable = files["reason"].isna()
    ok_files = files[decodable]
    hashes = ok_files.groupby(schema.IMAGE_ID)["sha1"].nunique()
    first_path = ok_files.groupby(schema.IMAGE_ID)[schema.SOURCE_PATH].min()
    valid_ids = set(rows.loc[rows["reason"].isna(), schema.IMAGE_ID])
    row_reason = rows[rows["reason"].notna()].groupby(schema.IMAGE_ID)["reason"].first()

    ids = files[schema.IMAGE_ID]
    file_hashes = ids.map(hashes)
    conflict = decodable & (file_hashes > 1)
    duplicate = decodable & ~conflict & (files[schema.SOURCE_PATH] != ids.map(first_path))
    has_valid_row = ids.isin(valid_ids)
    rejected_row = ids.map(row_reason)
    orphan = decodable & ~conflict & ~duplicate & ~has_valid_row
    _set(
        files,
        conflict,
        schema.REASON_CONFLICT,
        lambda r: f"{int(hashes[r[schema.IMAGE_ID]])} different files are named {r[schema.IMAGE_ID]}",
    )
    _set(
        files,
        duplicate,
        schema.REASON_DUPLICATE_FILE,
        lambda r: f"identical copy of {first_path[r[schema.IMAGE_ID]]}; ingested once",
    )
    _set(
        files,
        orphan & rejected_row.isna(),
        schema.REASON_NO_METADATA,
        lambda r: f"no metadata row for image_id {r[schema.IMAGE_ID]}",
    )
    _set(
        files,
        orphan & rejected_row.notna(),
        schema.REASON_ROW_REJECTED,
        lambda r: f"its metadata row was rejected ({row_reason[r[schema.IMAGE_ID]]})",
    )

    file_ids = set(files[schema.IMAGE_ID])
    ingested_ids = set(files.loc[files["reason"].isna(), schema.IMAGE_ID])
    file_reason = files[files["reason"].notna()].groupby(schema.IMAGE_ID)["reason"].first()
    valid = rows["reason"].isna()
    no_image = valid & ~rows[schema.IMAGE_ID].isin(file_ids)
    image_rejected = valid & ~no_image & ~rows[schema.IMAGE_ID].isin(ingested_ids)
    _set(
        rows,
        no_image,
        schema.REASON_NO_IMAGE,
        lambda r: f"no image file found for image_id {r[schema.IMAGE_ID]}",
    )
    _set(
        rows,
        image_rejected,
        schema.REASON_IMAGE_REJECTED,
        lambda r: f"its image was quarantined ({file_reason[r[schema.IMAGE_ID]]})",
    )
    return files, rows


def _set(frame: pd.DataFrame, mask: pd.Series, reason: str, describe) -> None:
    mask = mask.fillna(False).to_numpy(dtype=bool)
    if mask.any():
        frame.loc[mask, "reason"] = reason
        frame.loc[mask, "message"] = [describe(row) for _, row in frame.loc[mask].iterrows()]


def quarantine_table(files: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The quarantine table: one row per rejected (or duplicate) file and CSV row."""
    columns = ["item", schema.SOURCE_PATH, schema.IMAGE_ID, "reason", "message"]
    bad_files = files[files["reason"].notna()].assign(item=schema.ITEM_FILE)
    bad_rows = rows[rows["reason"].notna()].assign(item=schema.ITEM_ROW, **{schema.SOURCE_PATH: None})
    table = pd.concat([bad_files[columns], bad_rows[columns]], ignore_index=True)
    return table.astype(object).where(table.notna(), None)


SPLIT_UNITS = {"lesion": schema.LESION_ID, "image": schema.IMAGE_ID}


def split_plan(
    pairs: pd.DataFrame, fractions: Sequence[float], seed: int, split_by: str = "lesion"
) -> pd.DataFrame:
    """Add a `split` column to the ingested (row, file) pairs: whole lesions, stratified by class.

    A lesion is stratified by its first diagnosis in label order; HAM10000 gives every image of a
    lesion the same one. `split_by="image"` treats every image as its own unit instead, so photos of
    one lesion can land on both sides: the leaky split, kept only to measure what it inflates.
    """
    if split_by not in SPLIT_UNITS:
        raise ValueError(f"split_by must be one of {sorted(SPLIT_UNITS)}, got {split_by!r}")
    unit = SPLIT_UNITS[split_by]
    units = pairs.groupby(unit, as_index=False).agg(
        **{schema.DX: (schema.DX, "min"), "images": (schema.IMAGE_ID, "size")}
    )
    assigned = assign_splits(units.rename(columns={unit: schema.LESION_ID}), fractions, seed)
    return pairs.merge(
        assigned.rename(columns={schema.LESION_ID: unit}), on=unit, how="left", validate="many_to_one"
    )


# --------------------------------------------------------------------------------------------------
# The job


def ingest(
    spark: SparkSession,
    image_paths: Sequence[str],
    metadata_path: str,
    output: str,
    config: IngestConfig,
    config_text: str = "",
) -> IngestResult:
    """Run the ingest job: decode, validate, split and write the tensor table.

    Images are decoded once on executors and kept (persisted) while the driver resolves each file's
    and row's fate on narrow columns (about 200 bytes per file: a million files is ~200 MB), then
    the pixels are joined with the plan and written. No image bytes reach the driver.

    Args:
        spark: the session.
        image_paths: directories (searched recursively) or globs, any Hadoop URI or local path.
        metadata_path: the HAM10000 metadata CSV.
        output: the output directory; replaced when it exists, and only once the new one is complete.
        config: sizes, seed, split fractions, thresholds and partitioning.
        config_text: the resolved config as YAML, written beside the output as `_config.yaml`.

    Returns:
        IngestResult with the manifest. When bad input exceeds `config.max_bad_fraction` the table
        is not published: the quarantine and manifest go to `<output>_rejected` and the result's
        status is "failed".

    Raises:
        IngestError: missing/empty/malformed CSV, missing image path, or no images found.
    """
    started = time.perf_counter()
    fractions = check_fractions(config.split)
    if config.split_by not in SPLIT_UNITS:
        raise IngestError(f"split_by must be one of {sorted(SPLIT_UNITS)}, got {config.split_by!r}")
    output = storage.qualify(spark, output)
    metadata_path = storage.qualify(spark, metadata_path)
    image_paths = [storage.qualify(spark, path) for path in image_paths]
    _set_read_partitioning(spark, config)

    raw_rows = read_metadata(spark, metadata_path).toPandas()
    rows = validate_metadata(raw_rows)
    listing = read_image_files(spark, image_paths)
    decoded = _decoded_files(listing, config).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # The one pass that reads and decodes every image; the pixels stay in the persisted frame.
        status = decoded.select(schema.SOURCE_PATH, schema.IMAGE_ID, "sha1", "reason", "message").toPandas()
        status = pd.concat([status, _unscanned_files(listing.inputFiles(), status)], ignore_index=True)
        if status.empty:
            raise IngestError(f"no .jpg/.jpeg images found under {', '.join(image_paths)}")
        files, rows = resolve_fates(status, rows)
        plan = split_plan(_ingested_pairs(files, rows), fractions, config.seed, config.split_by)
        counts = _count(files, rows, plan, rows_read=len(raw_rows))
        manifest = _manifest(config, image_paths, metadata_path, counts)
        bad = _bad_fraction(counts)
        manifest["bad_fraction"] = round(bad, 6)
        quarantine = quarantine_table(files, rows)
        if bad > config.max_bad_fraction:
            target = output + "_rejected"
            manifest["status"] = "failed"
            manifest["error"] = (
                f"{bad:.1%} of the input is bad, over --max-bad-fraction {config.max_bad_fraction:.1%}; "
                f"the table was not written, see {target}/_quarantine"
            )
            _write_outputs(spark, None, quarantine, manifest, config, config_text, target, started)
            return IngestResult(target, manifest)
        table = _final_table(spark, decoded, plan, config)
        manifest["status"] = "complete"
        _write_outputs(spark, table, quarantine, manifest, config, config_text, output, started)
        return IngestResult(output, manifest)
    finally:
        decoded.unpersist()


def _unscanned_files(listed: Sequence[str], status: pd.DataFrame) -> pd.DataFrame:
    """Files Spark listed but its scan never returned: zero-byte files, which file sources skip.

    Without this they would vanish silently; the driver's file index holds the listing anyway.
    """
    scanned = {_path_key(path) for path in status[schema.SOURCE_PATH]}
    missing = sorted(path for path in listed if _path_key(path) not in scanned)
    return pd.DataFrame(
        {
            schema.SOURCE_PATH: [_path_key(path) for path in missing],
            schema.IMAGE_ID: [_path_key(path).rsplit("/", 1)[-1].rsplit(".", 1)[0] for path in missing],
            "sha1": [None] * len(missing),
            "reason": [schema.REASON_EMPTY] * len(missing),
            "message": ["file is empty (0 bytes): listed, but Spark's file scan skips empty files"]
            * len(missing),
        }
    )


def _path_key(uri: str) -> str:
    # The file index says file:///a/b%20c, the scan says file:/a/b c: compare in the scan's form.
    parts = urlsplit(uri)
    path = unquote(parts.path)
    return f"{parts.scheme}://{parts.netloc}{path}" if parts.netloc else f"{parts.scheme}:{path}"


def _decoded_files(files: DataFrame, config: IngestConfig) -> DataFrame:
    # binaryFile pushes the length filter down, so oversized files are listed but never read.
    too_large = files.filter(F.col("length") > config.max_image_bytes).select(
        F.col("path").alias(schema.SOURCE_PATH),
        F.lit(None).cast("string").alias("sha1"),
        F.lit(None).cast("binary").alias(schema.IMAGE),
        F.lit(schema.REASON_TOO_LARGE).alias("reason"),
        F.format_string(f"file is %d bytes, over the {config.max_image_bytes:,}-byte limit", "length").alias(
            "message"
        ),
    )
    readable = files.filter(F.col("length") <= config.max_image_bytes)
    decoded = decode_images(readable, config.height, config.width, config.decoder, config.arrow_batch_size)
    return decoded.unionByName(too_large).withColumn(schema.IMAGE_ID, image_id_column(schema.SOURCE_PATH))


def _set_read_partitioning(spark: SparkSession, config: IngestConfig) -> None:
    # Spark charges every file a 4 MB open cost by default, which packs ~120 KB JPEGs about 4 to a
    # partition: hundreds of tiny tasks. A near-zero cost and ~partition_mb partitions give few,
    # evenly sized tasks whose Arrow batches stream through the decoder.
    spark.conf.set("spark.sql.files.openCostInBytes", str(config.open_cost_bytes))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(config.partition_mb * 1024 * 1024))


def _ingested_pairs(files: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    good_files = files.loc[files["reason"].isna(), [schema.IMAGE_ID, schema.SOURCE_PATH]]
    good_rows = rows[rows["reason"].isna()].drop(
        columns=["reason", "message", CORRUPT_COLUMN, ROW_NUMBER], errors="ignore"
    )
    return good_rows.merge(good_files, on=schema.IMAGE_ID, how="inner", validate="one_to_one")


def _final_table(
    spark: SparkSession, decoded: DataFrame, plan: pd.DataFrame, config: IngestConfig
) -> DataFrame:
    plan = plan.assign(**{schema.LABEL: plan[schema.DX].map(schema.LABEL_INDEX).astype("int32")})
    extra = [
        name for name in plan.columns if name not in {*schema.INGESTED_SCHEMA.fieldNames(), schema.SPLIT}
    ]
    plan_schema = T.StructType(
        [field for field in schema.INGESTED_SCHEMA if field.name in plan.columns]
        + [T.StructField(name, T.StringType(), True) for name in extra]
        + [T.StructField(schema.SPLIT, T.StringType(), False)]
    )
    plan = plan[plan_schema.fieldNames()].astype(object).where(plan[plan_schema.fieldNames()].notna(), None)
    plan_frame = spark.createDataFrame(plan, plan_schema)
    pixels = decoded.filter(F.col("reason").isNull()).select(schema.SOURCE_PATH, schema.IMAGE)
    # The plan is a few hundred bytes per image: broadcast it rather than shuffle the pixels.
    joined = pixels.join(F.broadcast(plan_frame), schema.SOURCE_PATH)
    sizes = {schema.HEIGHT: config.height, schema.WIDTH: config.width}
    columns = [
        F.lit(sizes[field.name]).cast("int").alias(field.name) if field.name in sizes else F.col(field.name)
        for field in schema.INGESTED_SCHEMA
    ]
    table = joined.select(*columns, *extra, schema.SPLIT)
    # Pixels are already decoded and persisted, so merging partitions here costs no decode
    # parallelism; it gives files of about rows_per_file rows instead of three small ones per task.
    # As many writers as cores (or a multiple of them), so no core idles through a last lone file.
    cores = spark.sparkContext.defaultParallelism
    files = cores * max(1, math.ceil(len(plan) / (config.rows_per_file * cores)))
    return table.coalesce(files).sortWithinPartitions(schema.SPLIT, schema.IMAGE_ID)


def _count(files: pd.DataFrame, rows: pd.DataFrame, plan: pd.DataFrame, rows_read: int) -> dict:
    file_reasons = files["reason"].value_counts().to_dict()
    row_reasons = rows["reason"].value_counts().to_dict()
    files_ingested = int(files["reason"].isna().sum())
    rows_ingested = int(rows["reason"].isna().sum())
    by_class = plan.groupby([schema.SPLIT, schema.DX]).size()
    lesions = plan.groupby(schema.SPLIT)[schema.LESION_ID].nunique()
    splits = {}
    for split in schema.SPLITS:
        classes = {label: int(by_class.get((split, label), 0)) for label in schema.LABELS}
        splits[split] = {
            "images": sum(classes.values()),
            "lesions": int(lesions.get(split, 0)),
            "by_class": classes,
        }
    counts = {
        "files": {
            "seen": len(files),
            "ingested": files_ingested,
            "quarantined": int(sum(file_reasons.values())),
            "by_reason": {k: int(v) for k, v in sorted(file_reasons.items())},
        },
        "rows": {
            "read": rows_read,
            "ingested": rows_ingested,
            "quarantined": int(sum(row_reasons.values())),
            "by_reason": {k: int(v) for k, v in sorted(row_reasons.items())},
        },
        "splits": splits,
    }
    # Nothing may disappear: every file and every CSV row is ingested or quarantined, exactly once,
    # and every ingested row is paired with exactly one ingested file.
    if counts["files"]["seen"] != files_ingested + counts["files"]["quarantined"]:
        raise IngestError(f"file accounting mismatch: {counts['files']}")
    if rows_read != len(rows) or rows_read != rows_ingested + counts["rows"]["quarantined"]:
        raise IngestError(f"CSV accounting mismatch: {rows_read} rows read, {counts['rows']}")
    if not rows_ingested == files_ingested == len(plan) == sum(split["images"] for split in splits.values()):
        raise IngestError(f"pairing mismatch: {rows_ingested} rows vs {files_ingested} files ingested")
    return counts


def _bad_fraction(counts: dict) -> float:
    def bad(section):
        return sum(n for reason, n in section["by_reason"].items() if reason not in schema.BENIGN_REASONS)

    files, rows = counts["files"], counts["rows"]
    return max(bad(files) / max(files["seen"], 1), bad(rows) / max(rows["read"], 1))


def _manifest(config: IngestConfig, image_paths, metadata_path: str, counts: dict) -> dict:
    return {
        "job": "ingest",
        "status": "running",
        "inputs": {"images": list(image_paths), "metadata": metadata_path},
        "image_shape": [config.height, config.width, 3],
        "columns": [*schema.INGESTED_SCHEMA.fieldNames(), schema.SPLIT],
        "counts": counts,
        "quarantine": {
            **{f"file:{k}": v for k, v in counts["files"]["by_reason"].items()},
            **{f"row:{k}": v for k, v in counts["rows"]["by_reason"].items()},
        },
        "config": dataclasses.asdict(config),
        "versions": package_versions(),
    }


def _write_outputs(spark, table, quarantine, manifest, config, config_text, output, started) -> None:
    staging = storage.staging_path(output)
    try:
        if table is not None:
            (
                table.write.mode("overwrite")
                .option("maxRecordsPerFile", config.rows_per_file)
                .option("parquet.block.size", config.row_group_mb * 1024 * 1024)
                .partitionBy(schema.SPLIT)
                .parquet(staging)
            )
        spark.createDataFrame(quarantine, schema.QUARANTINE_SCHEMA).coalesce(1).write.parquet(
            f"{staging}/_quarantine"
        )
        seconds = time.perf_counter() - started
        manifest["seconds"] = round(seconds, 3)
        manifest["images_per_second"] = round(manifest["counts"]["files"]["seen"] / seconds, 1)
        storage.write_text(spark, f"{staging}/_manifest.json", json.dumps(manifest, indent=2, default=str))
        storage.write_text(spark, f"{staging}/_config.yaml", config_text)
        storage.publish(spark, staging, output)
    except BaseException:
        storage.delete(spark, staging)
        raise


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def summary(manifest: dict) -> str:
    """A one-screen, human-readable summary of an ingest manifest."""
    counts = manifest["counts"]
    lines = [
        f"ingest {manifest['status']}: {counts['files']['seen']} files, {counts['rows']['read']} CSV rows "
        f"in {manifest.get('seconds', 0):.1f} s ({manifest.get('images_per_second', 0):.0f} images/s)",
        f"  ingested {counts['files']['ingested']} images; "
        f"quarantined {counts['files']['quarantined']} files and {counts['rows']['quarantined']} rows "
        f"(bad fraction {manifest.get('bad_fraction', 0):.2%})",
    ]
    header = "  split   images lesions  " + " ".join(f"{label:>6}" for label in schema.LABELS)
    lines.append(header)
    for split in schema.SPLITS:
        entry = counts["splits"][split]
        by_class = " ".join(f"{entry['by_class'][label]:>6}" for label in schema.LABELS)
        lines.append(f"  {split:<6} {entry['images']:>7} {entry['lesions']:>7}  {by_class}")
    for key, value in manifest["quarantine"].items():
        lines.append(f"  quarantine {key}: {value}")
    if manifest.get("error"):
        lines.append(f"  ERROR: {manifest['error']}")
    return "\n".join(lines)
