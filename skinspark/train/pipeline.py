"""Each rank's training rows as a tf.data pipeline of pixel batches, whatever reads them (Petastorm or
pyarrow): the raw bytes decoded in the graph, labels mapped to the task's units, oversampled,
shuffled, batched and flipped."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from skinspark import schema
from skinspark.preprocess import stored_size


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How one rank's training rows become batches, whichever reader feeds them."""

    height: int  # the stored images' size
    width: int
    batch_size: int  # per rank
    shuffle_buffer: int  # rows
    augment: bool  # random horizontal and vertical flips
    seed: int  # of the shuffle and the flips: the run's seed + the rank
    repeats: dict[int, int] | None = None  # oversampling: {unit: times each image of it appears}, or None
    label_map: tuple[int, ...] | None = None  # the table's label -> the task's unit (Task.label_map), or None


def pixel_batches(
    rows: tf.data.Dataset, pipeline: Pipeline, shard: tuple[int, int] | None = None
) -> tf.data.Dataset:
    """Batches of (raw image bytes, labels) as `pipeline`'s endless, shuffled, optionally flipped,
    batches of (uint8 pixels, int32 labels).

    Raw pixel bytes are decoded in the graph (`tf.io.decode_raw` + reshape). With `label_map`, labels
    become the task's units; with `repeats` (keyed by those units), each image appears its label's
    number of times (before the shuffle, so the copies of one image spread over the shuffle buffer and
    each copy draws its own flips). `shard` (index, count) keeps every count-th row starting at index.
    """
    height, width, repeats = pipeline.height, pipeline.width, pipeline.repeats
    size = stored_size(height, width)
    units = tf.constant(list(pipeline.label_map or range(schema.NUM_CLASSES)), tf.int32)

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
    dataset = dataset.shuffle(pipeline.shuffle_buffer, seed=pipeline.seed)
    dataset = dataset.batch(pipeline.batch_size, drop_remainder=True)
    if pipeline.augment:
        # One map per batch, not per image: each image of the batch still draws its own flips.
        dataset = dataset.map(
            lambda images, labels: (flip(images, pipeline.seed), labels), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def flip(images: tf.Tensor, seed: int) -> tf.Tensor:
    """A batch of images, each flipped at random horizontally and, independently, vertically."""
    # Distinct op seeds: with one seed both flips would draw the same numbers and always come together.
    images = tf.image.random_flip_left_right(images, seed=seed)
    return tf.image.random_flip_up_down(images, seed=seed + 1)
