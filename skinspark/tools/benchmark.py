"""Side-by-side timings of skinspark's paths against plain baselines, in one run, written as JSON.

Ingest compares, on the same files:
  (a) the ingest job on the session's master (list, validate, split, read, decode, write Parquet), with
      each reader (the Python worker opening each file; Spark's JVM shipping its bytes);
  (b) one Python process decoding and resizing every file with the same decoder;
  (c) the paper's way: plain Pillow open + convert + resize of every file into a NumPy array.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd  # module level: pandas_udf resolves the decode UDF's type hints from here
from PIL import Image
from pyspark.sql import SparkSession

from skinspark import precision, schema
from skinspark.config import IngestConfig, ScoreConfig, TrainConfig
from skinspark.images import list_images
from skinspark.ingest import ingest
from skinspark.preprocess import decode_image
from skinspark.session import child_environment
from skinspark.train import train


def dataset_files(root: Path) -> list[Path]:
    """The dataset's JPEGs in a stable order."""
    return sorted(path for folder in schema.IMAGE_FOLDERS for path in (root / folder).glob("*.jpg"))


def _timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def single_process_decode(files: list[Path], height: int, width: int, decoder: str) -> np.ndarray:
    """Baseline (b): read and decode every file in this process with skinspark's own decoder."""
    return np.stack([decode_image(path.read_bytes(), height, width, decoder) for path in files])


def plain_pillow(files: list[Path], height: int, width: int) -> np.ndarray:
    """Baseline (c), the paper's way: a full-size Pillow decode, then resize, per file."""
    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB").resize((width, height)))
            for path in files
        ]
    )


def bench_ingest(spark: SparkSession, data_dir: Path, work_dir: Path, config: IngestConfig) -> dict:
    """Time (a) the ingest job with each reader, (b) a single-process decode and (c) plain Pillow on
    the same files.

    The session is warmed first by ingesting 200 files with their own CSV rows (a consistent subset,
    so the warm-up table is published like any other), so (a) measures the job's throughput rather
    than the JVM's and Python workers' start (reported separately as warm-up).
    """
    files = dataset_files(data_dir)
    # Every path then reads the files from the page cache: the timings compare work, not disk luck.
    for path in files:
        path.read_bytes()
    image_dirs = [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]
    metadata = str(data_dir / schema.METADATA_FILE)
    warm_files, warm_csv = _warm_up_subset(data_dir, work_dir, files, 200)
    warm_seconds, warm = _timed(
        lambda: ingest(spark, warm_files, warm_csv, str(work_dir / "warm-up-table"), config)
    )
    jobs = {}
    for reader in ("python", "spark"):
        reader_config = dataclasses.replace(config, reader=reader)
        jobs[reader] = _rounds(
            lambda c=reader_config: ingest(spark, image_dirs, metadata, str(work_dir / "ingest-table"), c),
            len(files),
            lambda result: {
                "ingested": result.manifest["counts"]["files"]["ingested"],
                "status": result.manifest["status"],
            },
        )
    seconds_b, _ = _timed(lambda: single_process_decode(files, config.height, config.width, config.decoder))
    seconds_c, _ = _timed(lambda: plain_pillow(files, config.height, config.width))
    images = len(files)
    rate_b, rate_c = images / seconds_b, images / seconds_c
    other_decoder = "pillow" if config.decoder == "simplejpeg" else "simplejpeg"
    sample = files[: min(len(files), 1000)]
    seconds_other, _ = _timed(
        lambda: single_process_decode(sample, config.height, config.width, other_decoder)
    )
    seconds_same, _ = _timed(
        lambda: single_process_decode(sample, config.height, config.width, config.decoder)
    )
    ours = jobs["python"]["images_per_second"]  # reader: auto on local files
    return {
        "images": images,
        "master": spark.sparkContext.master,
        "warm_up_seconds": round(warm_seconds, 3),
        "warm_up_status": warm.manifest["status"],
        "decoder": config.decoder,
        "a_ingest_job": jobs["python"],
        "a_ingest_job_reader_spark": jobs["spark"],
        "b_single_process_same_decoder": {
            "seconds": round(seconds_b, 3),
            "images_per_second": round(rate_b, 1),
        },
        "c_plain_pillow": {"seconds": round(seconds_c, 3), "images_per_second": round(rate_c, 1)},
        "ratio_a_over_b": round(ours / rate_b, 3),
        "ratio_a_over_c": round(ours / rate_c, 3),
        "ratio_reader_spark_over_b": round(jobs["spark"]["images_per_second"] / rate_b, 3),
        "targets": {"a_over_b": 1.5, "a_over_c": 3.0},
        "decoder_comparison_ms_per_image": {
            config.decoder: round(1000 * seconds_same / len(sample), 3),
            other_decoder: round(1000 * seconds_other / len(sample), 3),
        },
    }


