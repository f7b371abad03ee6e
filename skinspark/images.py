"""Finding image files with Spark and handing their bytes to the Python workers that decode them.

Spark lists and plans: its `binaryFile` source walks directories and globs on any Hadoop file system,
and its scan, selecting only `path`, `length` and `modificationTime`, never reads a file's bytes (it
only looks up each file's status). The bytes go
from storage straight into the Python worker that decodes them (`reader="python"`): plain file I/O for
local and mounted paths, `pyarrow.fs` for `hdfs:`, `s3:`/`s3a:` and `gs:`. The JVM reading each file and
shipping its bytes over Arrow (`binaryFile`'s `content` column, `reader="spark"`) costs about as much
core time as decoding it, so it is only the fallback for file systems that workers cannot open.

A file that cannot be read in the worker (it vanished after the listing, or permissions) is not an
exception but an `ImageError` with reason `unreadable_file` in place of its bytes, so each job turns it
into its own row.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from skinspark import schema
from skinspark.errors import first_line
from skinspark.preprocess import ImageError

# Any-case .jpg / .jpeg / .png (Hadoop glob syntax, applied to file names): one set for every job.
IMAGE_GLOB = "*.{[jJ][pP][gG],[jJ][pP][eE][gG],[pP][nN][gG]}"
IMAGE_KINDS = ".jpg/.jpeg/.png"
READERS = ("auto", "python", "spark")
PATH, LENGTH, CONTENT = "path", "length", "content"
FILE_PATH = "file_path"  # the column of `_metadata` that Spark evaluates against its file listing
# Schemes a Python worker opens itself; anything else is read by Spark (`reader="auto"`).
LOCAL_SCHEMES = ("", "file")
ARROW_SCHEMES = {"hdfs": "hdfs", "viewfs": "hdfs", "s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs"}


class ImagePathError(ValueError):
    """No image paths, or a path that does not exist; the message is one line for the user."""


def list_images(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Spark's `binaryFile` source over directories (searched recursively) or globs, any-case
    .jpg/.jpeg/.png.

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
        .option("pathGlobFilter", IMAGE_GLOB)
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
    schemes = {_scheme(path) for path in paths}
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


# --------------------------------------------------------------------------------------------------
# In the Python worker

_FILE_SYSTEMS: dict[tuple[str, str], object] = {}
_FS_LOCK = threading.Lock()


def read_file(path: str) -> bytes:
    """The bytes of one file, named as Spark lists it (`file:/a/b.jpg`, `/a/b.jpg`, `hdfs://nn/a.jpg`,
    `s3a://bucket/a.jpg`, `gs://bucket/a.jpg`).

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: a scheme no Python file system here handles.
    """
    scheme = _scheme(path)
    if scheme in LOCAL_SCHEMES:
        with open(_local_path(path), "rb") as stream:
            return stream.read()
    file_system, inner = _arrow_location(path)
    with file_system.open_input_stream(inner) as stream:
        return stream.read()


def read_files(paths: Sequence[str]) -> list[bytes | ImageError]:
    """Read each path; a file that cannot be read gives an `ImageError` (`unreadable_file`) instead."""
    contents: list[bytes | ImageError] = []
    for path in paths:
        try:
            contents.append(read_file(path))
        except (OSError, ValueError) as error:
            detail = f"{type(error).__name__}: {error}"
            contents.append(ImageError(schema.REASON_UNREADABLE, f"cannot read the file: {detail}"))
    return contents


def read_columns(reader: str) -> list[str]:
    """The listing columns a reader's workers need: `path`, plus Spark's `content` for "spark"."""
    return [PATH, CONTENT] if reader == "spark" else [PATH]


def batch_contents(batch, reader: str) -> Sequence[bytes | ImageError]:
    """The encoded bytes of each row of a pandas batch: read from `path` ("python") or taken from the
    `content` column Spark filled ("spark")."""
    if reader == "spark":
        return batch[CONTENT]
    return read_files(list(batch[PATH]))


def _scheme(path: str) -> str:
    head, sep, _ = path.partition(":")
    # A Windows drive letter or a plain relative path has no scheme.
    return head.lower() if sep and len(head) > 1 and "/" not in head else ""


def _local_path(path: str) -> str:
    if not path.lower().startswith("file:"):
        return path
    rest = path[len("file:") :]
    if rest.startswith("//"):  # file://host/a or file:///a: keep what follows the authority
        authority, _, tail = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise ValueError(f"cannot open a file on another host: {path}")
        return "/" + tail
    return rest


def _arrow_location(path: str):
    """The pyarrow file system for a path's scheme and authority, and the path inside it."""
    scheme = _scheme(path)
    kind = ARROW_SCHEMES.get(scheme)
    if kind is None:
        raise ValueError(f"no Python file system for {scheme}: paths ({path}); use reader 'spark'")
    rest = path[len(scheme) + 1 :].lstrip("/") if kind != "hdfs" else path[len(scheme) + 1 :]
    if kind == "hdfs":
        authority, _, inner = rest.removeprefix("//").partition("/")
        inner = "/" + inner
    else:
        authority, inner = rest.split("/", 1)[0], rest  # bucket/key
    key = (kind, authority)
    with _FS_LOCK:
        file_system = _FILE_SYSTEMS.get(key)
        if file_system is None:
            file_system = _FILE_SYSTEMS[key] = _connect(kind, authority)
    return file_system, inner


def _connect(kind: str, authority: str):
    from pyarrow import fs

    if kind == "hdfs":
        host, _, port = authority.partition(":")
        return fs.HadoopFileSystem(host or "default", int(port) if port else 0)
    if kind == "s3":
        return fs.S3FileSystem()  # credentials and region from the usual AWS environment and files
    return fs.GcsFileSystem()
