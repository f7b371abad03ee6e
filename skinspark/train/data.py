"""The training data: the ingested table's manifest, whole small splits, and each rank's endless
Petastorm shard as a tf.data pipeline."""

from __future__ import annotations

import json
import warnings

import numpy as np
import tensorflow as tf
from pyspark.sql import SparkSession

from skinspark import schema, storage
from skinspark.manifest import MANIFEST_FILE
from skinspark.preprocess import stored_batch, stored_size
from skinspark.train.failures import TrainInputError

EVAL_BATCH_SIZE = 256  # images per model call when validating and testing (no gradients: larger is fine)


def petastorm_url(uri: str) -> str:
    """Petastorm wants `file:///abs/path`; Hadoop qualifies local paths as `file:/abs/path`."""
    uri = uri.rstrip("/")
    if uri.startswith("file:") and not uri.startswith("file://"):
        return "file://" + uri[len("file:") :]
    return uri


def read_ingest_manifest(spark: SparkSession, data_url: str) -> dict:
    """The ingest job's `_manifest.json`; raises TrainInputError when missing or not complete."""
    path = f"{data_url}/{MANIFEST_FILE}"
    if not storage.exists(spark, path):
        raise TrainInputError(f"no {MANIFEST_FILE} in {data_url}: is it a table written by the ingest job?")
    manifest = json.loads(storage.read_text(spark, path))
    if manifest.get("status") != "complete":
        status = manifest.get("status")
        raise TrainInputError(f"the ingested table {data_url} is not complete (status {status!r})")
    return manifest


def read_split(url: str, height: int, width: int, workers: int = 1) -> dict[str, np.ndarray]:
    """Read a whole (small) split with Petastorm: image (n, h, w, 3) uint8, label int32, image_id.

    One worker reads synchronously (Petastorm's dummy pool: no ventilator thread to race with the
    reader). Every row the split's Parquet footers count must arrive: a short read is an error,
    never a smaller validation or test set.

    Raises:
        ImageError: (a ValueError) an image whose byte length is not height * width * 3.
        TrainInputError: the reader returned fewer or more rows than the split holds.
    """
    from petastorm import make_batch_reader

    quiet_petastorm()
    images, labels, ids = [], [], []
    with make_batch_reader(
        url,
        schema_fields=[schema.IMAGE_ID, schema.LABEL, schema.IMAGE],
        num_epochs=1,
        shuffle_row_groups=False,
        reader_pool_type="thread" if workers > 1 else "dummy",
        workers_count=workers,
    ) as reader:
        with warnings.catch_warnings():  # Petastorm's dataset is pyarrow's legacy one: `pieces` is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            expected = sum(piece.get_metadata().num_rows for piece in reader.dataset.pieces)
        for batch in reader:
            images.append(stored_batch(list(getattr(batch, schema.IMAGE)), height, width))
            labels.append(np.asarray(getattr(batch, schema.LABEL), dtype=np.int32))
            ids.append(np.asarray(getattr(batch, schema.IMAGE_ID), dtype=object))
    read = sum(len(batch) for batch in ids)
    if read != expected:
        raise TrainInputError(f"Petastorm read {read} rows of {url}, whose Parquet files hold {expected}")
    if not images:
        return {
            "image": np.zeros((0, height, width, 3), np.uint8),
            "label": np.zeros(0, np.int32),
            "image_id": np.zeros(0, object),
        }
    # Sort by image_id: with several reader threads the batch order is not fixed.
    order = np.argsort(np.concatenate(ids), kind="stable")
    return {
        "image": np.concatenate(images)[order],
        "label": np.concatenate(labels)[order],
        "image_id": np.concatenate(ids)[order],
    }


def quiet_petastorm() -> None:
    # Petastorm 0.13 calls pyarrow APIs that pyarrow 14 marks deprecated, once per row group.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow\..*")
    # It also warns that "image" no longer matches "image_id" as a prefix: exact names are what we want.
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed", category=UserWarning)


def open_train_reader(train_url: str, rank: int, size: int, seed: int, workers: int):
    """This rank's endless Petastorm reader of the training split, and how the split was sharded.

    Normally each rank reads its own row groups ("row_groups"). A table with fewer row groups than
    ranks cannot be sharded that way; then every rank reads all of it in the same seeded order (one
    reader thread keeps the order fixed) and keeps every size-th row ("rows").
    """
    from petastorm import make_batch_reader
    from petastorm.errors import NoDataAvailableError

    columns = [schema.LABEL, schema.IMAGE]
    try:
        # Horovod: each rank reads its own shard, forever (num_epochs=None).
        reader = make_batch_reader(
            train_url,
            schema_fields=columns,
            num_epochs=None,
            cur_shard=rank,
            shard_count=size,
            shuffle_row_groups=True,
            seed=seed,
            workers_count=workers,
        )
        return reader, "row_groups"
    except NoDataAvailableError:
        reader = make_batch_reader(
            train_url,
            schema_fields=columns,
            num_epochs=None,
            shuffle_row_groups=True,
            seed=seed,
            workers_count=1,
        )
        return reader, "rows"


def training_dataset(
    reader,
    height: int,
    width: int,
    batch_size: int,
    shuffle_buffer: int,
    augment: bool,
    seed: int,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """A Petastorm batch reader as an endless tf.data pipeline of (uint8 images, int32 labels) batches.

    Raw pixel bytes are decoded in the graph (`tf.io.decode_raw` + reshape); rows are shuffled in a
    buffer of `shuffle_buffer` and, with `augment`, flipped at random horizontally and vertically.

    Args:
        shard: (index, count) to keep every count-th row starting at index, or None to keep all.
    """
    from petastorm.tf_utils import make_petastorm_dataset

    size = stored_size(height, width)

    def decode(batch):
        raw = getattr(batch, schema.IMAGE)
        tf.debugging.assert_equal(
            tf.strings.length(raw),
            size,
            message=f"an image in the training split does not hold {height}x{width}x3 bytes",
        )
        pixels = tf.io.decode_raw(raw, tf.uint8)
        return tf.reshape(pixels, (-1, height, width, 3)), tf.cast(getattr(batch, schema.LABEL), tf.int32)

    dataset = make_petastorm_dataset(reader).map(decode).unbatch()
    if shard is not None:
        dataset = dataset.shard(shard[1], shard[0])
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if augment:
        dataset = dataset.map(
            lambda image, label: (_flip(image, seed), label), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _flip(image: tf.Tensor, seed: int) -> tf.Tensor:
    # Distinct op seeds: with one seed both flips would draw the same numbers and always come together.
    image = tf.image.random_flip_left_right(image, seed=seed)
    return tf.image.random_flip_up_down(image, seed=seed + 1)
