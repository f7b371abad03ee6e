"""The training data: each rank's endless shard of the training split as a tf.data pipeline, through
Petastorm (Horovod backend) or pyarrow.dataset (tf.distribute backend)."""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from skinspark import schema
from skinspark.preprocess import stored_size
from skinspark.table import split_row_groups
from skinspark.train.errors import TrainInputError


def arrow_shard(url: str, rank: int, size: int, seed: int):
    """This worker's endless stream of (image bytes, labels) batches of the training split, one row
    group at a time, and how the split was sharded.

    Row group i belongs to worker i % size ("row_groups"); each pass over its row groups is in a new
    seeded order. A split with fewer row groups than workers is read whole by every worker in the
    same order, keeping every size-th row ("rows"), as the Petastorm path does.
    """
    groups = split_row_groups(url)
    if not groups:
        raise TrainInputError(f"the training split {url} holds no rows")
    sharding = "row_groups" if len(groups) >= size else "rows"
    mine = groups[rank::size] if sharding == "row_groups" else groups
    columns = [schema.IMAGE, schema.LABEL]

    def batches():
        rng = np.random.default_rng(seed if sharding == "rows" else seed + rank)
        while True:
            for position in rng.permutation(len(mine)):
                table = mine[position][0].to_table(columns=columns)
                raw = np.asarray(table.column(schema.IMAGE).to_pylist(), dtype=object)
                label = table.column(schema.LABEL).to_numpy().astype(np.int32)
                if sharding == "rows":
                    raw, label = raw[rank::size], label[rank::size]
                yield raw, label

    return batches, sharding


def arrow_dataset(
    url: str,
    rank: int,
    size: int,
    height: int,
    width: int,
    batch_size: int,
    shuffle_buffer: int,
    augment: bool,
    seed: int,
    repeats: dict[int, int] | None = None,
    label_map: tuple[int, ...] | None = None,
):
    """`arrow_shard` as an endless tf.data pipeline of (uint8 images, int32 labels) batches, as
    `training_dataset` makes of a Petastorm reader; and the sharding."""
    batches, sharding = arrow_shard(url, rank, size, seed)
    rows = tf.data.Dataset.from_generator(
        batches,
        output_signature=(
            tf.TensorSpec(shape=(None,), dtype=tf.string),
            tf.TensorSpec(shape=(None,), dtype=tf.int32),
        ),
    )
    return _pixels(
        rows, height, width, batch_size, shuffle_buffer, augment, seed + rank, None, repeats, label_map
    ), sharding


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
    repeats: dict[int, int] | None = None,
    label_map: tuple[int, ...] | None = None,
) -> tf.data.Dataset:
    """A Petastorm batch reader as an endless tf.data pipeline of (uint8 images, int32 labels) batches.

    Raw pixel bytes are decoded in the graph (`tf.io.decode_raw` + reshape); rows are shuffled in a
    buffer of `shuffle_buffer` and, with `augment`, flipped at random horizontally and vertically.

    Args:
        shard: (index, count) to keep every count-th row starting at index, or None to keep all.
        repeats: oversampling: {label: times each image of that label appears}, or None.
        label_map: the table's label index -> the task's unit (`skinspark.tasks.Task.label_map`), or None.
    """
    from petastorm.tf_utils import make_petastorm_dataset

    def columns(batch):
        return getattr(batch, schema.IMAGE), getattr(batch, schema.LABEL)

    rows = make_petastorm_dataset(reader).map(columns)
    return _pixels(rows, height, width, batch_size, shuffle_buffer, augment, seed, shard, repeats, label_map)


def _pixels(
    rows: tf.data.Dataset,
    height: int,
    width: int,
    batch_size: int,
    shuffle_buffer: int,
    augment: bool,
    seed: int,
    shard: tuple[int, int] | None = None,
    repeats: dict[int, int] | None = None,
    label_map: tuple[int, ...] | None = None,
) -> tf.data.Dataset:
    """Batches of (raw image bytes, labels) as shuffled, optionally flipped, batches of pixels; with
    `label_map`, labels become the task's units; with `repeats` (keyed by those units), each image
    appears its label's number of times (before the shuffle, so the copies of one image spread over the
    shuffle buffer and each copy draws its own flips)."""
    size = stored_size(height, width)
    units = tf.constant(list(label_map or range(schema.NUM_CLASSES)), tf.int32)

    def decode(raw, label):
        tf.debugging.assert_equal(
            tf.strings.length(raw),
            size,
            message=f"an image in the training split does not hold {height}x{width}x3 bytes",
        )
        pixels = tf.io.decode_raw(raw, tf.uint8)
        return tf.reshape(pixels, (-1, height, width, 3)), tf.gather(units, tf.cast(label, tf.int32))

    dataset = rows.map(decode).unbatch()
    if shard is not None:
        dataset = dataset.shard(shard[1], shard[0])
    if repeats is not None:
        table = tf.constant([repeats.get(index, 1) for index in range(max(repeats) + 1)], tf.int64)
        dataset = dataset.flat_map(
            lambda image, label: tf.data.Dataset.from_tensors((image, label)).repeat(tf.gather(table, label))
        )
    dataset = dataset.shuffle(shuffle_buffer, seed=seed).batch(batch_size, drop_remainder=True)
    if augment:
        # One map per batch, not per image: each image of the batch still draws its own flips.
        dataset = dataset.map(
            lambda images, labels: (flip(images, seed), labels), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def flip(images: tf.Tensor, seed: int) -> tf.Tensor:
    """A batch of images, each flipped at random horizontally and, independently, vertically."""
    # Distinct op seeds: with one seed both flips would draw the same numbers and always come together.
    images = tf.image.random_flip_left_right(images, seed=seed)
    return tf.image.random_flip_up_down(images, seed=seed + 1)
