"""Each file's and each CSV row's fate, and each lesion's split, settled before the table is written.

Everything comes from Spark's listing and the CSV; only files whose image id occurs more than once
are read here (hashed and test-decoded).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from skinspark import images, schema
from skinspark.config import SPLIT_UNITS, IngestConfig, check_split_by
from skinspark.ingest.metadata import CORRUPT_COLUMN, ROW_NUMBER
from skinspark.ingest.split import assign_folds, assign_splits, missing_classes
from skinspark.preprocess import ImageError, decode_many
from skinspark.session import query_settings


def list_files(spark: SparkSession, listing: images.Listing, config: IngestConfig) -> pd.DataFrame:
    """One row per listed image file or zip member, from Spark's listing and the archives' central
    directories alone (no image is opened).

    Args:
        listing: `skinspark.images.list_sources` over the job's paths (no broken archive left).

    Returns:
        `source_path`, `image_id`, `length` (a member's declared size), `sha1` (None: only repeated
        ids are hashed, by `settle_repeated_ids`), `reason` and `message`: `image_too_large` for a
        file or member over `max_image_bytes` (never read), `empty_file` for a zero-byte one (Spark's
        scan skips such files; its file index still lists them), an archive member's own reason
        (encrypted, an unreadable compression method); None for every other.
    """
    paths, lengths, reasons, messages = [], [], [], []
    if listing.files is not None:
        with query_settings(spark, images.listing_settings()):
            listed = listing.files.select(images.PATH, images.LENGTH).toPandas()
        empty = images.zero_byte_files(listing.files, listed[images.PATH])
        paths += [*listed[images.PATH], *empty]
        lengths += [*listed[images.LENGTH].astype("int64"), *([0] * len(empty))]
        reasons += [None] * len(paths)
        messages += [None] * len(paths)
    if listing.archives is not None:
        members = listing.archives.members
        paths += list(members[images.PATH])
        lengths += list(members[images.LENGTH].astype("int64"))
        reasons += list(members["reason"])
        messages += list(members["message"])
    files = pd.DataFrame(
        {
            schema.SOURCE_PATH: paths,
            schema.IMAGE_ID: [images.image_id(path) for path in paths],
            images.LENGTH: pd.array(lengths, dtype="int64"),
            "sha1": None,
            "reason": reasons,
            "message": messages,
        }
    )
    files = files.astype({"reason": object, "message": object})
    too_large = files["reason"].isna() & (files[images.LENGTH] > config.max_image_bytes)
    files.loc[too_large, "reason"] = schema.REASON_TOO_LARGE
    files.loc[too_large, "message"] = [
        f"file is {length:,} bytes, over the {config.max_image_bytes:,}-byte limit"
        for length in files.loc[too_large, images.LENGTH]
    ]
    is_empty = files["reason"].isna() & (files[images.LENGTH] == 0)
    files.loc[is_empty, "reason"] = schema.REASON_EMPTY
    files.loc[is_empty, "message"] = "file is empty (0 bytes): never read"
    return files


def settle_repeated_ids(
    spark: SparkSession, frame: DataFrame, files: pd.DataFrame, config: IngestConfig, reader: str
) -> pd.DataFrame:
    """Hash and test-decode the files whose image_id occurs more than once, so that `resolve_fates` can
    tell an identical copy (`duplicate_file`) from a different file (`conflicting_image_files`).

    Every other file needs no read before the one pass that writes the table; on a clean archive no
    file is read here at all. `frame` is `Listing.entries`: every readable file and zip member with
    the columns its reader needs.

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
    columns = images.read_columns(reader, members=True)
    with query_settings(spark, read_settings(config)):
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
            files.loc[index, ["reason", "message"]] = [schema.REASON_UNREADABLE, GONE_MESSAGE]
    return files


CHECKED_SCHEMA = T.StructType(
    [
        T.StructField(images.PATH, T.StringType(), False),
        T.StructField("sha1", T.StringType(), True),
        T.StructField("reason", T.StringType(), True),
        T.StructField("message", T.StringType(), True),
    ]
)
GONE_MESSAGE = "cannot read the file: listed, but gone or unreadable when it was read"


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


