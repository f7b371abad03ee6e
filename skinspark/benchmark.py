"""Side-by-side timings of skinspark's paths against plain baselines, in one run, written as JSON.

Ingest compares, on the same files:
  (a) the ingest job on the session's master (decode, validate, split, write Parquet);
  (b) one Python process decoding and resizing every file with the same decoder;
  (c) the paper's way: plain Pillow open + convert + resize of every file into a NumPy array.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pyspark.sql import SparkSession

from skinspark import schema
from skinspark.config import IngestConfig
from skinspark.ingest import ingest
from skinspark.preprocess import decode_image


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
    """Time (a) the ingest job, (b) a single-process decode and (c) plain Pillow on the same files.

    The session is warmed first by ingesting the first 200 files, so (a) measures the job's
    throughput rather than the JVM's and Python workers' start (reported separately as warm-up).
    """
    files = dataset_files(data_dir)
    image_dirs = [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]
    warm_glob = [f"{image_dirs[0]}/ISIC_00243*.jpg"]
    warm_seconds, _ = _timed(
        lambda: ingest(
            spark, warm_glob, str(data_dir / schema.METADATA_FILE), str(work_dir / "warm-up-table"), config
        )
    )
    seconds_a, result = _timed(
        lambda: ingest(
            spark, image_dirs, str(data_dir / schema.METADATA_FILE), str(work_dir / "ingest-table"), config
        )
    )
    seconds_b, _ = _timed(lambda: single_process_decode(files, config.height, config.width, config.decoder))
    seconds_c, _ = _timed(lambda: plain_pillow(files, config.height, config.width))
    images = len(files)
    rate = {
        name: images / seconds for name, seconds in (("a", seconds_a), ("b", seconds_b), ("c", seconds_c))
    }
    other_decoder = "pillow" if config.decoder == "simplejpeg" else "simplejpeg"
    sample = files[: min(len(files), 1000)]
    seconds_other, _ = _timed(
        lambda: single_process_decode(sample, config.height, config.width, other_decoder)
    )
    seconds_same, _ = _timed(
        lambda: single_process_decode(sample, config.height, config.width, config.decoder)
    )
    return {
        "images": images,
        "master": spark.sparkContext.master,
        "warm_up_seconds": round(warm_seconds, 3),
        "decoder": config.decoder,
        "a_ingest_job": {
            "seconds": round(seconds_a, 3),
            "images_per_second": round(rate["a"], 1),
            "ingested": result.manifest["counts"]["files"]["ingested"],
        },
        "b_single_process_same_decoder": {
            "seconds": round(seconds_b, 3),
            "images_per_second": round(rate["b"], 1),
        },
        "c_plain_pillow": {"seconds": round(seconds_c, 3), "images_per_second": round(rate["c"], 1)},
        "ratio_a_over_b": round(rate["a"] / rate["b"], 3),
        "ratio_a_over_c": round(rate["a"] / rate["c"], 3),
        "targets": {"a_over_b": 1.5, "a_over_c": 3.0},
        "decoder_comparison_ms_per_image": {
            config.decoder: round(1000 * seconds_same / len(sample), 3),
            other_decoder: round(1000 * seconds_other / len(sample), 3),
        },
    }