def _rounds(
    run: Callable[[], object], images: int, describe: Callable[[object], dict], rounds: int = 2
) -> dict:
    """Run a job `rounds` times in the same session; its rate is the last round's (a warm JVM and warm
    Python workers: the steady state a long-lived application sees); every round's time is kept."""
    seconds = []
    for _ in range(rounds):
        elapsed, result = _timed(run)
        seconds.append(round(elapsed, 3))
    return {
        "seconds": seconds[-1],
        "images_per_second": round(images / seconds[-1], 1),
        "round_seconds": seconds,
        **describe(result),
    }


def _warm_up_subset(data_dir: Path, work_dir: Path, files: list[Path], count: int) -> tuple[list[str], str]:
    """The first `count` files and a CSV holding exactly their rows: a small, consistent dataset."""
    chosen = files[:count]
    meta = pd.read_csv(data_dir / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    subset = meta[meta[schema.IMAGE_ID].isin({path.stem for path in chosen})]
    csv_path = work_dir / "warm-up" / schema.METADATA_FILE
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    subset.to_csv(csv_path, index=False)
    return [str(path) for path in chosen], str(csv_path)


# --------------------------------------------------------------------------------------------------
# Training


def cached_files(data_dir: Path) -> list[Path]:
    """The dataset's image files, each read once so that every timed path reads from the page cache."""
    files = dataset_files(data_dir)
    for path in files:
        path.read_bytes()
    return files


def trained_model(
    spark: SparkSession,
    data_dir: Path,
    work_dir: Path,
    ingest_config: IngestConfig,
    train_config: TrainConfig,
    name: str,
    epochs: int,
) -> Path:
    """`work_dir/name`: the training job's model of `epochs` epochs, trained once and then reused."""
    model_dir = work_dir / name
    if not (model_dir / "model.keras").is_file():
        table = _ensure_table(spark, data_dir, work_dir, ingest_config)
        shutil.rmtree(model_dir, ignore_errors=True)
        train(spark, str(table), str(model_dir), dataclasses.replace(train_config, epochs=epochs), "")
    return model_dir


def _ensure_table(spark: SparkSession, data_dir: Path, work_dir: Path, config: IngestConfig) -> Path:
    """The ingested table of `data_dir` under `work_dir` at the config's image size, ingested once and
    reused by later sections."""
    table = work_dir / (
        "bench-table"
        if (config.height, config.width) == (75, 100)
        else f"bench-table-{config.height}x{config.width}"
    )
    manifest = table / "_manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete"):
        image_dirs = [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]
        ingest(spark, image_dirs, str(data_dir / schema.METADATA_FILE), str(table), config)
    return table


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

    table = _ensure_table(spark, data_dir, work_dir, ingest_config)
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


# --------------------------------------------------------------------------------------------------
# Scoring


def bench_score(
    spark: SparkSession,
    data_dir: Path,
    work_dir: Path,
    ingest_config: IngestConfig,
    train_config: TrainConfig,
    config: ScoreConfig,
    archive_files: int = 50000,
) -> dict:
    """Scoring the dataset's JPEGs with one model, in float32 and in bfloat16: (a) the scoring job on
    the session's master; (b) one Python process decoding with the same function in a pool of as many
    threads as cores and calling `predict_on_batch`; (c) Spark's `predict_batch_udf` with the same
    decoding; each baseline in the same precision as the job it is compared with. Then how far the
    two precisions' predictions agree, and the peak memory of the scoring job (its JVM and Python
    workers) on the archive and on an archive of `archive_files` files (the same JPEGs hard-linked
    under more names), each in its own process.
    """
    from skinspark.score import score

    files = cached_files(data_dir)
    model_dir = trained_model(spark, data_dir, work_dir, ingest_config, train_config, "score-model", 1)
    warm_seconds, _ = _timed(
        lambda: score(
            spark, str(model_dir), str(work_dir / "score-warm-up"), config, [str(p) for p in files[:200]]
        )
    )
    figures: dict = {"images": len(files), "master": spark.sparkContext.master}
    figures["warm_up_seconds"] = round(warm_seconds, 3)
    for kind in (precision.FLOAT32, precision.BFLOAT16):
        figures[kind] = _score_sides(spark, files, data_dir, work_dir, model_dir, config, kind)
    figures["speed_up_bfloat16_over_float32"] = {
        side: round(
            figures["bfloat16"][side]["images_per_second"] / figures["float32"][side]["images_per_second"], 3
        )
        for side in ("a_score_job", "b_thread_pool_single_process", "c_predict_batch_udf")
    }
    figures["bfloat16_against_float32"] = prediction_agreement(
        spark, *(work_dir / f"score-output-{kind}" for kind in (precision.FLOAT32, precision.BFLOAT16))
    )
    figures["targets"] = {
        "a_over_b": 0.9,
        "a_over_c": 1.5,
        "memory_ratio_max": 1.2,
        "bfloat16_speed_up_a": 1.3,
        "argmax_agreement_min": 0.99,
        "max_probability_difference": 0.01,
    }
    figures["memory"] = score_memory(data_dir, work_dir, model_dir, archive_files)
    return figures


