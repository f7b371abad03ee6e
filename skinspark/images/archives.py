"""Zip archives read in place: the driver plans each archive's members from its central directory alone,
and each Python worker reads the members it is given by their offset and decompresses them itself.

Every public dermoscopy set ships as zips (HAM10000's two parts, every ISIC set), so the jobs take a
`.zip` path (any case) wherever they take a folder. Nothing is ever extracted to disk: a member's
bytes go from the archive straight into the worker that decodes them, and a member is named
`<archive URI>!/<member name>` (the `jar:` convention), its image id being its file name without the
extension, as for files.

Planning (`plan_archives`, on the driver) reads the end-of-central-directory record and the central
directory only (Python's `zipfile`), never a member's bytes. macOS's `__MACOSX/` entries and AppleDouble
`._*` files are skipped and counted; folders and members that are not images are ignored and counted.
Encrypted members and compression methods `zipfile` cannot read are rows with a reason at once.
Reading (`read_members`, in the worker) seeks to the member's local header, reads exactly its
compressed size and lets `zipfile.ZipExtFile` decompress it and check its CRC; the declared size has
already been held against `max_image_bytes` by the job, and the decompressor stops at that size, so a
zip bomb never inflates.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from skinspark import schema
from skinspark.errors import ImageError
from skinspark.images.files import open_random_access

ARCHIVE_SUFFIX = ".zip"
MEMBER_SEPARATOR = "!/"
# The plan's columns for a member (null for a plain file); `length` is its uncompressed size.
ARCHIVE, MEMBER = "zip_archive", "zip_member"
OFFSET, COMPRESSED, CRC = "zip_offset", "zip_compressed", "zip_crc"
METHOD, FLAGS = "zip_method", "zip_flags"
MEMBER_COLUMNS = (ARCHIVE, MEMBER, OFFSET, COMPRESSED, CRC, METHOD, FLAGS)
MEMBER_TYPES = {
    ARCHIVE: "string",
    MEMBER: "string",
    OFFSET: "bigint",
    COMPRESSED: "bigint",
    CRC: "bigint",
    METHOD: "int",
    FLAGS: "int",
}
# Methods Python's zipfile decompresses (bzip2 and LZMA through the standard library's modules).
READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_METHOD_NAMES = {9: "Deflate64", 12: "bzip2", 14: "LZMA", 93: "Zstandard", 95: "xz", 98: "PPMd", 99: "AES"}
_ENCRYPTED = 0x1
_LOCAL_HEADER = struct.Struct(zipfile.structFileHeader)
# Central directories kept per worker for reading members by name (`read_member_paths`).
_DIRECTORY_CACHE_SIZE = 4
_DIRECTORIES: OrderedDict[str, dict[str, zipfile.ZipInfo]] = OrderedDict()
_DIRECTORY_LOCK = threading.Lock()


def is_archive(path: str) -> bool:
    """Whether `path` names a zip archive (ends in `.zip`, any case)."""
    return path.lower().endswith(ARCHIVE_SUFFIX)


def member_path(archive: str, name: str) -> str:
    """`<archive>!/<name>`: a member's path in every output."""
    return f"{archive}{MEMBER_SEPARATOR}{name}"


def split_member_path(path: str) -> tuple[str, str] | None:
    """(archive, member name) of a member path, or None for a plain file's path."""
    start = 0
    while (index := path.find(MEMBER_SEPARATOR, start)) >= 0:
        if is_archive(path[:index]):
            return path[:index], path[index + len(MEMBER_SEPARATOR) :]
        start = index + 1
    return None


