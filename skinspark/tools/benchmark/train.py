"""The benchmark's `train` section: an epoch of the training job on each installed backend against Keras
`fit` on the same images in memory, in float32 and in bfloat16."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession

from skinspark import precision, schema
from skinspark.config import IngestConfig, TrainConfig
from skinspark.tools.benchmark.inputs import ensure_table
from skinspark.train import train


def bench_train_throughput(
    spark: SparkSession, data_dir: Path, work_dir: Path, ingest_config: IngestConfig, config: TrainConfig
) -> dict:
    """Epoch throughput in float32 and in bfloat16 of the training job on each installed backend, 2
    ranks of one core each (horovod: Horovod on Spark reading Petastorm shards; tf_distribute: a Spark
    barrier stage running MultiWorkerMirroredStrategy over pyarrow shards), against the paper's way: one
    process running Keras `fit` on the same training images held in a NumPy array, with TensorFlow's
    default threads (all cores); same model, class weights, global batch and precision. Beside them,
    the ceiling of 2 one-thread ranks on this machine: 2 processes of one thread fitting their halves
    of the images at once with no gradient exchange (where one thread already does half of what all
    cores do, no data-parallel backend can beat `fit` by much). Each side runs two epochs and the
    second (steady state) is compared; the first includes graph tracing and reader start.
    """
    from skinspark.train import petastorm_url, read_split

    table = ensure_table(spark, data_dir, work_dir, ingest_config)
    height, width = ingest_config.height, ingest_config.width
    train_split = read_split(petastorm_url(table.absolute().as_uri()) + "/split=train", height, width)
    backends = [name for name in TRAIN_BACKENDS if name != "horovod" or _horovod_installed()]
    figures: dict = {
        "model": config.model,
        "image_size": [height, width],
        "train_images": int(len(train_split["label"])),
        "global_batch": config.batch_size * 2,
        "backends": backends,
    }
    for kind in (precision.FLOAT32, precision.BFLOAT16):
        figures[kind] = _train_throughput(spark, table, work_dir, config, train_split, kind, backends)
    sides = [*backends, "keras_fit_in_memory"]
    figures["speed_up_bfloat16_over_float32"] = {
        side: round(
            figures["bfloat16"][side]["images_per_second"] / figures["float32"][side]["images_per_second"], 3
        )
        for side in sides
    }
    figures["targets"] = {
        "horovod_over_keras_fit": 0.9,
        "tf_distribute_over_keras_fit": 1.1,
        "tf_distribute_over_horovod": 1.3,
        "bfloat16_speed_up_each_backend": 2.0,
    }
    return figures


TRAIN_BACKENDS = ("horovod", "tf_distribute")


def _horovod_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("horovod") is not None


def _train_throughput(
    spark: SparkSession,
    table: Path,
    work_dir: Path,
    config: TrainConfig,
    train_split: dict,
    kind: str,
    backends: list[str],
) -> dict:
    """One precision's side by side: the training job on each backend, Keras `fit` in memory, and
    independent one-thread fits (the most that ranks of one thread can reach here)."""
    from skinspark.train import class_weights

    ranks = 2
    config = dataclasses.replace(config, epochs=2, num_proc=ranks, precision=kind)
    figures: dict = {}
    for backend in backends:
        model_dir = work_dir / f"train-throughput-model-{backend}-{kind}"
        shutil.rmtree(model_dir, ignore_errors=True)
        result = train(spark, str(table), str(model_dir), dataclasses.replace(config, backend=backend), "")
        figures[backend] = {
            "ranks": ranks,
            "precision": result.manifest["precision"]["trained_in"],
            "epoch_seconds": [round(float(value), 2) for value in result.history["seconds"]],
            "images_per_second": round(float(result.history.iloc[-1]["images_per_second"]), 1),
            "augment": config.augment,
        }

    labels = train_split["label"]
    counts = {label: int((labels == index).sum()) for index, label in enumerate(schema.LABELS)}
    weights = class_weights(counts, config.class_weight)
    seconds = _fit_in_memory(train_split["image"], labels, config, kind, ranks, weights)
    baseline_rate = len(labels) / seconds[-1]
    figures["keras_fit_in_memory"] = {
        "epoch_seconds": [round(value, 2) for value in seconds],
        "images_per_second": round(baseline_rate, 1),
        "tensorflow_threads": "default (all cores)",
    }
    alone = _independent_fits(train_split, work_dir, config, kind, ranks, weights)
    figures["independent_fits"] = {
        "processes": ranks,
        "images_per_second_each": [round(rate, 1) for rate in alone],
        "images_per_second": round(sum(alone), 1),
        "tensorflow_threads": "1 per process",
    }
    for backend in backends:
        figures[f"ratio_{backend}_over_keras_fit"] = round(
            figures[backend]["images_per_second"] / baseline_rate, 3
        )
        figures[f"ratio_{backend}_over_independent_fits"] = round(
            figures[backend]["images_per_second"] / sum(alone), 3
        )
    figures["ratio_independent_fits_over_keras_fit"] = round(sum(alone) / baseline_rate, 3)
    if len(backends) == 2:
        figures["ratio_tf_distribute_over_horovod"] = round(
            figures["tf_distribute"]["images_per_second"] / figures["horovod"]["images_per_second"], 3
        )
    return figures


def _fit_in_memory(
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    kind: str,
    ranks: int,
    weights: dict[int, float] | None,
    batch_size: int | None = None,
) -> list[float]:
    """Keras `fit` for 2 epochs on images held in memory, in precision `kind`, with the job's model,
    class weights and rate for `ranks` ranks; each epoch's wall seconds."""
    import tensorflow as tf

    from skinspark.model import build_model

    tf.keras.utils.set_random_seed(config.seed)
    timer = _epoch_timer()
    with precision.policy(kind):  # the baseline computes in the same precision as the job
        model = build_model(config.model, images.shape[1:], schema.NUM_CLASSES, config.dropout)
        model.compile(
            optimizer=tf.keras.optimizers.Adam(config.learning_rate * ranks),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(
            images,
            labels,
            batch_size=batch_size or config.batch_size * ranks,
            epochs=2,
            shuffle=True,
            class_weight=weights,
            callbacks=[timer],
            verbose=0,
        )
    return timer.seconds


def _independent_fits(
    train_split: dict,
    work_dir: Path,
    config: TrainConfig,
    kind: str,
    ranks: int,
    weights: dict[int, float] | None,
) -> list[float]:
    """What `ranks` ranks of one thread each can reach here with nothing shared: as many processes,
    started together, each running `fit` with one TensorFlow thread on its own 1/ranks of the images at
    the per-rank batch, with no gradient exchange. Each one's steady-state images/s (second epoch)."""
    import multiprocessing

    path = work_dir / "train-throughput-images.npz"
    np.savez(path, image=train_split["image"], label=train_split["label"])
    try:
        with multiprocessing.get_context("spawn").Pool(ranks) as pool:
            return pool.starmap(
                _fit_alone, [(str(path), rank, ranks, config, kind, weights) for rank in range(ranks)]
            )
    finally:
        path.unlink()


def _fit_alone(
    path: str, rank: int, ranks: int, config: TrainConfig, kind: str, weights: dict[int, float] | None
) -> float:
    """One process of `_independent_fits` (a fresh interpreter: its threads are set before any op)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with np.load(path) as arrays:
        images, labels = arrays["image"][rank::ranks], arrays["label"][rank::ranks]
    seconds = _fit_in_memory(images, labels, config, kind, ranks, weights, batch_size=config.batch_size)
    return len(labels) / seconds[-1]


def _epoch_timer():
    """A Keras callback that records each epoch's wall time in its `seconds` list."""
    import tensorflow as tf

    class EpochTimer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self._started = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._started)

    return EpochTimer()
