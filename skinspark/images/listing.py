"""Finding images with Spark: folders and globs through `binaryFile`, zip archives by their central
directories.

Spark lists and plans: its `binaryFile` source walks directories and globs on any Hadoop file system,
and its scan, selecting only `path`, `length` and `modificationTime`, never reads a file's bytes (it
only looks up each file's status). A path ending in `.zip` is an archive read in place
(`skinspark.images.archives`): Spark lists the archive files, the driver plans their members. The
bytes go from storage straight into the Python worker that decodes them (`reader="python"`): plain file
I/O for local and mounted paths, `pyarrow.fs` for `hdfs:`, `s3:`/`s3a:` and `gs:`. The JVM reading each
file and shipping its bytes over Arrow (`binaryFile`'s `content` column, `reader="spark"`) costs about
as much core time as decoding it, so it is only the fallback for file systems that workers cannot open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from skinspark.errors import first_line
from skinspark.images import archives
from skinspark.images.files import ARROW_SCHEMES, LOCAL_SCHEMES, python_readable, scheme_of

# The image files every job takes, any case (.dcm: DICOM, skinspark.images.dicom): one set for folders
# (a Hadoop glob on file names) and zip members alike.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")
_ANY_CASE = ",".join("".join(f"[{c.lower()}{c.upper()}]" for c in suffix[1:]) for suffix in IMAGE_SUFFIXES)
IMAGE_GLOB = f"*.{{{_ANY_CASE}}}"
IMAGE_KINDS = "/".join(IMAGE_SUFFIXES)
ARCHIVE_GLOB = "*.[zZ][iI][pP]"
READERS = ("auto", "python", "spark")
PATH, LENGTH, CONTENT = "path", "length", "content"
FILE_PATH = "file_path"  # the column of `_metadata` that Spark evaluates against its file listing


class ImagePathError(ValueError):
    """No image paths, or a path that does not exist; the message is one line for the user."""


def list_images(spark: SparkSession, paths: Sequence[str], glob: str = IMAGE_GLOB) -> DataFrame:
    """Spark's `binaryFile` source over directories (searched recursively) or globs, any-case
    .jpg/.jpeg/.png/.dcm (or the files `glob` matches).

    Args:
        spark: the session.
        paths: directories or globs; local paths or any Hadoop URI.

    Returns:
        `path`, `length`, `modificationTime` and, only read when selected, `content`.

    Raises:
        ImagePathError: no paths, or a path does not exist.
    """
    if not paths:
        raise ImagePathError("no image paths given")
    # The scan looks at each file (its status, and with `content` its bytes) when a query runs, not
    # only when listing: a file gone by then is skipped rather than failing the task, and each job
    # finds such files by comparing what came back with its listing.
    frame = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", glob)
        .option("ignoreMissingFiles", "true")
        .option("ignoreCorruptFiles", "true")
    )
    try:
        return frame.load(list(paths))
    except AnalysisException as error:
        raise ImagePathError(f"image path not found: {first_line(error)}") from None


def resolve_reader(reader: str, paths: Sequence[str]) -> str:
    """The reader to use for `paths`: "python" or "spark".

    "auto" is "python" when every path is a plain or `file:` path (local disks, NFS, FUSE mounts, which
    every worker opens alike) and "spark" otherwise. An explicit "python" also covers `hdfs:`, `s3:`,
    `s3a:` and `gs:` through `pyarrow.fs`.

    Raises:
        ValueError: an unknown reader, or "python" for a scheme no Python file system handles.
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    schemes = {scheme_of(path) for path in paths}
    if reader == "auto":
        return "python" if schemes <= set(LOCAL_SCHEMES) else "spark"
    unknown = sorted(schemes - set(LOCAL_SCHEMES) - set(ARROW_SCHEMES))
    if reader == "python" and unknown:
        raise ValueError(f"reader 'python' cannot open {unknown[0]}: paths; use reader 'spark'")
    return reader


def zero_byte_files(frame: DataFrame, scanned: Sequence[str]) -> list[str]:
    """Paths Spark listed but its scan never returned: zero-byte files, which file scans skip.

    Args:
        frame: `list_images`' frame (its file index holds the whole listing).
        scanned: the `path` values the scan returned.

    Returns:
        The missing paths, in the scan's form (`file:/a b/c.jpg`), sorted.
    """
    # The index's paths cross from the JVM one py4j call each (about 0.1 s per 10,000 files), so they
    # are fetched only when the index holds more files than the scan returned.
    listed = listed_files(frame)
    if len(listed) <= len(scanned):
        return []
    seen = {path_key(path) for path in scanned}
    return sorted({path_key(path) for path in listed} - seen)


def listed_files(frame: DataFrame):
    """Every file in the file index of `list_images`' frame, as a JVM array of URI-encoded paths
    (`file:///a/b%20c`): the scan skips zero-byte files and files gone since the listing; the index
    still holds them."""
    return frame._jdf.inputFiles()


def file_index(frame: DataFrame, listed=None) -> DataFrame:
    """`listed_files` as rows, built in the JVM (the paths never reach Python): `file_path` in the
    form of the scan's `_metadata.file_path` (`file:/a/b%20c`) and `path` decoded (`file:/a/b c`)."""
    listed = listed_files(frame) if listed is None else listed
    spark = frame.sparkSession
    every = Column(spark._jvm.org.apache.spark.sql.functions.lit(listed))
    # The index writes `file:///a`, the scan `file:/a`; both are URI-encoded.
    file_path = F.regexp_replace(FILE_PATH, r"^([A-Za-z][A-Za-z0-9+.-]*):///", "$1:/")
    decoded = F.call_function(
        "reflect",
        F.lit("java.net.URLDecoder"),
        F.lit("decode"),
        F.regexp_replace(FILE_PATH, r"\+", "%2B"),
        F.lit("UTF-8"),
    )
    rows = spark.range(1).select(F.explode(every).alias(FILE_PATH)).select(file_path.alias(FILE_PATH))
    return rows.select(FILE_PATH, decoded.alias(PATH))