@dataclasses.dataclass(frozen=True)
class ArchivePlan:
    """What the central directories of the job's archives hold.

    `members`: one row per image member: `path`, `length` (its uncompressed size), the `zip_*`
    coordinates, and `reason`/`message` (None, or why it will not be read: an encrypted member, an
    unreadable compression method). A broken archive is one row too: its own URI as `path`, reason
    `bad_archive`, no coordinates. `counts`: per archive, `members`, `images`, `skipped` (macOS
    metadata) and `ignored` (folders and members that are not images), or `error`.
    """

    members: pd.DataFrame
    counts: dict[str, dict]

    @property
    def broken(self) -> pd.DataFrame:
        """The rows of archives that could not be opened."""
        return self.members[self.members["reason"] == schema.REASON_BAD_ARCHIVE]

    def totals(self) -> dict:
        """The counts summed over the archives, and the archives' own count, for a manifest."""
        keys = ("members", "images", "skipped", "ignored")
        totals = {key: sum(count.get(key, 0) for count in self.counts.values()) for key in keys}
        broken = sum("error" in count for count in self.counts.values())
        return {"archives": len(self.counts), "broken_archives": broken, **totals}


def plan_archives(archives: Sequence[str], suffixes: Sequence[str]) -> ArchivePlan:
    """Plan the image members of each archive from its central directory (no member bytes are read).

    Args:
        archives: archive URIs as Spark lists them (`file:/a/b.zip`, `hdfs://nn/b.zip`, ...).
        suffixes: the image file name endings to take, lower case (`.jpg`, ...); any case matches.

    Returns:
        The plan (see `ArchivePlan`); an archive that is not a zip, or whose central directory is
        missing, is one `bad_archive` row instead of members.
    """
    frames, counts = [], {}
    for archive in archives:
        try:
            infos = _central_directory(archive)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            message = f"cannot read {archive} as a zip archive: {type(error).__name__}: {error}"
            counts[archive] = {"error": message}
            frames.append(_broken_row(archive, message))
            continue
        kinds = [member_kind(info.filename, info.is_dir(), suffixes) for info in infos]
        images = [info for info, kind in zip(infos, kinds, strict=True) if kind == "image"]
        del infos  # ~600 bytes per member: only the images' ZipInfos stay until their frame is made
        counts[archive] = {
            "members": len(kinds),
            "images": len(images),
            "skipped": kinds.count("skipped"),
            "ignored": kinds.count("ignored"),
        }
        frames.append(_members_frame(archive, images))
    members = pd.concat(frames, ignore_index=True) if frames else _members_frame("", [])
    if members["reason"].eq(schema.REASON_BAD_ARCHIVE).any():
        whole = ["length", OFFSET, COMPRESSED, CRC, METHOD, FLAGS]
        members[whole] = members[whole].astype("Int64")  # a broken archive's row has none of them
    return ArchivePlan(members, counts)


PLAN_COLUMNS = ("path", "length", *MEMBER_COLUMNS, "reason", "message")


def _members_frame(archive: str, images: Sequence[zipfile.ZipInfo]) -> pd.DataFrame:
    """One archive's image members as plan rows, built column by column (a million members fit in
    about 400 MB this way; a dict per row would take twice that), in offset order."""

    def numbers(field: str, dtype=np.int64) -> np.ndarray:
        return np.fromiter((getattr(info, field) for info in images), dtype, len(images))

    refusals = [_refusal(info) for info in images]
    frame = pd.DataFrame(
        {
            "path": [member_path(archive, info.filename) for info in images],
            "length": numbers("file_size"),
            ARCHIVE: archive,
            MEMBER: [info.filename for info in images],
            OFFSET: numbers("header_offset"),
            COMPRESSED: numbers("compress_size"),
            CRC: numbers("CRC"),
            METHOD: numbers("compress_type", np.int32),
            FLAGS: numbers("flag_bits", np.int32),
            "reason": [reason for reason, _ in refusals],
            "message": [message for _, message in refusals],
        },
        columns=list(PLAN_COLUMNS),
    )
    if not frame[OFFSET].is_monotonic_increasing:  # the central directory is nearly always in order
        frame = frame.sort_values(OFFSET, kind="stable", ignore_index=True)
    return frame


def _broken_row(archive: str, message: str) -> pd.DataFrame:
    row = dict.fromkeys(PLAN_COLUMNS)
    row.update(path=archive, reason=schema.REASON_BAD_ARCHIVE, message=message)
    return pd.DataFrame([row], columns=list(PLAN_COLUMNS))