def _score_sides(
    spark: SparkSession,
    files: list[Path],
    data_dir: Path,
    work_dir: Path,
    model_dir: Path,
    config: ScoreConfig,
    kind: str,
) -> dict:
    """One precision's side by side: the job with each reader (a), the thread pool (b), (c)."""
    from skinspark.score import score

    image_dirs = [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]
    jobs = {}
    for reader in ("spark", "python"):  # python last: its output is the one compared across precisions
        reader_config = dataclasses.replace(config, reader=reader, precision=kind)
        jobs[reader] = _rounds(
            lambda c=reader_config: score(
                spark, str(model_dir), str(work_dir / f"score-output-{kind}"), c, image_dirs
            ),
            len(files),
            lambda result: {
                "rows": result.manifest.get("counts", {}).get("rows"),
                "status": result.manifest["status"],
                "precision": result.manifest["run"].get("workers", {}).get("precision"),
            },
        )
    cores = spark.sparkContext.defaultParallelism
    seconds_b, _ = _timed(lambda: thread_pool_scoring(files, model_dir, config.batch_size, cores, kind))
    seconds_c, _ = _timed(
        lambda: predict_batch_udf_scoring(spark, image_dirs, model_dir, config.batch_size, kind)
    )
    rate = {
        "a": jobs["python"]["images_per_second"],
        "b": len(files) / seconds_b,
        "c": len(files) / seconds_c,
    }
    return {
        "a_score_job": jobs["python"],
        "a_score_job_reader_spark": jobs["spark"],
        "b_thread_pool_single_process": {
            "seconds": round(seconds_b, 3),
            "images_per_second": round(rate["b"], 1),
            "threads": cores,
        },
        "c_predict_batch_udf": {"seconds": round(seconds_c, 3), "images_per_second": round(rate["c"], 1)},
        "ratio_a_over_b": round(rate["a"] / rate["b"], 3),
        "ratio_a_over_c": round(rate["a"] / rate["c"], 3),
        "ratio_reader_spark_over_b": round(jobs["spark"]["images_per_second"] / rate["b"], 3),
    }


def prediction_agreement(spark: SparkSession, first: Path, second: Path) -> dict:
    """How far two scoring outputs of the same files agree: the share of equal arg-max labels and the
    largest difference of any class probability, over the files both predicted."""
    from pyspark.sql import functions as F

    columns = [f"prob_{label}" for label in schema.LABELS]

    def read(path: Path, suffix: str):
        frame = spark.read.parquet(str(path)).where(F.col("predicted_dx").isNotNull())
        return frame.select(
            "path", F.col("predicted_dx").alias(f"dx{suffix}"), *[F.col(c).alias(c + suffix) for c in columns]
        )

    joined = read(first, "_a").join(read(second, "_b"), "path").toPandas()
    a = joined[[c + "_a" for c in columns]].to_numpy()
    b = joined[[c + "_b" for c in columns]].to_numpy()
    return {
        "files": int(len(joined)),
        "argmax_agreement": round(float((joined["dx_a"] == joined["dx_b"]).mean()), 5)
        if len(joined)
        else None,
        "max_probability_difference": round(float(np.abs(a - b).max()), 5) if len(joined) else None,
        "mean_probability_difference": round(float(np.abs(a - b).mean()), 6) if len(joined) else None,
    }


