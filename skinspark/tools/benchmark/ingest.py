"""Side-by-side timings of skinspark's paths against plain baselines, in one run, written as JSON.

Ingest compares, on the same files:
  (a) the ingest job on the session's master (list, validate, split, read, decode, write Parquet), with
      each reader (the Python worker opening each file; Spark's JVM shipping its bytes);
  (b) one Python process decoding and resizing every file with the same decoder;
  (c) the paper's way: plain Pillow open + convert + resize of every file into a NumPy array.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.sql import SparkSession

from skinspark import schema
from skinspark.config import IngestConfig
from skinspark.ingest import ingest
from skinspark.manifest import COUNTS_KEY, STATUS_KEY
from skinspark.preprocess import decode_image
from skinspark.tools.benchmark.inputs import dataset_files
from skinspark.tools.benchmark.timing import timed, timed_rounds


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
    warm_seconds, warm = timed(
        lambda: ingest(spark, warm_files, warm_csv, str(work_dir / "warm-up-table"), config)
    )
    jobs = {}
    for reader in ("python", "spark"):
        reader_config = dataclasses.replace(config, reader=reader)
        jobs[reader] = timed_rounds(
            lambda c=reader_config: ingest(spark, image_dirs, metadata, str(work_dir / "ingest-table"), c),
            len(files),
            lambda result: {
                "ingested": result.manifest[COUNTS_KEY]["files"]["ingested"],
                "status": result.manifest[STATUS_KEY],
            },
        )
    seconds_b, _ = timed(lambda: single_process_decode(files, config.height, config.width, config.decoder))
    seconds_c, _ = timed(lambda: plain_pillow(files, config.height, config.width))
    images = len(files)
    rate_b, rate_c = images / seconds_b, images / seconds_c
    other_decoder = "pillow" if config.decoder == "simplejpeg" else "simplejpeg"
    sample = files[: min(len(files), 1000)]
    seconds_other, _ = timed(
        lambda: single_process_decode(sample, config.height, config.width, other_decoder)
    )
    seconds_same, _ = timed(
        lambda: single_process_decode(sample, config.height, config.width, config.decoder)
    )
    ours = jobs["python"]["images_per_second"]  # reader: auto on local files
    return {
        "images": images,
        "master": spark.sparkContext.master,
        "warm_up_seconds": round(warm_seconds, 3),
        "warm_up_status": warm.manifest[STATUS_KEY],
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


def _warm_up_subset(data_dir: Path, work_dir: Path, files: list[Path], count: int) -> tuple[list[str], str]:
    """The first `count` files and a CSV holding exactly their rows: a small, consistent dataset."""
    chosen = files[:count]
    meta = pd.read_csv(data_dir / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    subset = meta[meta[schema.IMAGE_ID].isin({path.stem for path in chosen})]
    csv_path = work_dir / "warm-up" / schema.METADATA_FILE
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    subset.to_csv(csv_path, index=False)
    return [str(path) for path in chosen], str(csv_path)