def path_key(uri: str) -> str:
    """A path in the form Spark's scan reports it: the file index says `file:///a/b%20c`, the scan
    `file:/a/b c`."""
    parts = urlsplit(uri)
    path = unquote(parts.path)
    return f"{parts.scheme}://{parts.netloc}{path}" if parts.netloc else f"{parts.scheme}:{path}"


def image_id(path: str) -> str:
    """The file name without its extension (`.../ISIC_0024306.jpg` -> `ISIC_0024306`).

    Spark's `path` is already decoded, so the name is taken as it is: decoding it again would mangle
    names holding `%XX` and fail on a bare `%`.
    """
    name = path.rsplit("/", 1)[-1]
    stem, dot, _ = name.rpartition(".")
    return stem if dot else name


def image_id_column(path_column: str = PATH) -> Column:
    """`image_id` as a Spark column: the file name without its extension (see `image_id`)."""
    name = F.regexp_extract(F.col(path_column), r"([^/]*)$", 1)
    return F.regexp_replace(name, r"\.[^.]*$", "")


def listing_settings() -> dict[str, str]:
    """Spark settings for a scan that reads no bytes (`path`, `length` only): one task per core."""
    return {"spark.sql.files.openCostInBytes": "0", "spark.sql.files.maxPartitionBytes": str(1 << 50)}


def scan_settings(partition_mb: int, open_cost_bytes: int, batch_rows: int) -> dict[str, str]:
    """Spark settings for a scan of image files feeding a pandas UDF.

    Spark charges every file a 4 MB open cost by default, which packs ~120 KB JPEGs about 4 to a
    partition: hundreds of tiny tasks. A near-zero cost and ~partition_mb partitions give few, evenly
    sized tasks; Arrow batches of `batch_rows` rows bound the memory of one call into Python.
    """
    return {
        "spark.sql.files.openCostInBytes": str(open_cost_bytes),
        "spark.sql.files.maxPartitionBytes": str(partition_mb * 1024 * 1024),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_rows),
    }


@dataclasses.dataclass
class Listing:
    """A job's image inputs: `files`, Spark's `binaryFile` frame over the folders and globs (None when
    there are none), and `archives`, the plan of the zip archives' members (None when there are none)."""

    files: DataFrame | None
    archives: archives.ArchivePlan | None

    def members_frame(self, spark: SparkSession) -> DataFrame | None:
        """The members as a Spark frame (`path`, `length`, the coordinates, `reason`, `message`), in
        archive and offset order, so that each task reads a run of one archive."""
        if self.archives is None:
            return None
        members = self.archives.members
        spark_schema = ", ".join(
            [f"{PATH} string", f"{LENGTH} bigint"]
            + [f"{name} {kind}" for name, kind in archives.MEMBER_TYPES.items()]
            + ["reason string", "message string"]
        )
        return spark.createDataFrame(members, spark_schema)

    def entries(self, spark: SparkSession, reader: str) -> DataFrame:
        """Every readable image, file or member, with the columns `skinspark.images.batch_contents`
        reads from (`read_columns(reader, members=True)`): a member's coordinates are null for a file."""
        parts = []
        if self.files is not None:
            columns = [PATH, CONTENT] if reader == "spark" else [PATH]
            nulls = [F.lit(None).cast(kind).alias(name) for name, kind in archives.MEMBER_TYPES.items()]
            parts.append(self.files.select(*columns, LENGTH, *nulls))
        members = self.members_frame(spark)
        if members is not None:
            readable = members.where(F.col("reason").isNull())
            content = [F.lit(None).cast("binary").alias(CONTENT)] if reader == "spark" else []
            parts.append(readable.select(PATH, *content, LENGTH, *archives.MEMBER_COLUMNS))
        frame = parts[0]
        for part in parts[1:]:
            frame = frame.unionByName(part)
        return frame


def list_sources(spark: SparkSession, paths: Sequence[str]) -> Listing:
    """List a job's image inputs: folders and globs with `list_images`, and each path ending in `.zip`
    (any case) as an archive read in place (Spark lists the archive files, the driver reads their
    central directories).

    Raises:
        ImagePathError: no paths, a path that does not exist, or an archive a Python worker could
            not open (a scheme `pyarrow.fs` does not handle).
    """
    if not paths:
        raise ImagePathError("no image paths given")
    zips = [path for path in paths if archives.is_archive(path)]
    folders = [path for path in paths if not archives.is_archive(path)]
    files = list_images(spark, folders) if folders else None
    plan = None
    if zips:
        unreadable = [path for path in zips if not python_readable(path)]
        if unreadable:
            raise ImagePathError(
                f"zip archives are read in place by the Python workers, which cannot open {unreadable[0]}"
            )
        listed = list_images(spark, zips, ARCHIVE_GLOB).select(PATH).collect()
        found = sorted({row[PATH] for row in listed})
        if not found:
            raise ImagePathError(f"no zip archive found at {', '.join(zips)}")
        plan = archives.plan_archives(found, IMAGE_SUFFIXES)
    return Listing(files, plan)
