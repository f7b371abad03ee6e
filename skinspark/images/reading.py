"""Handing each listed image's encoded bytes to the Python worker that decodes it, whatever holds it:
a plain file (read here, or Spark's `content` column with `reader="spark"`) or a zip member (read
here by its planned offset, or by name alone for a `<archive>!/<member>` path).

A file or member that cannot be read is not an exception but an `ImageError` in place of its bytes
(`unreadable_file`, or an archive member's own reasons), so each job turns it into its own row.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from skinspark import schema
from skinspark.errors import ImageError
from skinspark.images import archives, files
from skinspark.images.listing import CONTENT, LENGTH, PATH


def read_file(path: str) -> bytes:
    """The bytes of one file or zip member (`<archive>!/<member>`), named as Spark lists it.

    Raises:
        OSError: the file cannot be opened or read (a member: its `ImageError`, a ValueError).
        ValueError: a scheme no Python file system here handles.
    """
    if archives.split_member_path(path) is None:
        return files.read_file(path)
    (content,) = archives.read_member_paths([path])
    if isinstance(content, ImageError):
        raise content
    return content


def read_files(paths: Sequence[str]) -> list[bytes | ImageError]:
    """Read each path (a file or a zip member); one that cannot be read gives an `ImageError` instead."""
    contents: list[bytes | ImageError | None] = [None] * len(paths)
    members = [index for index, path in enumerate(paths) if archives.split_member_path(path) is not None]
    for index, content in zip(members, archives.read_member_paths([paths[i] for i in members]), strict=True):
        contents[index] = content
    for index, path in enumerate(paths):
        if contents[index] is None:
            try:
                contents[index] = files.read_file(path)
            except (OSError, ValueError) as error:
                detail = f"{type(error).__name__}: {error}"
                contents[index] = ImageError(schema.REASON_UNREADABLE, f"cannot read the file: {detail}")
    return contents


def read_columns(reader: str, members: bool = False) -> list[str]:
    """The listing columns a reader's workers need: `path`, Spark's `content` for "spark", and the
    members' `length` and coordinates when the listing holds zip members."""
    columns = [PATH, CONTENT] if reader == "spark" else [PATH]
    return [*columns, LENGTH, *archives.MEMBER_COLUMNS] if members else columns


def batch_contents(batch: pd.DataFrame, reader: str) -> list[bytes | ImageError]:
    """The encoded bytes of each row of a pandas batch, in row order: zip members (rows with
    `zip_archive`) read by their coordinates, files read from `path` ("python") or taken from the
    `content` column Spark filled ("spark")."""
    if archives.ARCHIVE in batch.columns:
        is_member = batch[archives.ARCHIVE].notna().to_numpy()
    else:
        is_member = [False] * len(batch)
    positions = [index for index, member in enumerate(is_member) if member]
    contents: list = [None] * len(batch)
    if positions:
        read = archives.read_members(archives.member_records(batch, positions))
        for index, content in zip(positions, read, strict=True):
            contents[index] = content
    others = [index for index, member in enumerate(is_member) if not member]
    if others:
        if reader == "spark":
            column = batch[CONTENT]
            read = [column.iat[index] for index in others]
        else:
            read = read_files([batch[PATH].iat[index] for index in others])
        for index, content in zip(others, read, strict=True):
            contents[index] = content
    return contents
