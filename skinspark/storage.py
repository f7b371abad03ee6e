"""Small file-system operations on any Hadoop URI (file:, hdfs:, s3a:) through Spark's JVM.

Jobs write to a staging path and move the finished result into place with these, so a reader never
sees half a table, on a laptop's disk and on HDFS alike.
"""

from __future__ import annotations

import uuid

from pyspark.sql import SparkSession


def _fs_and_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hadoop_path


def qualify(spark: SparkSession, path: str) -> str:
    """An absolute, scheme-qualified URI for `path` (a plain local path becomes `file:/...`)."""
    fs, hadoop_path = _fs_and_path(spark, path)
    return str(fs.makeQualified(hadoop_path).toString())


def exists(spark: SparkSession, path: str) -> bool:
    fs, hadoop_path = _fs_and_path(spark, path)
    return bool(fs.exists(hadoop_path))


def delete(spark: SparkSession, path: str) -> None:
    fs, hadoop_path = _fs_and_path(spark, path)
    fs.delete(hadoop_path, True)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write (replace) a small text file, e.g. a manifest or a resolved config."""
    fs, hadoop_path = _fs_and_path(spark, path)
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark: SparkSession, path: str) -> str:
    """Read a small text file, such as one written by `write_text`, in one JVM call (no Spark job).

    Spark's text source would skip it: it takes names starting with "_" or "." for metadata.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    fs, hadoop_path = _fs_and_path(spark, path)
    if not fs.exists(hadoop_path):
        raise FileNotFoundError(f"no such file: {path}")
    stream = fs.open(hadoop_path)
    try:
        return str(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
    finally:
        stream.close()


def staging_path(final: str) -> str:
    """A unique sibling path of `final` to write into before `publish` moves it into place."""
    final = final.rstrip("/")
    parent, _, name = final.rpartition("/")
    return (
        f"{parent}/.{name}.staging-{uuid.uuid4().hex[:12]}"
        if parent
        else f".{name}.staging-{uuid.uuid4().hex[:12]}"
    )


def publish(spark: SparkSession, staging: str, final: str) -> None:
    """Move a finished staging directory to `final`, replacing what was there.

    On HDFS and local disks the final rename is atomic; an old `final` is moved aside first and
    deleted only after the new one is in place.

    Raises:
        OSError: the file system refused a rename.
    """
    fs, final_path = _fs_and_path(spark, final)
    _, staging_hadoop = _fs_and_path(spark, staging)
    old = None
    if fs.exists(final_path):
        old = _fs_and_path(spark, staging_path(final) + ".old")[1]
        if not fs.rename(final_path, old):
            raise OSError(f"could not move the existing {final} aside")
    parent = final_path.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    if not fs.rename(staging_hadoop, final_path):
        raise OSError(f"could not move {staging} to {final}")
    if old is not None:
        fs.delete(old, True)
