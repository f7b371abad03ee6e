"""What a training run leaves in MODEL_DIR: the model, metrics, history, test predictions, plots and
manifest, moved in whole with `_manifest.json` last; and the run's one-screen summary."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinspark import metrics as metrics_module
from skinspark import schema
from skinspark.manifest import MANIFEST_FILE, JobResult, write_json_atomic
from skinspark.model_dir import (
    CONFUSION_MATRIX_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    RELIABILITY_DIAGRAM_FILE,
    TEST_PREDICTIONS_FILE,
    TRAINING_CURVES_FILE,
    save_model_dir,
)
from skinspark.tasks import DX7, Task


@dataclasses.dataclass(frozen=True)
class TrainResult(JobResult):
    """What `train` produced: the model directory (`output`), its manifest and test metrics, the
    per-epoch history and the trained model."""

    metrics: dict
    history: pd.DataFrame
    model: Any  # the trained tf.keras.Model, as saved in the model directory

    @property
    def model_dir(self) -> str:
        return self.output


def prediction_frame(
    test: dict[str, np.ndarray], probabilities: np.ndarray, task: Task = DX7
) -> pd.DataFrame:
    """One row per test image: its id, label and predicted label (the task's unit indices) and one
    probability per unit."""
    frame = pd.DataFrame(
        {
            schema.IMAGE_ID: test["image_id"],
            schema.LABEL: test["label"],
            "predicted": probabilities.argmax(axis=1),
        }
    )
    for index, column in enumerate(task.prob_columns):
        frame[column] = probabilities[:, index]
    return frame


def write_outputs(
    directory: Path,
    model,
    ingest_manifest: dict,
    config_yaml: str,
    outputs: dict,
    manifest: dict,
    task: Task = DX7,
) -> None:
    """Write the final artifacts into a staging folder and move them in, `_manifest.json` last.

    `outputs` holds "metrics" (classification_metrics of the test split), "history" (one row per
    epoch) and "predictions" (one row per test image).
    """
    directory.mkdir(parents=True, exist_ok=True)
    # The model directory also holds the checkpoints --resume needs, so it cannot be replaced as a
    # whole; each artifact is moved in by an atomic rename instead.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging_name:
        staging = Path(staging_name)
        save_model_dir(model, str(staging), ingest_manifest, config_yaml, task)
        test_metrics = outputs["metrics"]
        write_json_atomic(staging / METRICS_FILE, test_metrics)
        outputs["history"].to_csv(staging / HISTORY_FILE, index=False, float_format="%.9g")
        outputs["predictions"].to_csv(staging / TEST_PREDICTIONS_FILE, index=False, float_format="%.9g")
        metrics_module.plot_training_curves(outputs["history"], staging / TRAINING_CURVES_FILE)
        metrics_module.plot_confusion_matrix(
            test_metrics["confusion_matrix"], test_metrics["labels"], staging / CONFUSION_MATRIX_FILE
        )
        metrics_module.plot_reliability_diagram(
            test_metrics["calibration"], staging / RELIABILITY_DIAGRAM_FILE, "test split"
        )
        for path in sorted(staging.iterdir()):
            os.replace(path, directory / path.name)
    write_json_atomic(directory / MANIFEST_FILE, manifest)


def precision_line(manifest: dict) -> str:
    """Which precision the ranks trained in and the driver evaluated in, and what was asked for."""
    record = manifest["precision"]
    ranks = [rank["precision"] for rank in manifest["ranks"]]
    trained = ", ".join(
        f"{name} on {ranks.count(name)} of {len(ranks)} rank(s)" for name in record["trained_in"]
    )
    return (
        f"precision: {trained or 'nothing trained in this run'} (requested {record['requested']}); "
        f"test split evaluated in {record['evaluated_in']}"
    )


def train_summary(result: TrainResult) -> str:
    """A one-screen summary of a training run: what ran, then the test metrics."""
    manifest = result.manifest
    lines = [
        f"train complete: {manifest['model']} ({manifest['parameters']:,} parameters), "
        f"{manifest['epochs_trained']} epoch(s) trained of {manifest['epochs']} on {manifest['num_proc']} "
        f"rank(s) in {manifest['seconds']:.1f} s"
        + (f" ({manifest['images_per_second']:.0f} images/s)" if manifest["images_per_second"] else ""),
        f"  images: train {manifest['rows']['train']}, val {manifest['rows']['val']}, "
        f"test {manifest['rows']['test']}; {manifest['steps_per_epoch']} steps per epoch per rank",
    ]
    if len(result.history):
        last = result.history.iloc[-1]
        lines.append(
            f"  last epoch {int(last['epoch'])}: loss {last['loss']:.4f}, "
            f"accuracy {last['accuracy']:.4f}, "
            f"val_loss {last['val_loss']:.4f}, val_accuracy {last['val_accuracy']:.4f}"
        )
    if manifest.get("fold") is not None:
        validation = manifest["validation"]
        lines.append(
            f"  fold {manifest['fold']} of {manifest['folds']}: validated on fold {manifest['fold']} "
            f"({validation['images']} images: accuracy {validation['accuracy']:.4f}, balanced accuracy "
            f"{validation['balanced_accuracy']:.4f}, macro F1 {validation['macro_f1']:.4f}), "
            "trained on the others"
        )
    lines.append("test split: " + metrics_module.metrics_summary(result.metrics))
    lines.append("  " + metrics_module.against_baselines(result.metrics))
    lines.append("  " + precision_line(manifest))
    lines.append(f"model: {result.model_dir}")
    return "\n".join(lines)