def read_settings(config: IngestConfig) -> dict[str, str]:
    return images.scan_settings(config.partition_mb, config.open_cost_bytes, config.arrow_batch_size)


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
    files = _file_fates(files.copy(), rows)
    return files, _row_fates(rows.copy(), files)


def _file_fates(files: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Each decodable file's fate: a conflict, a duplicate copy, an orphan, or ingested."""
    decodable = files["reason"].isna()
    ok_files = files[decodable]
    hashes = ok_files.groupby(schema.IMAGE_ID)["sha1"].nunique()
    first_path = ok_files.groupby(schema.IMAGE_ID)[schema.SOURCE_PATH].min()
    valid_ids = set(rows.loc[rows["reason"].isna(), schema.IMAGE_ID])
    row_reason = rows[rows["reason"].notna()].groupby(schema.IMAGE_ID)["reason"].first()

    ids = files[schema.IMAGE_ID]
    conflict = decodable & (ids.map(hashes) > 1)
    duplicate = decodable & ~conflict & (files[schema.SOURCE_PATH] != ids.map(first_path))
    rejected_row = ids.map(row_reason)
    orphan = decodable & ~conflict & ~duplicate & ~ids.isin(valid_ids)
    fates = [
        (
            conflict,
            schema.REASON_CONFLICT,
            lambda r: f"{int(hashes[r[schema.IMAGE_ID]])} different files are named {r[schema.IMAGE_ID]}",
        ),
        (
            duplicate,
            schema.REASON_DUPLICATE_FILE,
            lambda r: f"identical copy of {first_path[r[schema.IMAGE_ID]]}; ingested once",
        ),
        (
            orphan & rejected_row.isna(),
            schema.REASON_NO_METADATA,
            lambda r: f"no metadata row for image_id {r[schema.IMAGE_ID]}",
        ),
        (
            orphan & rejected_row.notna(),
            schema.REASON_ROW_REJECTED,
            lambda r: f"its metadata row was rejected ({row_reason[r[schema.IMAGE_ID]]})",
        ),
    ]
    for mask, reason, describe in fates:
        _set(files, mask, reason, describe)
    return files


def _row_fates(rows: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
    """Each valid CSV row's fate once the files' are known: no image, its image rejected, or ingested."""
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
    return rows


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


def split_plan(
    pairs: pd.DataFrame, fractions: Sequence[float], seed: int, split_by: str = "lesion"
) -> pd.DataFrame:
    """Add a `split` column to the ingested (row, file) pairs: whole lesions, stratified by class.

    A lesion is stratified by its first diagnosis in label order; HAM10000 gives every image of a
    lesion the same one. `split_by="image"` treats every image as its own unit instead, so photos of
    one lesion can land on both sides: the leaky split, kept only to measure what it inflates.
    """
    unit = SPLIT_UNITS[check_split_by(split_by)]
    units = pairs.groupby(unit, as_index=False).agg(
        **{schema.DX: (schema.DX, "min"), "images": (schema.IMAGE_ID, "size")}
    )
    assigned = assign_splits(units.rename(columns={unit: schema.LESION_ID}), fractions, seed)
    return pairs.merge(
        assigned.rename(columns={schema.LESION_ID: unit}), on=unit, how="left", validate="many_to_one"
    )


def fold_plan(
    plan: pd.DataFrame, folds: int, seed: int, split_by: str = "lesion"
) -> tuple[pd.DataFrame, list[str]]:
    """Add a `fold` column to the split plan: K folds of the train and val rows by the split's unit
    (whole lesions, or images for the leaky split by image), stratified by class; test rows get none.

    Returns:
        (the plan with `fold`, one warning line per class that some folds lack); with `folds` 0 the
        plan unchanged and no warnings.
    """
    if folds == 0:
        return plan, []
    plan = plan.assign(**{schema.FOLD: assign_folds(plan, folds, seed, SPLIT_UNITS[split_by])})
    return plan, missing_classes(plan, folds)


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


def ingested_pairs(files: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    good_files = files.loc[files["reason"].isna(), [schema.IMAGE_ID, schema.SOURCE_PATH]]
    good_rows = rows[rows["reason"].isna()].drop(
        columns=["reason", "message", CORRUPT_COLUMN, ROW_NUMBER], errors="ignore"
    )
    return good_rows.merge(good_files, on=schema.IMAGE_ID, how="inner", validate="one_to_one")