def member_kind(name: str, is_dir: bool, suffixes: Sequence[str]) -> str:
    """ "skipped" for macOS metadata (`__MACOSX/...`, AppleDouble `._*`), "ignored" for a folder or a
    member that is not an image, "image" otherwise."""
    parts = name.split("/")
    if "__MACOSX" in parts or parts[-1].startswith("._"):
        return "skipped"
    if is_dir or not name.lower().endswith(tuple(suffixes)):
        return "ignored"
    return "image"


def _central_directory(archive: str) -> list[zipfile.ZipInfo]:
    with open_random_access(archive) as stream, zipfile.ZipFile(stream) as zipped:
        return zipped.infolist()


def _refusal(info: zipfile.ZipInfo) -> tuple[str | None, str | None]:
    """(reason, message) of a member that is never read (encrypted, or an unreadable method), or Nones."""
    if info.flag_bits & _ENCRYPTED:
        return schema.REASON_ENCRYPTED, "the member is encrypted (a password is needed): not read"
    if info.compress_type not in READABLE_METHODS:
        method = _method_name(info.compress_type)
        return (
            schema.REASON_UNSUPPORTED_COMPRESSION,
            f"compression method {method} cannot be read by Python's zipfile",
        )
    return None, None


def _member_row(archive: str, info: zipfile.ZipInfo) -> dict:
    reason, message = _refusal(info)
    return {
        "path": member_path(archive, info.filename),
        "length": info.file_size,
        ARCHIVE: archive,
        MEMBER: info.filename,
        OFFSET: info.header_offset,
        COMPRESSED: info.compress_size,
        CRC: info.CRC,
        METHOD: info.compress_type,
        FLAGS: info.flag_bits,
        "reason": reason,
        "message": message,
    }


def _method_name(method: int) -> str:
    name = zipfile.compressor_names.get(method) or _METHOD_NAMES.get(method)
    return f"{method} ({name})" if name else str(method)


# --------------------------------------------------------------------------------------------------
# In the Python worker


def read_members(members: Sequence[Mapping], max_bytes: int | None = None) -> list[bytes | ImageError]:
    """Read planned members: each archive opened once, its members read in offset order.

    Args:
        members: mappings with `length` and the `zip_*` coordinates of `plan_archives`.
        max_bytes: refuse a member whose declared size is larger (never read); None for no limit.

    Returns:
        Each member's bytes, in the order given, or an `ImageError` in its place: `unreadable_file` (the
        archive cannot be opened), `bad_archive_member` (cut, corrupt, or a CRC mismatch),
        `encrypted_member`, `unsupported_compression` or `image_too_large`.
    """
    results: list[bytes | ImageError | None] = [None] * len(members)
    by_archive: dict[str, list[int]] = {}
    for index, member in enumerate(members):
        by_archive.setdefault(member[ARCHIVE], []).append(index)
    for archive, indices in by_archive.items():
        indices.sort(key=lambda index: members[index][OFFSET])
        try:
            stream = open_random_access(archive)
        except (OSError, ValueError) as error:
            failure = ImageError(schema.REASON_UNREADABLE, f"cannot open the archive {archive}: {error}")
            for index in indices:
                results[index] = failure
            continue
        with stream:
            for index in indices:
                results[index] = _read_or_error(stream, members[index], max_bytes)
    return results


def read_member_paths(paths: Sequence[str], max_bytes: int | None = None) -> list[bytes | ImageError]:
    """Read members named by path alone (`<archive>!/<name>`, as `predict_udf` gets them): each archive's
    central directory is read once per worker and kept for later calls.

    Returns:
        Each member's bytes or an `ImageError`, as `read_members`; a name the archive does not hold is
        `unreadable_file`.
    """
    members: list[Mapping | ImageError] = []
    for path in paths:
        archive, name = split_member_path(path) or (path, "")
        try:
            info = _directory(archive).get(name)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            members.append(ImageError(schema.REASON_BAD_ARCHIVE, f"cannot read {archive} as a zip: {error}"))
            continue
        if info is None:
            members.append(ImageError(schema.REASON_UNREADABLE, f"{archive} holds no member {name!r}"))
        else:
            members.append(_member_row(archive, info))
    planned = [member for member in members if not isinstance(member, ImageError)]
    read = iter(read_members(planned, max_bytes))
    return [member if isinstance(member, ImageError) else next(read) for member in members]


