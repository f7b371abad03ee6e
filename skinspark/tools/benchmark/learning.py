"""The learning benchmark: what the paper's recipe learns on one dataset under three splitting
protocols (by lesion, by image, oversampled before the split), and in float32 against bfloat16.

Each run trains for real (25 epochs by default); a finished run with the same config is reused, so
an interrupted benchmark does not train it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession
from sklearn.metrics import balanced_accuracy_score

from skinspark import precision, schema
from skinspark.config import IngestConfig, TrainConfig
from skinspark.ingest import ingest
from skinspark.manifest import MANIFEST_FILE, STATUS_COMPLETE, STATUS_KEY
from skinspark.model_dir import (
    HISTORY_FILE,
    METRICS_FILE,
    TEST_PREDICTIONS_FILE,
    load_model,
    read_preprocessing,
)
from skinspark.table import EVAL_BATCH_SIZE, read_split
from skinspark.tasks import get_task
from skinspark.train import train

# The common mistake the third protocol reproduces: rare classes oversampled (images copied) up to this
# many images each before the split, so copies of one photograph land in train and in test.
OVERSAMPLE_TO = 1000
LEARNING_PROTOCOLS = ("split_by_lesion", "split_by_image", "oversampled_before_split")


def bench_learning(
    spark: SparkSession,
    data_dir: Path,
    work_dir: Path,
    ingest_config: IngestConfig,
    train_config: TrainConfig,
    protocols: tuple[str, ...] = LEARNING_PROTOCOLS,
    suffix: str = "",
) -> dict:
    """Train the same model three ways: split by lesion (the job's default), split by image, and split
    by image after oversampling the rare classes (the copies cross the split).

    All runs use the same images, seed and training config; only the split (and, for the third, the
    copies) differ. The gaps between their test figures are what the two mistakes add. `protocols`
    runs some of them only; `suffix` names their model directories apart.
    """
    runs = {}
    for protocol in protocols:
        source = data_dir
        if protocol == "oversampled_before_split":
            source = oversampled_copy(data_dir, work_dir / "learning-oversampled-data", OVERSAMPLE_TO)
        split_by = "lesion" if protocol == "split_by_lesion" else "image"
        table = work_dir / f"learning-table-{protocol}"
        image_dirs = [str(source / folder) for folder in schema.IMAGE_FOLDERS]
        config = dataclasses.replace(ingest_config, split_by=split_by)
        ingest(spark, image_dirs, str(source / schema.METADATA_FILE), str(table), config)
        model_dir = work_dir / f"learning-model-{protocol}{suffix}"
        manifest, metrics, history = _finished_training(model_dir, train_config)
        if manifest is None:  # not trained yet with this config: train (a finished run is reused)
            shutil.rmtree(model_dir, ignore_errors=True)
            result = train(spark, str(table), str(model_dir), train_config, "")
            manifest, metrics, history = result.manifest, result.metrics, result.history
        runs[protocol] = {
            "model_dir": str(model_dir),
            "epochs": manifest["epochs_trained"],
            "train_images": manifest["rows"]["train"],
            "training_seconds": manifest["training_seconds"],
            "images_per_second": manifest["images_per_second"],
            "best_val_accuracy": round(float(history["val_accuracy"].max()), 4),
            "test": {
                key: _round(metrics[key])
                for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
            },
            "siblings": sibling_breakdown(table, model_dir, train_config.task),
        }
    lesion = runs["split_by_lesion"]["test"]
    for protocol in [name for name in protocols if name != "split_by_lesion"]:
        runs[f"inflation_{protocol}_points"] = {
            key: round(100 * (runs[protocol]["test"][key] - lesion[key]), 2)
            for key in ("accuracy", "balanced_accuracy")
        }
    runs["config"] = dataclasses.asdict(train_config)
    return runs


def bench_learning_precision(
    spark: SparkSession,
    data_dir: Path,
    work_dir: Path,
    ingest_config: IngestConfig,
    train_config: TrainConfig,
) -> dict:
    """The learning benchmark's lesion split trained in float32 and in bfloat16: same table, seed
    and recipe. bfloat16 should not learn worse (balanced accuracy within 0.02)."""
    runs = {}
    for kind in (precision.FLOAT32, precision.BFLOAT16):
        config = dataclasses.replace(train_config, precision=kind)
        learned = bench_learning(
            spark, data_dir, work_dir, ingest_config, config, ("split_by_lesion",), f"-{kind}"
        )
        runs[kind] = learned["split_by_lesion"]
    runs["balanced_accuracy_bfloat16_minus_float32"] = round(
        runs["bfloat16"]["test"]["balanced_accuracy"] - runs["float32"]["test"]["balanced_accuracy"], 4
    )
    runs["speed_up_bfloat16_over_float32"] = round(
        runs["bfloat16"]["images_per_second"] / runs["float32"]["images_per_second"], 3
    )
    runs["target"] = {"balanced_accuracy_difference_max": 0.02}
    runs["config"] = dataclasses.asdict(train_config)
    return runs


def sibling_breakdown(table: Path, model_dir: Path, task: str = "dx7") -> dict:
    """Where a protocol's test figure comes from: the model's balanced accuracy on its own training
    split (inference mode: no dropout, no flips) and on the test images whose lesion has a photograph
    in the training split (a sibling) apart from the others.

    A split can only leak through siblings, and only by what the model fits beyond what it
    generalises: the gain is at most the siblings' share of the test split times (training - unseen).
    A split by lesion has no siblings (their figures are None).
    """
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    spec = read_preprocessing(str(model_dir))
    label_map = get_task(task).label_map
    train_rows = pd.read_parquet(table / "split=train", columns=[schema.LESION_ID])
    test_rows = pd.read_parquet(table / "split=test", columns=[schema.IMAGE_ID, schema.LESION_ID])
    predictions = pd.read_csv(model_dir / TEST_PREDICTIONS_FILE, dtype={schema.IMAGE_ID: str})
    predictions = predictions.merge(test_rows, on=schema.IMAGE_ID, how="left", validate="one_to_one")
    sibling = predictions[schema.LESION_ID].isin(set(train_rows[schema.LESION_ID])).to_numpy()

    def balanced(rows: pd.DataFrame) -> float | None:
        return _round(balanced_accuracy_score(rows[schema.LABEL], rows["predicted"])) if len(rows) else None

    # The training split in the precision its test split was evaluated in, like for like.
    url = f"file://{table.resolve()}/split=train"
    split = read_split(url, spec["height"], spec["width"], label_map=label_map)
    model = precision.in_precision(load_model(str(model_dir)), manifest["precision"]["evaluated_in"])
    predicted = model.predict(split["image"], batch_size=EVAL_BATCH_SIZE, verbose=0).argmax(axis=1)
    return {
        "test_images": len(predictions),
        "with_training_sibling": int(sibling.sum()),
        "balanced_accuracy_train_split": _round(balanced_accuracy_score(split["label"], predicted)),
        "balanced_accuracy_with_sibling": balanced(predictions[sibling]),
        "balanced_accuracy_without_sibling": balanced(predictions[~sibling]),
    }


def oversampled_copy(data_dir: Path, target: Path, per_class: int) -> Path:
    """A copy of the dataset (hard links) in which every class under `per_class` images has its images
    repeated, as new image ids (`<id>_copyN`) of the same lesion, up to about `per_class`."""
    metadata = pd.read_csv(data_dir / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    shutil.rmtree(target, ignore_errors=True)
    for folder in schema.IMAGE_FOLDERS:
        (target / folder).mkdir(parents=True)
    where = {path.stem: path for path in data_dir.glob("HAM10000_images_part_*/*.jpg")}
    rows = []
    for _, row in metadata.iterrows():
        path = where[row[schema.IMAGE_ID]]
        os.link(path, target / path.parent.name / path.name)
        rows.append(row)
    counts = metadata[schema.DX].value_counts()
    for label, count in counts.items():
        copies = max(0, round(per_class / count) - 1) if count < per_class else 0
        for _, row in metadata[metadata[schema.DX] == label].iterrows():
            path = where[row[schema.IMAGE_ID]]
            for number in range(1, copies + 1):
                name = f"{row[schema.IMAGE_ID]}_copy{number}"
                os.link(path, target / path.parent.name / f"{name}.jpg")
                copy = row.copy()
                copy[schema.IMAGE_ID] = name
                rows.append(copy)
    pd.DataFrame(rows).to_csv(target / schema.METADATA_FILE, index=False)
    return target


def _finished_training(model_dir: Path, config: TrainConfig):
    """(manifest, metrics, history) of a complete training run in `model_dir` with this config, else
    (None, None, None): a long benchmark interrupted after one run does not train that run again."""
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        return None, None, None
    manifest = json.loads(path.read_text())
    recorded = dict(manifest.get("config") or {})
    recorded.setdefault("precision", precision.FLOAT32)  # a run from before the key trained in float32
    if manifest.get(STATUS_KEY) != STATUS_COMPLETE or recorded != dataclasses.asdict(config):
        return None, None, None
    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    return manifest, metrics, pd.read_csv(model_dir / HISTORY_FILE)


def _round(value: float) -> float:
    return round(float(value), 4)
