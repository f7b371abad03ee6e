"""One hermetic Spark session for the whole test run: local[2], UI off, few shuffle partitions."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Before any test module imports TensorFlow: skinspark picks tf-keras (Keras 2) for `tf.keras` where it
# is installed (the modern stack), and TensorFlow reads that choice when it is first imported.
import skinspark  # noqa: E402, F401
from skinspark import schema  # noqa: E402

# Horovod and Petastorm are on the pinned stack only (`make setup STACK=modern` has neither).
needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="Horovod is not installed on this stack"
)
needs_petastorm = pytest.mark.skipif(
    importlib.util.find_spec("petastorm") is None, reason="Petastorm is not installed on this stack"
)


def tiny_model_dir(directory: Path, seed: int = 0, labels=schema.LABELS) -> Path:
    """A small Keras model with the model directory's contract (uint8 pixels in, a softmax over
    `labels` out: the seven diagnoses unless told otherwise)."""
    import tensorflow as tf

    from skinspark.model_dir import preprocessing_spec

    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=(75, 100, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(
        len(labels),
        activation="softmax",
        kernel_initializer=tf.keras.initializers.RandomNormal(stddev=3.0),
    )(x)
    directory.mkdir(parents=True, exist_ok=True)
    tf.keras.Model(inputs, outputs).save(directory / "model.keras")
    (directory / "labels.json").write_text(json.dumps({"labels": list(labels)}))
    (directory / "preprocessing.json").write_text(json.dumps(preprocessing_spec(75, 100, "simplejpeg")))
    return directory


# The data-parallel backends a whole training run is tested on, where the stack has them.
BACKENDS = [pytest.param("horovod", marks=needs_horovod), "tf_distribute"]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from skinspark.session import build_session

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = build_session(
        "skinspark-tests",
        master="local[2]",
        conf={
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.local.dir": str(tmp_path_factory.mktemp("spark-local")),
            "spark.driver.memory": "2g",
        },
    )
    try:
        yield session
    finally:
        session.stop()


def generated_dataset(directory: Path, images: int, seed: int, workers: int = 2) -> Path:
    """A generated HAM10000-shaped dataset (`skinspark.tools.synthetic.generate`) written into
    `directory`: the one way every test module makes its images."""
    from skinspark.tools.synthetic import generate

    generate(directory, images=images, seed=seed, workers=workers, overwrite=True)
    return directory


def ingested_table(source: Path, table: Path, *arguments: str) -> Path:
    """`source` (a generated dataset) ingested into `table` by the ingest job with `arguments` added;
    the job must succeed."""
    from jobs import ingest as ingest_job

    metadata = str(source / schema.METADATA_FILE)
    code = ingest_job.main(
        ["--images", str(source), "--metadata", metadata, "--output", str(table), *arguments]
    )
    assert code == 0
    return table


class Killed(Exception):
    """Stands for a kill of the driver in the middle of a chunk's commit."""


def kill_on_commit(monkeypatch, output: Path, commit: int = 2) -> None:
    """Make the scoring job's commit number `commit` (0-based) leave its chunk fully written in a staging
    directory inside `output`, never renamed, and stop with `Killed`: what a kill leaves behind."""
    from skinspark.score import chunks as score_chunks

    real_publish = score_chunks.publish
    published = []

    def killed(spark_session, staging, final, **options):
        if len(published) == commit:
            shutil.copytree(staging.removeprefix("file:"), output / f".chunk={commit:06d}.staging-killed")
            raise Killed
        real_publish(spark_session, staging, final, **options)
        published.append(final)

    monkeypatch.setattr(score_chunks, "publish", killed)


@pytest.fixture(scope="session")
def ingested(spark, tmp_path_factory) -> Path:
    """A small ingested table (150 generated images, split by lesion) that training tests share."""
    source = generated_dataset(tmp_path_factory.mktemp("train-source"), images=150, seed=1)
    return ingested_table(source, tmp_path_factory.mktemp("train-table") / "ham")


@pytest.fixture(scope="session")
def model_artifacts() -> set[str]:
    """What a finished training run leaves in MODEL_DIR (docs/jobs.md: "What `MODEL_DIR` holds")."""
    return {
        "model.keras",
        "labels.json",
        "preprocessing.json",
        "_config.yaml",
        "ingest_manifest.json",
        "metrics.json",
        "history.csv",
        "test_predictions.csv",
        "training_curves.png",
        "confusion_matrix.png",
        "reliability_diagram.png",
        "_manifest.json",
        "checkpoints",
    }
