"""The benchmark's `export` section: the TensorFlow Lite exports of one trained model, their agreement with
Keras, and the scoring job run with each of them beside the Keras model, side by side in one session."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from pyspark.sql import SparkSession

from skinspark import precision, schema
from skinspark.config import IngestConfig, ScoreConfig, TrainConfig
from skinspark.export import QUANTIZATIONS, export_tflite
from skinspark.tools.benchmark.inputs import cached_files, trained_model
from skinspark.tools.benchmark.timing import timed_rounds

EXPORT_EPOCHS = 8


def bench_export(
    spark: SparkSession,
    data_dir: Path,
    work_dir: Path,
    ingest_config: IngestConfig,
    train_config: TrainConfig,
    config: ScoreConfig,
) -> dict:
    """Export a model trained for EXPORT_EPOCHS epochs (once; reused) in every quantization, then time
    the scoring job over the dataset's JPEGs with the Keras model (float32 and bfloat16) and with each
    export, two rounds each in this session (the second is the rate). A model of a single epoch
    predicts near-ties, whose argmax any rounding flips: the agreement figures need one that learned."""
    from skinspark.score import score

    files = cached_files(data_dir)
    model_dir = trained_model(
        spark, data_dir, work_dir, ingest_config, train_config, "export-model", EXPORT_EPOCHS
    )
    figures: dict = {"images": len(files), "master": spark.sparkContext.master, "exports": {}}
    models = {f"keras_{kind}": (model_dir, kind) for kind in (precision.FLOAT32, precision.BFLOAT16)}
    for quantize in QUANTIZATIONS:
        out = work_dir / f"export-tflite-{quantize}"
        shutil.rmtree(out, ignore_errors=True)
        report = export_tflite(str(model_dir), str(out), quantize)
        figures["exports"][quantize] = {
            key: report[key]
            for key in (
                "tflite_bytes",
                "keras_bytes",
                "test_images",
                "argmax_agreement",
                "max_probability_difference",
                "milliseconds_per_image",
                "agreement_target",
                "meets_target",
            )
        }
        models[f"tflite_{quantize}"] = (out, precision.FLOAT32)
    image_dirs = [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]
    scoring = {}
    for name, (directory, kind) in models.items():
        job_config = dataclasses.replace(config, precision=kind)
        scoring[name] = timed_rounds(
            lambda d=directory, c=job_config, n=name: score(
                spark, str(d), str(work_dir / f"export-score-{n}"), c, image_dirs
            ),
            len(files),
            lambda result: {
                "rows": result.manifest.get("counts", {}).get("rows"),
                "precision": result.manifest["run"].get("workers", {}).get("precision"),
            },
        )
    figures["score_job"] = scoring
    keras = scoring["keras_float32"]["images_per_second"]
    figures["ratio_over_keras_float32"] = {
        name: round(side["images_per_second"] / keras, 3) for name, side in scoring.items()
    }
    figures["targets"] = {"argmax_agreement_float": 0.99, "argmax_agreement_int8": 0.97}
    return figures
