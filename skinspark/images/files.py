"""Opening a plain file where a Python worker runs: local and mounted paths with Python's own I/O,
`hdfs:`, `s3:`/`s3a:` and `gs:` through `pyarrow.fs` (one connection per file system and process)."""

from __future__ import annotations

import threading

# Schemes a Python worker opens itself; anything else is read by Spark (`reader="auto"`).
LOCAL_SCHEMES = ("", "file")
ARROW_SCHEMES = {"hdfs": "hdfs", "viewfs": "hdfs", "s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs"}

_FILE_SYSTEMS: dict[tuple[str, str], object] = {}
_FS_LOCK = threading.Lock()


def read_file(path: str) -> bytes:
    """The bytes of one file, named as Spark lists it (`file:/a/b.jpg`, `/a/b.jpg`, `hdfs://nn/a.jpg`,
    `s3a://bucket/a.jpg`, `gs://bucket/a.jpg`).

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: a scheme no Python file system here handles.
    """
    if scheme_of(path) in LOCAL_SCHEMES:
        with open(local_path(path), "rb") as stream:
            return stream.read()
    file_system, inner = _arrow_location(path)
    with file_system.open_input_stream(inner) as stream:
        return stream.read()


def open_random_access(path: str):
    """A seekable binary file object for `path` (any scheme `read_file` takes), for reading parts of a
    large file such as a zip archive's members; the caller closes it.

    Raises:
        OSError: the file cannot be opened.
        ValueError: a scheme no Python file system here handles.
    """
    if scheme_of(path) in LOCAL_SCHEMES:
        return open(local_path(path), "rb")  # noqa: SIM115 - the caller closes it
    file_system, inner = _arrow_location(path)
    return file_system.open_input_file(inner)


def python_readable(path: str) -> bool:
    """Whether a Python worker can open `path` itself (a local path or one `pyarrow.fs` handles)."""
    scheme = scheme_of(path)
    return scheme in LOCAL_SCHEMES or scheme in ARROW_SCHEMES


def scheme_of(path: str) -> str:
    """The URI scheme of `path`, lower case; "" for a plain path (or a Windows drive letter)."""
    head, sep, _ = path.partition(":")
    return head.lower() if sep and len(head) > 1 and "/" not in head else ""


def local_path(path: str) -> str:
    """A plain or `file:` path as the operating system names it.

    Raises:
        ValueError: a `file://host/...` path on another host.
    """
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
    scheme = scheme_of(path)
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
