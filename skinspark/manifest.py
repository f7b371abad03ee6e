"""A job's record and its atomic publish: `_manifest.json` and `_config.yaml` beside every output, the
result each job returns, and writes that a reader sees whole or not at all (a local file or folder,
or a Hadoop directory).

The names of the records beside a job's output (underscored: Spark's readers skip them) are constants
here and only here; a model directory's own files are named in `skinspark.model_dir`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from skinspark import schema, storage

MANIFEST_FILE = "_manifest.json"  # written last: its presence (status "complete") means done
CONFIG_FILE = "_config.yaml"  # the resolved config the output was made with
SCORING_METRICS_FILE = "_metrics.json"  # a predictions output's metrics (a labelled table, or --truth)

# Every job's verdict, which the jobs' entry points, the summaries, training (of its table) and
# tracking read: STATUS_KEY goes from STATUS_RUNNING to STATUS_COMPLETE, or to STATUS_FAILED with the
# one line that says why under ERROR_KEY.
STATUS_KEY = "status"
ERROR_KEY = "error"
STATUS_RUNNING, STATUS_COMPLETE, STATUS_FAILED = "running", "complete", "failed"
COUNTS_KEY = "counts"  # what the output holds, counted (each job's own breakdown)


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What a job wrote (`output`) and its manifest; `ok` when the manifest's status is complete."""

    output: str
    manifest: dict

    @property
    def ok(self) -> bool:
        return self.manifest[STATUS_KEY] == STATUS_COMPLETE


def to_json(data: Any) -> str:
    """The JSON text of every record skinspark writes (indented; dates and paths as strings)."""
    return json.dumps(data, indent=2, default=str)


def write_record(spark: SparkSession, directory: str, manifest: dict, config_text: str | None = None) -> None:
    """Write `_manifest.json` (and `_config.yaml` when given) into `directory`, any Hadoop URI."""
    if config_text is not None:
        storage.write_text(spark, f"{directory}/{CONFIG_FILE}", config_text)
    storage.write_text(spark, f"{directory}/{MANIFEST_FILE}", to_json(manifest))


def read_record(spark: SparkSession, directory: str) -> dict | None:
    """The `_manifest.json` of `directory`, or None when it is missing or not JSON."""
    try:
        return json.loads(storage.read_text(spark, f"{directory}/{MANIFEST_FILE}"))
    except (FileNotFoundError, ValueError):
        return None


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of the local `path` to write (a file or a folder); renamed onto `path` when
    the block ends without error, removed when it fails. An existing folder at `path` is replaced."""
    path = Path(path)
    # The suffix stays last (Keras chooses its format by it).
    temporary = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield temporary
        if path.is_dir() and temporary.is_dir():
            shutil.rmtree(path)  # os.replace does not replace a non-empty folder
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small local text file through a temporary sibling and a rename."""
    with staged(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, to_json(data))


def staging_path(final: str) -> str:
    """A unique hidden sibling of the Hadoop path `final` to write into before `publish`."""
    parent, _, name = final.rstrip("/").rpartition("/")
    hidden = f".{name}.staging-{uuid.uuid4().hex[:12]}"
    return f"{parent}/{hidden}" if parent else hidden


def publish(spark: SparkSession, staging: str, final: str, replace: bool = True) -> None:
    """Move a finished staging directory to `final` (any Hadoop URI).

    With `replace`, an old `final` is moved aside first and deleted only after the new one is in
    place; without it an existing `final` is an error. On HDFS and local disks the rename is atomic.

    Raises:
        OSError: `final` exists and `replace` is off, or the file system refused a rename.
    """
    old = None
    if storage.exists(spark, final):
        if not replace:
            raise OSError(f"{final} already exists")
        old = staging_path(final) + ".old"
        try:
            storage.rename(spark, final, old)
        except OSError:
            raise OSError(f"could not move the existing {final} aside") from None
    storage.rename(spark, staging, final)
    if old is not None:
        storage.delete(spark, old)


def split_counts(rows) -> dict:
    """{split: {"images", "lesions", "by_class"}} of a pandas frame of rows with `split`, `dx` and
    `lesion_id`: the ingest manifest's `counts.splits`, which training reads for class weights and steps
    (ingest counts its plan with it, a fold's table its own rows)."""
    by_class = rows.groupby([schema.SPLIT, schema.DX]).size()
    lesions = rows.groupby(schema.SPLIT)[schema.LESION_ID].nunique()
    splits = {}
    for split in schema.SPLITS:
        classes = {label: int(by_class.get((split, label), 0)) for label in schema.LABELS}
        splits[split] = {
            "images": sum(classes.values()),
            "lesions": int(lesions.get(split, 0)),
            "by_class": classes,
        }
    return splits