def thread_pool_scoring(
    files: list[Path], model_dir: Path, batch_size: int, threads: int, kind: str = precision.FLOAT32
) -> np.ndarray:
    """Baseline (b): decode in a thread pool, predict each batch with one `predict_on_batch` call.

    The next batch is decoded while the current one is predicted, as a careful user would write it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from skinspark.model_dir import load_model, read_preprocessing

    spec = read_preprocessing(str(model_dir))
    model = precision.in_precision(load_model(str(model_dir)), kind)

    def decode(path: Path) -> np.ndarray:
        return decode_image(path.read_bytes(), spec["height"], spec["width"], spec["decoder"])

    batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    outputs = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [pool.submit(decode, path) for path in batches[0]] if batches else []
        for index in range(len(batches)):
            pixels = np.stack([future.result() for future in pending])
            if index + 1 < len(batches):
                pending = [pool.submit(decode, path) for path in batches[index + 1]]
            outputs.append(np.asarray(model.predict_on_batch(pixels)))
    return np.concatenate(outputs) if outputs else np.zeros((0, schema.NUM_CLASSES), np.float32)


def predict_batch_udf_scoring(
    spark: SparkSession,
    image_dirs: list[str],
    model_dir: Path,
    batch_size: int,
    kind: str = precision.FLOAT32,
) -> int:
    """Baseline (c): Spark's own `pyspark.ml.functions.predict_batch_udf`, fed by a pandas UDF that
    decodes with the same function (the UDF takes numeric arrays, not encoded bytes)."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from skinspark.model_dir import read_preprocessing

    spec = read_preprocessing(str(model_dir))
    height, width, decoder = spec["height"], spec["width"], spec["decoder"]
    location = str(model_dir)

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def decode(contents: pd.Series) -> pd.Series:
        return pd.Series(
            [decode_image(data, height, width, decoder).reshape(-1).astype(np.float32) for data in contents]
        )

    def make_predict_fn():
        from skinspark import precision as precision_module
        from skinspark.model_dir import load_model

        model = precision_module.in_precision(load_model(location), kind)

        def predict(inputs: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_on_batch(inputs.astype(np.uint8)))

        return predict

    classify = predict_batch_udf(
        make_predict_fn,
        return_type=T.ArrayType(T.FloatType()),
        batch_size=batch_size,
        input_tensor_shapes=[[height, width, 3]],
    )
    frame = list_images(spark, image_dirs).select("path", classify(decode("content")).alias("probabilities"))
    output = str(Path(location).parent / "predict-batch-udf-output")
    frame.write.mode("overwrite").parquet(output)
    return spark.read.parquet(output).count()


def score_memory(data_dir: Path, work_dir: Path, model_dir: Path, archive_files: int) -> dict:
    """Peak resident memory of the scoring job's process tree (driver JVM, executors, Python workers)
    on the dataset's archive and on one of `archive_files` files, each run as its own `spark-submit`-
    like process on local[2]. The larger archive hard-links the same JPEGs under more names in nested
    folders, so only the file count differs."""
    files = dataset_files(data_dir)
    big = work_dir / f"archive-{archive_files}"
    if not big.is_dir() or sum(1 for _ in big.rglob("*.jpg")) != archive_files:
        shutil.rmtree(big, ignore_errors=True)
        for index in range(archive_files):
            source = files[index % len(files)]
            target = big / f"copy-{index // len(files)}" / f"{index % 100:02d}" / f"{source.stem}-{index}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    runs = {}
    for name, inputs in (
        ("small", [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]),
        ("large", [str(big)]),
    ):
        output = work_dir / f"score-memory-{name}"
        command = [
            sys.executable,
            "-m",
            "jobs.score",
            "--model",
            str(model_dir),
            "--images",
            *inputs,
            "--output",
            str(output),
            "--master",
            "local[2]",
        ]
        started = time.perf_counter()
        peak = peak_tree_rss(command)
        manifest = json.loads((output / "_manifest.json").read_text())
        runs[name] = {
            "files": manifest["run"]["files_seen"],
            "seconds": round(time.perf_counter() - started, 1),
            "images_per_second": manifest["run"]["images_per_second"],
            "peak_rss_mb": round(peak / 2**20, 1),
        }
    runs["ratio_large_over_small"] = round(runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"], 3)
    return runs


def peak_tree_rss(command: list[str], interval: float = 0.25) -> int:
    """Run `command` to the end, sampling the summed RSS of it and all its descendants; the peak."""
    import psutil

    # A clean environment: a child of a spark-submit driver would otherwise join the parent's JVM.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_environment()
    )
    parent = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        total = 0
        try:
            for member in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {process.returncode}")
    return peak
