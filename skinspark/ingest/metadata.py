"""The metadata file, comma- or tab-separated: read as raw text with an all-string schema, decoded
strictly, checked row by row."""

from __future__ import annotations

import codecs
import csv

import pandas as pd
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import schema
from skinspark.errors import first_line
from skinspark.ingest.report import IngestError

CORRUPT_COLUMN = "_corrupt_record"
ROW_NUMBER = "_row"
# The file is read as raw text, one character per byte, and each field decoded afterwards (see
# read_metadata): Spark's own decoding would replace bad bytes without saying so.
RAW_TEXT_ENCODING = "ISO-8859-1"
COMMA = ","
# Harvard Dataverse ships HAM10000's metadata as `HAM10000_metadata.tab`: tab-separated, text quoted.
TAB = "\t"
BOM = "\ufeff"


def read_metadata(spark: SparkSession, csv_path: str, encoding: str = "utf-8") -> DataFrame:
    """Read the metadata file with an explicit all-string schema taken from (and checked against) its header.

    The separator is a comma or a tab, whichever the header line shows (`detect_separator`; the file's
    extension does not matter); text fields may be double-quoted, as in Dataverse's `.tab` export. The
    seven HAM10000 columns must be present; further columns (the current release's `dataset`) are
    carried through. Malformed lines land in `_corrupt_record` instead of failing the read. Spark would
    silently turn bytes that are not valid in the file's encoding into U+FFFD, so the text is read
    losslessly, one character per byte (`RAW_TEXT_ENCODING`), and `validate_metadata` decodes each
    field in `encoding`, rejecting a row that does not decode instead of rewriting it.

    Args:
        spark: the session.
        csv_path: the metadata file (`.csv`, `.tab`, `.tsv`, ...), any Hadoop URI or local path.
        encoding: the file's text encoding; must be ASCII-compatible.

    Returns:
        The file's columns as raw text, `_corrupt_record`, and `_row` (0, 1, ... in file order).

    Raises:
        IngestError: the file is missing, empty or lacks required columns (with a hint when it looks
            `;`-separated), or `encoding` is unknown or not ASCII-compatible (UTF-16 and UTF-32 are
            not: save the file as UTF-8).
    """
    check_encoding(encoding)
    header = read_header_line(spark, csv_path)
    separator = detect_separator(header)
    columns = _checked_columns(header, separator, csv_path)
    fields = [T.StructField(name, T.StringType(), True) for name in columns]
    csv_schema = T.StructType([*fields, T.StructField(CORRUPT_COLUMN, T.StringType(), True)])
    frame = spark.read.csv(
        csv_path,
        sep=separator,
        header=True,
        schema=csv_schema,
        enforceSchema=True,  # the header was checked above; raw text would show a BOM as three characters
        encoding=RAW_TEXT_ENCODING,
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=CORRUPT_COLUMN,
    )
    # One partition: `_row` is then 0, 1, 2, ... in file order, so a message can name the line.
    return frame.coalesce(1).withColumn(ROW_NUMBER, F.monotonically_increasing_id())


def read_header_line(spark: SparkSession, csv_path: str) -> str:
    """The metadata file's first line as text, for `detect_separator`.

    Raises:
        IngestError: the file is missing, unreadable or empty.
    """
    try:
        first = spark.read.text(csv_path).first()
    except AnalysisException as error:
        raise IngestError(f"metadata CSV not found or unreadable: {csv_path} ({first_line(error)})") from None
    if first is None:
        raise IngestError(f"metadata CSV is empty: {csv_path}")
    return first.value


def detect_separator(header_line: str) -> str:
    """`TAB` when the header line splits into all of `schema.METADATA_COLUMNS` on tabs (names may be
    double-quoted, a BOM is ignored), else `COMMA`; a header that fits neither fails later, in
    `read_metadata`, with the columns it has."""
    return COMMA if _missing_columns(_header_columns(header_line, TAB)) else TAB


def _header_columns(header_line: str, separator: str) -> list[str]:
    """The column names of a header line split on `separator`: unquoted, stripped, without a BOM."""
    # The BOM goes before parsing: in front of a quoted first name it would keep its quotes literal.
    return [name.strip() for name in next(csv.reader([header_line.lstrip(BOM)], delimiter=separator))]


def _missing_columns(columns: list[str]) -> list[str]:
    """The required columns (`schema.METADATA_COLUMNS`) that `columns` lacks, in schema order."""
    return [name for name in schema.METADATA_COLUMNS if name not in columns]


def _checked_columns(header_line: str, separator: str, csv_path: str) -> list[str]:
    """The header's column names; raises IngestError unless they hold the required columns, once each."""
    columns = _header_columns(header_line, separator)
    missing = _missing_columns(columns)
    if missing:
        raise IngestError(
            f"metadata CSV {csv_path} lacks required columns {missing}; its header has {columns}"
            + _separator_hint(header_line)
        )
    if len(set(columns)) != len(columns) or CORRUPT_COLUMN in columns or "" in columns:
        raise IngestError(f"metadata CSV {csv_path} has empty or repeated column names: {columns}")
    return columns


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; raises IngestError unless Python knows it and it keeps ASCII as is
    (the file's commas, tabs, quotes and newlines are then the same bytes in every such encoding)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise IngestError(f"unknown metadata encoding {encoding!r}") from None
    probe = 'a,"b"\tc\n'
    try:
        same = probe.encode(name) == probe.encode("ascii")
    except UnicodeError:
        same = False
    if not same:
        raise IngestError(
            f"metadata encoding {encoding!r} is not ASCII-compatible; save the CSV as UTF-8 and use utf-8"
        )
    return name


def _separator_hint(header_line: str) -> str:
    # Only `;` is left to hint at: commas and tabs are both read.
    if not _missing_columns(_header_columns(header_line, ";")):
        return "; the file looks ';'-separated: save it comma- or tab-separated"
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