def _directory(archive: str) -> dict[str, zipfile.ZipInfo]:
    with _DIRECTORY_LOCK:
        if archive in _DIRECTORIES:
            _DIRECTORIES.move_to_end(archive)
            return _DIRECTORIES[archive]
    directory = {info.filename: info for info in _central_directory(archive)}
    with _DIRECTORY_LOCK:
        _DIRECTORIES[archive] = directory
        while len(_DIRECTORIES) > _DIRECTORY_CACHE_SIZE:
            _DIRECTORIES.popitem(last=False)
    return directory


def _read_or_error(stream, member: Mapping, max_bytes: int | None) -> bytes | ImageError:
    try:
        return read_member(stream, member, max_bytes)
    except ImageError as error:
        return error


def read_member(stream, member: Mapping, max_bytes: int | None = None) -> bytes:
    """One member's bytes from an open archive, by its planned coordinates.

    Raises:
        ImageError: see `read_members`.
    """
    name, size = member[MEMBER], int(member["length"])
    if int(member[FLAGS]) & _ENCRYPTED:
        raise ImageError(schema.REASON_ENCRYPTED, "the member is encrypted (a password is needed): not read")
    if int(member[METHOD]) not in READABLE_METHODS:
        method = _method_name(int(member[METHOD]))
        message = f"compression method {method} is not readable"
        raise ImageError(schema.REASON_UNSUPPORTED_COMPRESSION, message)
    if max_bytes is not None and size > max_bytes:
        raise ImageError(
            schema.REASON_TOO_LARGE, f"member is {size:,} bytes, over the {max_bytes:,}-byte limit"
        )
    compressed = int(member[COMPRESSED])
    try:
        stream.seek(int(member[OFFSET]))
        header = stream.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != zipfile.stringFileHeader:
            raise ImageError(schema.REASON_BAD_MEMBER, f"no local header for {name!r} at its offset")
        *_, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        stream.seek(name_length + extra_length, io.SEEK_CUR)
        data = stream.read(compressed)
    except OSError as error:
        raise ImageError(schema.REASON_UNREADABLE, f"cannot read the member: {error}") from None
    if len(data) != compressed:
        raise ImageError(
            schema.REASON_BAD_MEMBER, f"member is cut short: {len(data):,} of {compressed:,} compressed bytes"
        )
    return _decompress(data, member)


def _decompress(data: bytes, member: Mapping) -> bytes:
    info = zipfile.ZipInfo(member[MEMBER])
    info.compress_type = int(member[METHOD])
    info.compress_size = int(member[COMPRESSED])
    info.file_size = int(member["length"])
    info.CRC = int(member[CRC])
    info.flag_bits = int(member[FLAGS])
    try:
        # ZipExtFile decompresses at most `file_size` bytes and checks the CRC at the end.
        with zipfile.ZipExtFile(io.BytesIO(data), "r", info) as stream:
            content = stream.read()
    except NotImplementedError as error:
        raise ImageError(schema.REASON_UNSUPPORTED_COMPRESSION, str(error)) from None
    except Exception as error:  # noqa: BLE001 - zlib, bz2 and lzma each raise their own error types
        # zipfile.BadZipFile for a CRC mismatch, EOFError for a stream that ends early, zlib.error ...
        detail = f"{type(error).__name__}: {error}"
        raise ImageError(schema.REASON_BAD_MEMBER, f"corrupt member: {detail}") from None
    if len(content) != info.file_size:
        detail = f"{len(content):,} bytes, its header says {info.file_size:,}"
        raise ImageError(schema.REASON_BAD_MEMBER, f"member holds {detail}")
    return content


def member_records(frame: pd.DataFrame, rows: Iterable[int] | None = None) -> list[dict]:
    """The member coordinates of a pandas batch's rows (all of them, or `rows` by position)."""
    columns = ["length", *MEMBER_COLUMNS]
    selected = frame[columns] if rows is None else frame[columns].iloc[list(rows)]
    return selected.to_dict("records")
