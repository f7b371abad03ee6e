"""The key space scoring is cut in: the path-hash column `_key`, a `Chunk` (a range of it) and the
`Source` interface every input implements (its listing of keys and the scored rows of one chunk)."""

from __future__ import annotations

import dataclasses

from pyspark.sql import DataFrame

from skinspark import schema

KEY = "_key"  # a 64-bit hash of each file's (or member's) path: chunks are ranges of it


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A range of path hashes holding `files` files still to score and `done` already scored."""

    low: int
    high: int
    files: int
    done: int = 0


class Source:
    """One kind of input: its narrow listing (`path`, `_key`) and the scored rows of one chunk."""

    labelled = False
    reader: str | None = None  # who reads each file's bytes; None for stored pixels
    labels: tuple[str, ...] = schema.LABELS  # the model's output units: the probability columns

    def listing(self) -> DataFrame:
        raise NotImplementedError

    def find_empty_files(self, scanned: int) -> int:
        """Add rows Spark's scan skips (zero-byte files) to `listing`; returns how many."""
        return 0

    def complete_chunk(self, staging: str, chunk: Chunk, done: DataFrame | None) -> DataFrame | None:
        """Rows the chunk written to `staging` is missing (files gone since the listing), or None."""
        return None

    def chunk(self, chunk: Chunk, done: DataFrame | None, udf_args: dict) -> DataFrame:
        """Rows of the files in `chunk`'s key range, minus `done` paths when given, scored."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop anything cached for the run."""

    def record(self) -> dict:
        """What the manifest says of the input beyond its paths (an archive plan's counts)."""
        return {}
