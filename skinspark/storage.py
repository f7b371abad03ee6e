"""Small file-system operations on any Hadoop URI (file:, hdfs:, s3a:) through Spark's JVM.

Jobs write to a staging path and move the finished result into place (`skinspark.manifest.publish`),
so a reader never sees half a table, on a laptop's disk and on HDFS alike.
"""

from __future__ import annotations

from pyspark.sql import SparkSession


def file_system(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Hadoop Path) for `path`, as the session's Hadoop configuration resolves it."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hadoop_path


def qualify(spark: SparkSession, path: str) -> str:
    """An absolute, scheme-qualified URI for `path` (a plain local path becomes `file:/...`)."""
    fs, hadoop_path = file_system(spark, path)
    return str(fs.makeQualified(hadoop_path).toString())


def exists(spark: SparkSession, path: str) -> bool:
    fs, hadoop_path = file_system(spark, path)
    return bool(fs.exists(hadoop_path))


def delete(spark: SparkSession, path: str) -> None:
    fs, hadoop_path = file_system(spark, path)
    fs.delete(hadoop_path, True)


def list_names(spark: SparkSession, directory: str) -> list[str]:
    """The names in `directory` (hidden ones included); [] when it does not exist."""
    fs, path = file_system(spark, directory)
    if not fs.exists(path):
        return []
    return [status.getPath().getName() for status in fs.listStatus(path)]


def part_files(spark: SparkSession, directory: str) -> list[str]:
    """The paths of the part files a Spark write left in `directory` ([] when there are none).

    Reading them by name rather than the directory or a glob: Spark 3.5 warns about a directory whose
    name starts with '.' (a staging one), and Spark 4 logs a stack trace for a glob it cannot check for
    a streaming sink's metadata.
    """
    return [
        f"{directory}/{name}" for name in sorted(list_names(spark, directory)) if name.startswith("part-")
    ]


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write (replace) a small text file, e.g. a manifest or a resolved config."""
    fs, hadoop_path = file_system(spark, path)
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
    fs, hadoop_path = file_system(spark, path)
    if not fs.exists(hadoop_path):
        raise FileNotFoundError(f"no such file: {path}")
    stream = fs.open(hadoop_path)
    try:
        return str(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
    finally:
        stream.close()


def rename(spark: SparkSession, source: str, target: str) -> None:
    """Rename `source` to `target` (atomic on HDFS and local disks); `target`'s parent is created.

    Raises:
        OSError: the file system refused the rename.
    """
    fs, source_path = file_system(spark, source)
    _, target_path = file_system(spark, target)
    parent = target_path.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    if not fs.rename(source_path, target_path):
        raise OSError(f"could not move {source} to {target}")
