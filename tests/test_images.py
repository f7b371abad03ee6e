"""The image source: Spark lists, the Python worker reads; the reader choice and file-system mapping."""

from __future__ import annotations

import zipfile

import pytest
from pyarrow import fs as pafs

from skinspark import images, schema
from skinspark.preprocess import ImageError


def test_auto_reads_local_paths_in_python_and_other_schemes_in_spark():
    assert images.resolve_reader("auto", ["/data/a", "file:/data/b", "file:///data/c"]) == "python"
    assert images.resolve_reader("auto", ["/data/a", "hdfs://nn:8020/data"]) == "spark"
    assert images.resolve_reader("auto", ["s3a://bucket/images"]) == "spark"
    assert images.resolve_reader("python", ["s3a://bucket/images", "gs://b/x", "hdfs://nn/x"]) == "python"
    assert images.resolve_reader("spark", ["/data/a"]) == "spark"
    with pytest.raises(ValueError, match="reader 'python' cannot open wasbs: paths"):
        images.resolve_reader("python", ["wasbs://container@account/x"])
    with pytest.raises(ValueError, match="reader must be one of"):
        images.resolve_reader("jvm", ["/data/a"])


def test_read_file_takes_spark_paths_and_plain_paths(tmp_path):
    path = tmp_path / "a b" / "ISIC_1 100%.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8jpeg bytes")
    for name in (f"file:{path}", f"file://{path}", f"file://localhost{path}", str(path)):
        assert images.read_file(name) == b"\xff\xd8jpeg bytes", name
    with pytest.raises(ValueError, match="another host"):
        images.read_file(f"file://otherhost{path}")


def test_a_file_that_cannot_be_read_becomes_an_unreadable_file_error(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(b"abc")
    contents = images.read_files([f"file:{good}", f"file:{tmp_path}/gone.jpg", f"file:{tmp_path}"])
    assert contents[0] == b"abc"
    for failure in contents[1:]:
        assert isinstance(failure, ImageError) and failure.reason == schema.REASON_UNREADABLE
        assert failure.message.startswith("cannot read the file: ")
    assert "gone.jpg" in contents[1].message


def test_object_store_paths_map_to_pyarrow_file_systems(tmp_path, monkeypatch):
    # A local directory stands in for each store: s3a:// maps to s3 with bucket/key paths, hdfs://
    # keeps its authority (namenode:port) and an absolute path inside the file system. Buckets and
    # name nodes no other test uses, so the file systems this test connects stay its own.
    (tmp_path / "bucket" / "x").mkdir(parents=True)
    (tmp_path / "bucket" / "x" / "a.jpg").write_bytes(b"from s3")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "b.jpg").write_bytes(b"from hdfs")
    connected = []

    def store(kind):
        def connect(*args, **kwargs):  # stands for S3FileSystem() / HadoopFileSystem(host, port)
            connected.append((kind, args))
            return pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())

        return connect

    with zipfile.ZipFile(tmp_path / "bucket" / "x" / "z.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("in/c.jpg", b"member of a zip on s3")
    monkeypatch.setattr(pafs, "S3FileSystem", store("s3"))
    monkeypatch.setattr(pafs, "HadoopFileSystem", store("hdfs"))
    assert images.read_file("s3a://bucket/x/a.jpg") == b"from s3"
    assert images.read_file("s3://bucket/x/a.jpg") == b"from s3"  # same file system, connected once
    assert images.read_file("hdfs://namenode:8020/data/b.jpg") == b"from hdfs"
    assert connected == [("s3", ()), ("hdfs", ("namenode", 8020))]
    # A zip member on an object store: the archive opened through pyarrow's random access file.
    assert images.read_file("s3a://bucket/x/z.zip!/in/c.jpg") == b"member of a zip on s3"
    assert isinstance(images.read_files(["s3a://bucket/x/missing.jpg"])[0], ImageError)


def test_one_glob_lists_jpg_jpeg_png_in_any_case_and_finds_empty_files(spark, tmp_path):
    names = ["a.jpg", "b.JPG", "c.jpeg", "d.JPEG", "e.png", "f.PNG", "notes.txt", "g.gif", "deep/h.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty.jpg").write_bytes(b"")
    frame = images.list_images(spark, [str(tmp_path)])
    assert frame.columns == ["path", "modificationTime", "length", "content"]
    listed = sorted(row.path.rsplit("/", 1)[-1] for row in frame.select("path").collect())
    assert listed == ["a.jpg", "b.JPG", "c.jpeg", "d.JPEG", "e.png", "f.PNG", "h.jpg"]
    empty = images.zero_byte_files(frame, [row.path for row in frame.select("path").collect()])
    assert empty == [f"file:{tmp_path}/empty.jpg"]
    assert images.image_id(empty[0]) == "empty"
    with pytest.raises(images.ImagePathError, match="image path not found"):
        images.list_images(spark, [str(tmp_path / "missing")])


def test_query_settings_are_restored_after_the_block(spark):
    from skinspark.session import query_settings

    key, other = "spark.sql.files.openCostInBytes", "spark.sql.files.minPartitionNum"
    before = spark.conf.get(key)
    spark.conf.unset(other)
    with query_settings(spark, {key: "123", other: "7"}):
        assert spark.conf.get(key) == "123" and spark.conf.get(other) == "7"
    assert spark.conf.get(key) == before
    assert spark.conf.get(other, None) is None
