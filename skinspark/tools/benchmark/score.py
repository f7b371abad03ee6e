"""The benchmark's `score` section: the scoring job against a thread-pool process and Spark's
`predict_batch_udf`, in float32 and in bfloat16, how far the two precisions agree, and the job's peak
memory on a small and a large archive."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd  # module level: pandas_udf resolves the decode UDF's type hints from here
from pyspark.sql import SparkSession

from skinspark import precision, schema
from skinspark.config import IngestConfig, ScoreConfig, TrainConfig
from skinspark.images import list_images
from skinspark.manifest import COUNTS_KEY, MANIFEST_FILE, STATUS_KEY
from skinspark.preprocess import decode_image
from skinspark.tools.benchmark.inputs import cached_files, dataset_files, trained_model
from skinspark.tools.benchmark.timing import peak_tree_rss, timed, timed_rounds


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
    warm_seconds, _ = timed(
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
        jobs[reader] = timed_rounds(
            lambda c=reader_config: score(
                spark, str(model_dir), str(work_dir / f"score-output-{kind}"), c, image_dirs
            ),
            len(files),
            lambda result: {
                "rows": result.manifest.get(COUNTS_KEY, {}).get("rows"),
                "status": result.manifest[STATUS_KEY],
                "precision": result.manifest["run"].get("workers", {}).get("precision"),
            },
        )
    cores = spark.sparkContext.defaultParallelism
    seconds_b, _ = timed(lambda: thread_pool_scoring(files, model_dir, config.batch_size, cores, kind))
    seconds_c, _ = timed(
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
            "skinspark.entry.score",
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
        manifest = json.loads((output / MANIFEST_FILE).read_text())
        runs[name] = {
            "files": manifest["run"]["files_seen"],
            "seconds": round(time.perf_counter() - started, 1),
            "images_per_second": manifest["run"]["images_per_second"],
            "peak_rss_mb": round(peak / 2**20, 1),
        }
    runs["ratio_large_over_small"] = round(runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"], 3)
    return runs
