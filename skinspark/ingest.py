"""Ingest: HAM10000 JPEGs + metadata CSV -> resized image tensors in Parquet, split by lesion.

The flow: plan from what is known before any image is read, then one pass that reads, decodes and
writes (the driver sees about 200 bytes per file and no image bytes):

1. `read_metadata` + `validate_metadata`: the CSV with an explicit all-string schema, read as raw text
   and decoded field by field in the given encoding, checked row by row (bad rows get a reason
   instead of becoming silent nulls or replacement characters).
2. `list_files`: Spark's listing (`skinspark.images.list_images`): path, size, image id; files over
   the size cap and zero-byte files get their reason here and are never read.
3. `settle_repeated_ids`: only files whose image id occurs more than once are read first, hashed and
   test-decoded, to tell an identical copy from a conflicting file.
4. `resolve_fates` + `split_plan`: every file and every CSV row gets exactly one fate, ingested or a
   quarantine reason; whole lesions are assigned to splits per class.
5. `write_table`: one Spark job reads each planned file in the Python worker (`reader: python`) or
   takes Spark's `content` column (`reader: spark`), decodes it with
   `skinspark.preprocess.decode_image` and writes the table partitioned by split into a staging
   directory; files that fail become quarantine rows (`apply_failures`). Then `_quarantine/`,
   `_manifest.json` and `_config.yaml` are written and the directory is moved into place.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import json
import math
import time
from collections.abc import Iterator, Sequence

import pandas as pd
from pyspark.accumulators import AccumulatorParam
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import images, schema, storage
from skinspark.config import IngestConfig
from skinspark.errors import first_line
from skinspark.preprocess import ImageError, decode_many
from skinspark.session import query_settings
from skinspark.split import assign_splits, check_fractions
from skinspark.versions import package_versions

CORRUPT_COLUMN = "_corrupt_record"
ROW_NUMBER = "_row"
# The CSV is read as raw text, one character per byte, and each field decoded afterwards (see
# read_metadata): Spark's own decoding would replace bad bytes without saying so.
RAW_TEXT_ENCODING = "ISO-8859-1"


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


def read_metadata(spark: SparkSession, csv_path: str, encoding: str = "utf-8") -> DataFrame:
    """Read the metadata CSV with an explicit all-string schema taken from (and checked against) its header.

    The seven HAM10000 columns must be present; further columns (the current release's `dataset`) are
    carried through. Malformed lines land in `_corrupt_record` instead of failing the read. Spark would
    silently turn bytes that are not valid in the file's encoding into U+FFFD, so the text is read
    losslessly, one character per byte (`RAW_TEXT_ENCODING`), and `validate_metadata` decodes each
    field in `encoding`, rejecting a row that does not decode instead of rewriting it.

    Returns:
        The CSV's columns as raw text, `_corrupt_record`, and `_row` (0, 1, ... in file order).

    Raises:
        IngestError: the file is missing, empty or lacks required columns, or `encoding` is unknown or
            not ASCII-compatible (UTF-16 and UTF-32 are not: save the CSV as UTF-8).
    """
    check_encoding(encoding)
    try:
        first = spark.read.text(csv_path).first()
    except AnalysisException as error:
        raise IngestError(f"metadata CSV not found or unreadable: {csv_path} ({first_line(error)})") from None
    if first is None:
        raise IngestError(f"metadata CSV is empty: {csv_path}")
    columns = [name.strip().lstrip("\ufeff") for name in next(csv.reader([first.value]))]
    missing = [name for name in schema.METADATA_COLUMNS if name not in columns]
    if missing:
        raise IngestError(
            f"metadata CSV {csv_path} lacks required columns {missing}; its header has {columns}"
            + _separator_hint(first.value)
        )
    if len(set(columns)) != len(columns) or CORRUPT_COLUMN in columns or "" in columns:
        raise IngestError(f"metadata CSV {csv_path} has empty or repeated column names: {columns}")
    fields = [T.StructField(name, T.StringType(), True) for name in columns]
    csv_schema = T.StructType([*fields, T.StructField(CORRUPT_COLUMN, T.StringType(), True)])
    frame = spark.read.csv(
        csv_path,
        header=True,
        schema=csv_schema,
        enforceSchema=True,  # the header was checked above; raw text would show a BOM as three characters
        encoding=RAW_TEXT_ENCODING,
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=CORRUPT_COLUMN,
    )
    # One partition: `_row` is then 0, 1, 2, ... in file order, so a message can name the line.
    return frame.coalesce(1).withColumn(ROW_NUMBER, F.monotonically_increasing_id())


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; raises IngestError unless Python knows it and it keeps ASCII as is
    (the CSV's commas, quotes and newlines are then the same bytes in every such encoding)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise IngestError(f"unknown metadata encoding {encoding!r}") from None
    probe = 'a,"b"\n'
    try:
        same = probe.encode(name) == probe.encode("ascii")
    except UnicodeError:
        same = False
    if not same:
        raise IngestError(
            f"metadata encoding {encoding!r} is not ASCII-compatible; save the CSV as UTF-8 and use utf-8"
        )
    return name


def _separator_hint(header: str) -> str:
    for separator, name in ((";", "';'"), ("\t", "tab")):
        parts = [part.strip().strip('"').lstrip("\ufeff") for part in header.split(separator)]
        if all(column in parts for column in schema.METADATA_COLUMNS):
            return f"; the file looks {name}-separated: save it comma-separated"
    return ""


def validate_metadata(meta: pd.DataFrame, encoding: str = "utf-8") -> pd.DataFrame:
    """Check each CSV row; return the rows with `reason` and `message` (None for a valid row) and float `age`.

    Checks: text that decodes in `encoding` (else `invalid_encoding`, naming the line), a well-formed
    line, non-empty `image_id` and `lesion_id`, `dx` one of the 7 labels, `age` empty or a number in
    0-120, `sex` male/female/unknown, and `image_id` unique. Identical repeats of a row are kept once
    (the others get `duplicate_row`); rows that share an `image_id` but disagree all get
    `duplicate_image_id`, since no one can tell which is right.

    Args:
        meta: the CSV as raw text, one character per byte (`read_metadata(...).toPandas()`), with
            `_row` giving file order (plain ASCII text reads the same either way).
        encoding: the file's text encoding.
    """
    rows, undecodable = decode_text(meta, encoding)
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
    for index, message in undecodable.items():  # the text itself is wrong: that is the reason to give
        rows.loc[index, ["reason", "message"]] = [schema.REASON_INVALID_ENCODING, message]
    invalid = invalid | rows["reason"].notna()
    _mark_duplicate_rows(rows, invalid, meta.columns)
    rows[schema.AGE] = age.where(age_text != "").astype("float32")
    return rows


def decode_text(meta: pd.DataFrame, encoding: str) -> tuple[pd.DataFrame, dict]:
    """Decode every field of the raw CSV text in `encoding`.

    Returns:
        (the rows with decoded text, {row index: message} for each row with a field that does not
        decode; such a row keeps its raw text and is quarantined, never rewritten).
    """
    rows = meta.copy()
    name = check_encoding(encoding)
    undecodable: dict = {}
    text_columns = [column for column in rows.columns if column != ROW_NUMBER]
    for column in text_columns:
        values = rows[column]
        present = values.notna()
        if not present.any():
            continue
        ascii_only = values[present].astype(str).map(str.isascii)
        if ascii_only.all() or name == codecs.lookup(RAW_TEXT_ENCODING).name:
            continue
        decoded = values.astype(object).copy()
        for index in ascii_only.index[~ascii_only.to_numpy()]:
            raw = str(values[index]).encode(RAW_TEXT_ENCODING)
            try:
                decoded[index] = raw.decode(name)
            except UnicodeDecodeError as error:
                shown = raw.decode(name, errors="backslashreplace")
                line = int(rows.loc[index, ROW_NUMBER]) + 2 if ROW_NUMBER in rows else None
                where = f"line {line}: " if line is not None else ""
                undecodable.setdefault(
                    index,
                    f"{where}column {column} is not valid {encoding} (byte 0x{raw[error.start]:02x} at "
                    f"position {error.start}): '{shown}'",
                )
        rows[column] = decoded
    return rows, undecodable


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
# Images: listed and planned before any byte is read


def list_files(spark: SparkSession, frame: DataFrame, config: IngestConfig) -> pd.DataFrame:
    """One row per listed image file, from Spark's listing alone (no file is opened).

    Args:
        frame: `skinspark.images.list_images` over the job's paths.

    Returns:
        `source_path`, `image_id`, `length`, `sha1` (None: only repeated ids are hashed, by
        `settle_repeated_ids`), `reason` and `message`: `image_too_large` for a file over
        `max_image_bytes` (never read) and `empty_file` for a zero-byte file, which Spark's scan skips
        and its file index still lists; None for every other file.
    """
    with query_settings(spark, images.listing_settings()):
        listed = frame.select(images.PATH, images.LENGTH).toPandas()
    empty = images.zero_byte_files(frame, listed[images.PATH])
    paths = [*listed[images.PATH], *empty]
    lengths = [*listed[images.LENGTH].astype("int64"), *([0] * len(empty))]
    files = pd.DataFrame(
        {
            schema.SOURCE_PATH: paths,
            schema.IMAGE_ID: [images.image_id(path) for path in paths],
            images.LENGTH: lengths,
            "sha1": None,
            "reason": None,
            "message": None,
        }
    )
    too_large = files[images.LENGTH] > config.max_image_bytes
    files.loc[too_large, "reason"] = schema.REASON_TOO_LARGE
    files.loc[too_large, "message"] = [
        f"file is {length:,} bytes, over the {config.max_image_bytes:,}-byte limit"
        for length in files.loc[too_large, images.LENGTH]
    ]
    is_empty = files[schema.SOURCE_PATH].isin(set(empty))
    files.loc[is_empty, "reason"] = schema.REASON_EMPTY
    files.loc[is_empty, "message"] = (
        "file is empty (0 bytes): listed, but Spark's file scan skips empty files"
    )
    return files


def settle_repeated_ids(
    spark: SparkSession, frame: DataFrame, files: pd.DataFrame, config: IngestConfig, reader: str
) -> pd.DataFrame:
    """Hash and test-decode the files whose image_id occurs more than once, so that `resolve_fates` can
    tell an identical copy (`duplicate_file`) from a different file (`conflicting_image_files`).

    Every other file needs no read before the one pass that writes the table; on a clean archive no
    file is read here at all.

    Returns:
        `files` with `sha1`, `reason` and `message` filled in for those files.
    """
    readable = files["reason"].isna()
    ids = files.loc[readable, schema.IMAGE_ID]
    repeated = readable & files[schema.IMAGE_ID].isin(set(ids[ids.duplicated()]))
    if not repeated.any():
        return files
    paths = list(files.loc[repeated, schema.SOURCE_PATH])
    check = functools.partial(
        _check_batches, height=config.height, width=config.width, decoder=config.decoder, reader=reader
    )
    columns = [images.PATH, images.CONTENT] if reader == "spark" else [images.PATH]
    with query_settings(spark, _scan_settings(config)):
        checked = (
            frame.where(F.col(images.PATH).isin(paths))
            .select(*columns)
            .mapInPandas(check, CHECKED_SCHEMA)
            .toPandas()
            .set_index(images.PATH)
        )
    files = files.copy()
    for index in files.index[repeated]:
        path = files.at[index, schema.SOURCE_PATH]
        if path in checked.index:
            files.loc[index, ["sha1", "reason", "message"]] = list(
                checked.loc[path, ["sha1", "reason", "message"]]
            )
        else:  # Spark's scan skips a file that vanished after the listing
            files.loc[index, ["reason", "message"]] = [schema.REASON_UNREADABLE, _GONE]
    return files


CHECKED_SCHEMA = T.StructType(
    [
        T.StructField(images.PATH, T.StringType(), False),
        T.StructField("sha1", T.StringType(), True),
        T.StructField("reason", T.StringType(), True),
        T.StructField("message", T.StringType(), True),
    ]
)
_GONE = "cannot read the file: listed, but gone or unreadable when it was read"


def _check_batches(batches: Iterator[pd.DataFrame], height: int, width: int, decoder: str, reader: str):
    import hashlib

    for batch in batches:
        contents = images.batch_contents(batch, reader)
        results = decode_many(contents, height, width, decoder)
        yield pd.DataFrame(
            {
                images.PATH: batch[images.PATH],
                "sha1": [
                    None if isinstance(data, ImageError) else hashlib.sha1(data).hexdigest()
                    for data in contents
                ],
                "reason": [result.reason for result in results],
                "message": [result.message for result in results],
            }
        )


def _scan_settings(config: IngestConfig) -> dict[str, str]:
    return images.scan_settings(config.partition_mb, config.open_cost_bytes, config.arrow_batch_size)


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
    """Run the ingest job: plan from the listing and the CSV, then read, decode and write in one pass.

    Everything but the pixels is known before any image is read: Spark's listing gives each file's
    image id and size, the CSV gives lesions and classes, and so each file's fate and each lesion's
    split. Only files whose image id occurs more than once are read first (hashed, to tell a copy from
    a conflict). Then one Spark job reads each planned file in the Python worker (or takes Spark's
    `content` column, `reader: spark`), decodes it and writes the table; a file that fails to read or
    decode becomes a quarantine row and its CSV row `image_rejected`. The driver sees about 200
    bytes per file (a million files is ~200 MB) and no image bytes.

    Args:
        spark: the session.
        image_paths: directories (searched recursively) or globs, any Hadoop URI or local path.
        metadata_path: the HAM10000 metadata CSV.
        output: the output directory; replaced when it exists, and only once the new one is complete.
        config: sizes, seed, split fractions, thresholds, reader and partitioning.
        config_text: the resolved config as YAML, written beside the output as `_config.yaml`.

    Returns:
        IngestResult with the manifest. When bad input exceeds `config.max_bad_fraction` the table
        is not published: the quarantine and manifest go to `<output>_rejected` and the result's
        status is "failed".

    Raises:
        IngestError: missing/empty/malformed CSV, unknown encoding, a missing image path, no images
            found, or a bad setting.
    """
    started = time.perf_counter()
    fractions = check_fractions(config.split)
    if config.split_by not in SPLIT_UNITS:
        raise IngestError(f"split_by must be one of {sorted(SPLIT_UNITS)}, got {config.split_by!r}")
    output = storage.qualify(spark, output)
    metadata_path = storage.qualify(spark, metadata_path)
    image_paths = [storage.qualify(spark, path) for path in image_paths]
    try:
        reader = images.resolve_reader(config.reader, image_paths)
        frame = images.list_images(spark, image_paths)
    except ValueError as error:
        raise IngestError(str(error)) from None

    raw_rows = read_metadata(spark, metadata_path, config.metadata_encoding).toPandas()
    rows = validate_metadata(raw_rows, config.metadata_encoding)
    files = list_files(spark, frame, config)
    if files.empty:
        raise IngestError(f"no {images.IMAGE_KINDS} images found under {', '.join(image_paths)}")
    files = settle_repeated_ids(spark, frame, files, config, reader)
    files, rows = resolve_fates(files, rows)
    plan = split_plan(_ingested_pairs(files, rows), fractions, config.seed, config.split_by)

    staging = storage.staging_path(output)
    try:
        failures = write_table(spark, frame, plan, config, reader, staging) if len(plan) else {}
        files, rows, plan = apply_failures(files, rows, plan, failures)
        counts = _count(files, rows, plan, rows_read=len(raw_rows))
        manifest = _manifest(config, reader, image_paths, metadata_path, counts)
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
            storage.delete(spark, staging)
            staging = storage.staging_path(target)
            _finish(spark, staging, quarantine, manifest, config_text, target, started)
            return IngestResult(target, manifest)
        manifest["status"] = "complete"
        _finish(spark, staging, quarantine, manifest, config_text, output, started)
        return IngestResult(output, manifest)
    except BaseException:
        storage.delete(spark, staging)
        raise


def write_table(
    spark: SparkSession, frame: DataFrame, plan: pd.DataFrame, config: IngestConfig, reader: str, target: str
) -> dict[str, tuple[str, str]]:
    """The one pass over the images: read, decode and write the planned files as the table at `target`.

    The plan (a few hundred bytes per image) travels to the workers as a broadcast variable, so the
    pixels are neither joined nor shuffled: each task reads its share of the listing, keeps the planned
    files, and writes their rows partitioned by split.

    Returns:
        {source_path: (reason, message)} for each planned file that could not be read or decoded.
    """
    table_schema = _table_schema(plan)
    rows = _plan_rows(plan, table_schema)
    sc = spark.sparkContext
    failures = sc.accumulator([], _ListParam())
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
        seen=seen,
    )
    columns = [images.PATH, images.CONTENT] if reader == "spark" else [images.PATH]
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
    with query_settings(spark, _scan_settings(config)):
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
        # By its part files: the staging directory's name starts with '.', which Spark warns about.
        try:
            table = spark.read.parquet(f"{target}/{schema.SPLIT}=*/part-*")
            written = set(table.select(schema.SOURCE_PATH).toPandas()[schema.SOURCE_PATH])
        except AnalysisException:  # no part file at all: every planned file is gone
            written = set()
        for path in set(plan[schema.SOURCE_PATH]) - written - set(failed):
            failed[path] = (schema.REASON_UNREADABLE, _GONE)
    return failed


def _decode_planned(
    batches: Iterator[pd.DataFrame],
    plan,
    columns: list[str],
    height: int,
    width: int,
    decoder: str,
    reader: str,
    failures,
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
    extra = [
        name for name in plan.columns if name not in {*schema.INGESTED_SCHEMA.fieldNames(), schema.SPLIT}
    ]
    return T.StructType(
        [
            *schema.INGESTED_SCHEMA,
            *[T.StructField(name, T.StringType(), True) for name in extra],
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
    return rows.set_index(schema.SOURCE_PATH, drop=False).rename_axis(images.PATH)


def apply_failures(
    files: pd.DataFrame, rows: pd.DataFrame, plan: pd.DataFrame, failures: dict[str, tuple[str, str]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Record the planned files that failed to read or decode: each gets its reason, its CSV row
    `image_rejected`, and it leaves the plan (the other images keep their splits)."""
    if not failures:
        return files, rows, plan
    files, rows = files.copy(), rows.copy()
    failed = files[schema.SOURCE_PATH].isin(set(failures))
    for index in files.index[failed]:
        files.loc[index, ["reason", "message"]] = list(failures[files.at[index, schema.SOURCE_PATH]])
    reasons = files[failed].set_index(schema.IMAGE_ID)["reason"]
    rejected = rows["reason"].isna() & rows[schema.IMAGE_ID].isin(reasons.index)
    rows.loc[rejected, "reason"] = schema.REASON_IMAGE_REJECTED
    rows.loc[rejected, "message"] = [
        f"its image was quarantined ({reasons[image_id]})" for image_id in rows.loc[rejected, schema.IMAGE_ID]
    ]
    return files, rows, plan[~plan[schema.SOURCE_PATH].isin(set(failures))]


def _ingested_pairs(files: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    good_files = files.loc[files["reason"].isna(), [schema.IMAGE_ID, schema.SOURCE_PATH]]
    good_rows = rows[rows["reason"].isna()].drop(
        columns=["reason", "message", CORRUPT_COLUMN, ROW_NUMBER], errors="ignore"
    )
    return good_rows.merge(good_files, on=schema.IMAGE_ID, how="inner", validate="one_to_one")


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


def _manifest(config: IngestConfig, reader: str, image_paths, metadata_path: str, counts: dict) -> dict:
    return {
        "job": "ingest",
        "status": "running",
        "reader": reader,
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


def _finish(spark, staging, quarantine, manifest, config_text, output, started) -> None:
    """Write the quarantine, manifest and config into `staging` (which may already hold the table) and
    move it into place at `output`."""
    spark.createDataFrame(quarantine, schema.QUARANTINE_SCHEMA).coalesce(1).write.parquet(
        f"{staging}/_quarantine"
    )
    seconds = time.perf_counter() - started
    manifest["seconds"] = round(seconds, 3)
    manifest["images_per_second"] = round(manifest["counts"]["files"]["seen"] / seconds, 1)
    storage.write_text(spark, f"{staging}/_manifest.json", json.dumps(manifest, indent=2, default=str))
    storage.write_text(spark, f"{staging}/_config.yaml", config_text)
    storage.publish(spark, staging, output)


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
