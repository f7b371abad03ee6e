"""The ingested table as its readers see it: the manifest, the URL Petastorm and pyarrow take, the row
groups of a split and whole small splits as arrays. Training, export and the tools read tables here."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from skinspark import schema, storage
from skinspark.errors import TableError
from skinspark.manifest import MANIFEST_FILE
from skinspark.preprocess import stored_batch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EVAL_BATCH_SIZE = 256  # images per model call when validating and testing (no gradients: larger is fine)


def petastorm_url(uri: str) -> str:
    """Petastorm wants `file:///abs/path`; Hadoop qualifies local paths as `file:/abs/path`."""
    uri = uri.rstrip("/")
    if uri.startswith("file:") and not uri.startswith("file://"):
        return "file://" + uri[len("file:") :]
    return uri


def split_url(data_url: str, split: str) -> str:
    """The folder of one split (`schema.SPLITS`) of the table at `data_url`."""
    return f"{data_url}/{schema.SPLIT}={split}"


def read_ingest_manifest(spark: SparkSession, data_url: str) -> dict:
    """The ingest job's `_manifest.json`; raises TableError when missing or not complete."""
    path = f"{data_url}/{MANIFEST_FILE}"
    if not storage.exists(spark, path):
        raise TableError(f"no {MANIFEST_FILE} in {data_url}: is it a table written by the ingest job?")
    manifest = json.loads(storage.read_text(spark, path))
    if manifest.get("status") != "complete":
        status = manifest.get("status")
        raise TableError(f"the ingested table {data_url} is not complete (status {status!r})")
    return manifest


def split_row_groups(url: str) -> list[tuple[object, int, int]]:
    """Every row group of a split's Parquet files, in a fixed order: (fragment, index, rows).

    Read with pyarrow.dataset (no Petastorm): the training data of the tf.distribute backend and the
    whole small splits of both backends.
    """
    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(url)
    dataset = pads.dataset(path, format="parquet", filesystem=filesystem, partitioning=None)
    groups = []
    for fragment in sorted(dataset.get_fragments(), key=lambda fragment: fragment.path):
        for piece in fragment.split_by_row_group():
            (group,) = piece.row_groups
            groups.append((piece, group.id, group.num_rows))
    return groups


def read_split(
    url: str, height: int, width: int, workers: int = 1, label_map: tuple[int, ...] | None = None
) -> dict[str, np.ndarray]:
    """Read a whole (small) split: image (n, h, w, 3) uint8, label int32, image_id; sorted by image_id.

    Every row the split's Parquet footers count must arrive: a short read is an error, never a smaller
    validation or test set. `workers` is kept for callers' symmetry; pyarrow reads with its own threads.
    With `label_map` (a task's, `skinspark.tasks.Task.label_map`) the labels are the task's units.

    Raises:
        ImageError: (a ValueError) an image whose byte length is not height * width * 3.
        TableError: fewer or more rows than the split's footers count.
    """
    del workers
    images, labels, ids = [], [], []
    groups = split_row_groups(url)
    columns = [schema.IMAGE_ID, schema.LABEL, schema.IMAGE]
    for piece, _, _ in groups:
        table = piece.to_table(columns=columns)
        images.append(stored_batch(table.column(schema.IMAGE).to_pylist(), height, width))
        label = table.column(schema.LABEL).to_numpy().astype(np.int32)
        labels.append(label if label_map is None else np.asarray(label_map, np.int32)[label])
        ids.append(np.asarray(table.column(schema.IMAGE_ID).to_pylist(), dtype=object))
    read, expected = sum(len(batch) for batch in ids), sum(rows for _, _, rows in groups)
    if read != expected:
        raise TableError(f"read {read} rows of {url}, whose Parquet files hold {expected}")
    if not images:
        return {
            "image": np.zeros((0, height, width, 3), np.uint8),
            "label": np.zeros(0, np.int32),
            "image_id": np.zeros(0, object),
        }
    order = np.argsort(np.concatenate(ids), kind="stable")
    return {
        "image": np.concatenate(images)[order],
        "label": np.concatenate(labels)[order],
        "image_id": np.concatenate(ids)[order],
    }
