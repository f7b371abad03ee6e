"""What the benchmark's sections share as input: the dataset's files read into the page cache, its ingested
table and a model trained on it, each made once under the work directory and reused."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from pyspark.sql import SparkSession

from skinspark import schema
from skinspark.config import IngestConfig, TrainConfig
from skinspark.ingest import ingest
from skinspark.manifest import MANIFEST_FILE, STATUS_COMPLETE, STATUS_KEY
from skinspark.model_dir import MODEL_FILE
from skinspark.train import train


def dataset_files(root: Path) -> list[Path]:
    """The dataset's JPEGs in a stable order."""
    return sorted(path for folder in schema.IMAGE_FOLDERS for path in (root / folder).glob("*.jpg"))


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
    if not (model_dir / MODEL_FILE).is_file():
        table = ensure_table(spark, data_dir, work_dir, ingest_config)
        shutil.rmtree(model_dir, ignore_errors=True)
        train(spark, str(table), str(model_dir), dataclasses.replace(train_config, epochs=epochs), "")
    return model_dir


def ensure_table(spark: SparkSession, data_dir: Path, work_dir: Path, config: IngestConfig) -> Path:
    """The ingested table of `data_dir` under `work_dir` at the config's image size, ingested once and
    reused by later sections."""
    table = work_dir / (
        "bench-table"
        if (config.height, config.width) == (75, 100)
        else f"bench-table-{config.height}x{config.width}"
    )
    manifest = table / MANIFEST_FILE
    if not (manifest.is_file() and json.loads(manifest.read_text()).get(STATUS_KEY) == STATUS_COMPLETE):
        image_dirs = [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]
        ingest(spark, image_dirs, str(data_dir / schema.METADATA_FILE), str(table), config)
    return table
