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
4. `resolve_fates` + `split_plan` (+ `fold_plan` with `folds`): every file and every CSV row gets
   exactly one fate, ingested or a quarantine reason; whole lesions are assigned to splits per class
   (and the train and val lesions to cross-validation folds).
5. `write_table`: one Spark job reads each planned file in the Python worker (`reader: python`) or
   takes Spark's `content` column (`reader: spark`), decodes it with
   `skinspark.preprocess.decode_image` and writes the table partitioned by split into a staging
   directory; files that fail become quarantine rows (`apply_failures`). Then `_quarantine/`,
   `_manifest.json` and `_config.yaml` are written and the directory is moved into place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pyspark.sql import SparkSession

from skinspark import images, schema, storage
from skinspark.config import IngestConfig
from skinspark.errors import ConfigError
from skinspark.images import dicom
from skinspark.images.archives import is_archive
from skinspark.ingest.fates import (
    apply_failures,
    fold_plan,
    ingested_pairs,
    list_files,
    quarantine_table,
    resolve_fates,
    settle_repeated_ids,
    split_plan,
)
from skinspark.ingest.metadata import (
    CORRUPT_COLUMN,
    ROW_NUMBER,
    check_encoding,
    detect_separator,
    read_header_line,
    read_metadata,
    validate_metadata,
)
from skinspark.ingest.report import (
    IngestError,
    IngestResult,
    bad_fraction,
    count,
    fold_counts,
    ingest_summary,
    judge,
    manifest_for,
)
from skinspark.ingest.table import write_table
from skinspark.manifest import COUNTS_KEY, publish, staging_path, write_record

__all__ = [
    "CORRUPT_COLUMN",
    "ROW_NUMBER",
    "IngestError",
    "IngestResult",
    "apply_failures",
    "check_encoding",
    "fold_plan",
    "ingest",
    "list_files",
    "quarantine_table",
    "read_metadata",
    "resolve_fates",
    "settle_repeated_ids",
    "split_plan",
    "ingest_summary",
    "validate_metadata",
    "write_table",
]


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
        config: sizes, seed, split fractions, folds, thresholds, reader and partitioning.
        config_text: the resolved config as YAML, written beside the output as `_config.yaml`.

    Returns:
        IngestResult with the manifest. When bad input exceeds `config.max_bad_fraction` the table
        is not published: the quarantine and manifest go to `<output>_rejected` and the result's
        status is "failed".

    Raises:
        IngestError: missing/empty/malformed CSV, unknown encoding, a missing image path, no images
            found, a bad setting, or too few lesions for the folds.
    """
    started = time.perf_counter()
    try:
        config.check()
    except ConfigError as error:
        raise IngestError(str(error)) from None
    output = storage.qualify(spark, output)
    metadata_path = storage.qualify(spark, metadata_path)
    image_paths = [storage.qualify(spark, path) for path in image_paths]
    listing, reader = _list_images(spark, image_paths, config.reader)
    frame = listing.entries(spark, reader)

    raw_rows = read_metadata(spark, metadata_path, config.metadata_encoding).toPandas()
    rows = validate_metadata(raw_rows, config.metadata_encoding)
    files = list_files(spark, listing, config)
    if files.empty:
        raise IngestError(f"no {images.IMAGE_KINDS} images found under {', '.join(image_paths)}")
    _check_dicom(files)
    files = settle_repeated_ids(spark, frame, files, config, reader)
    files, rows = resolve_fates(files, rows)
    plan = split_plan(ingested_pairs(files, rows), config.split, config.seed, config.split_by)
    try:
        plan, fold_warnings = fold_plan(plan, config.folds, config.seed, config.split_by)
    except ValueError as error:  # too few lesions (or images) for the folds
        raise IngestError(str(error)) from None

    staging = staging_path(output)
    try:
        written = write_table(spark, frame, plan, config, reader, staging) if len(plan) else None
        failures = written.failures if written else {}
        files, rows, plan = apply_failures(files, rows, plan, failures)
        counts = count(files, rows, plan, rows_read=len(raw_rows))
        if config.folds:
            counts["folds"] = fold_counts(plan, config.folds)
        manifest = manifest_for(config, reader, image_paths, metadata_path, counts)
        _record_inputs(manifest, spark, metadata_path, listing, written)
        if fold_warnings:
            manifest["fold_warnings"] = fold_warnings
        bad = bad_fraction(counts)
        manifest["bad_fraction"] = round(bad, 6)
        quarantine = quarantine_table(files, rows)
        target = judge(manifest, bad, config.max_bad_fraction, output)
        if target != output:  # too much bad input: the table is dropped, the quarantine published
            storage.delete(spark, staging)
            staging = staging_path(target)
        _finish(spark, staging, quarantine, manifest, config_text, target, started)
        return IngestResult(target, manifest)
    except BaseException:
        storage.delete(spark, staging)
        raise


def _record_inputs(manifest: dict, spark, metadata_path: str, listing: images.Listing, written) -> None:
    """Add what the inputs were like to the manifest: the metadata's separator, the archives' counts
    (members, images, skipped, ignored) and the notes of images ingested with a remark (a multi-frame
    DICOM's first frame)."""
    separator = detect_separator(read_header_line(spark, metadata_path))
    manifest["inputs"]["metadata_separator"] = "tab" if separator == "\t" else "comma"
    if listing.archives is not None:
        manifest["archives"] = {"totals": listing.archives.totals(), "by_archive": listing.archives.counts}
    if written and written.notes:
        manifest["notes"] = {"count": len(written.notes), "first": dict(sorted(written.notes.items())[:20])}


def _list_images(spark: SparkSession, image_paths: Sequence[str], reader: str) -> tuple[images.Listing, str]:
    """The job's images (folders, globs and zip archives) and who reads the folders' files.

    Raises:
        IngestError: a missing path, a bad reader, or an archive that is not a readable zip (named).
    """
    try:
        folders = [path for path in image_paths if not is_archive(path)]
        reader = images.resolve_reader(reader, folders)
        listing = images.list_sources(spark, image_paths)
    except ValueError as error:
        raise IngestError(str(error)) from None
    if listing.archives is not None and not listing.archives.broken.empty:
        raise IngestError(listing.archives.broken["message"].iloc[0])
    return listing, reader


def _check_dicom(files) -> None:
    """DICOM inputs need pydicom: one clear line before any image is read."""
    if not dicom.available() and files[schema.SOURCE_PATH].str.lower().str.endswith(dicom.SUFFIX).any():
        raise IngestError(f"DICOM inputs (.dcm) need pydicom: {dicom.INSTALL_HINT}")


def _finish(spark, staging, quarantine, manifest, config_text, output, started) -> None:
    """Write the quarantine, manifest and config into `staging` (which may already hold the table) and
    move it into place at `output`."""
    spark.createDataFrame(quarantine, schema.QUARANTINE_SCHEMA).coalesce(1).write.parquet(
        f"{staging}/_quarantine"
    )
    seconds = time.perf_counter() - started
    manifest["seconds"] = round(seconds, 3)
    manifest["images_per_second"] = round(manifest[COUNTS_KEY]["files"]["seen"] / seconds, 1)
    write_record(spark, staging, manifest, config_text)
    publish(spark, staging, output)
