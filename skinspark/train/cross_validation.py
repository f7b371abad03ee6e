"""k-fold cross-validation: one training run per fold of an ingested table, into MODEL_DIR/fold-k, then
each metric's mean and standard deviation over the folds in `cross_validation.json` and `.csv`."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pyspark.sql import SparkSession

from skinspark import storage
from skinspark.config import TrainConfig
from skinspark.errors import ConfigError
from skinspark.manifest import (
    CONFIG_FILE,
    MANIFEST_FILE,
    STATUS_COMPLETE,
    STATUS_KEY,
    JobResult,
    write_json_atomic,
    write_text_atomic,
)
from skinspark.model_dir import CROSS_VALIDATION_CSV, CROSS_VALIDATION_JSON, local_path
from skinspark.table import petastorm_url, read_ingest_manifest
from skinspark.train.artifacts import TrainResult
from skinspark.train.errors import TrainInputError, table_errors
from skinspark.train.folds import fold_count

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")  # the scalars averaged over folds
SUBSETS = ("validation", "test")  # each fold's own validation fold, and the shared test split
SHORT = {"validation": "val", "test": "test"}
HEADINGS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "bal. acc",
    "macro_f1": "macro F1",
    "macro_auc": "AUC",
}


@dataclasses.dataclass(frozen=True)
class CrossValidationResult(JobResult):
    """What `cross_validate` wrote: MODEL_DIR (`output`) and its `cross_validation.json` (`manifest`)."""


def fold_dir(model_dir: str | Path, fold: int) -> Path:
    """Where fold `fold`'s model goes: MODEL_DIR/fold-k, a model directory like any other."""
    return Path(local_path(str(model_dir))) / f"fold-{fold}"


@table_errors()
def cross_validate(
    spark: SparkSession,
    data_dir: str,
    model_dir: str,
    config: TrainConfig,
    config_yaml: str,
    resume: bool = False,
    on_fold: Callable[[TrainResult], None] | None = None,
) -> CrossValidationResult:
    """Train every fold of `data_dir` in turn (`train` with `fold` k into MODEL_DIR/fold-k), then write
    the folds' metrics with their mean and standard deviation.

    Args:
        spark, data_dir, model_dir, config, config_yaml: as for `train`; `data_dir` must have been
            ingested with `--folds K`.
        resume: skip the folds whose model directory is complete and `--resume` the one a stop
            interrupted (a fold not started yet starts from scratch).
        on_fold: called with each fold's TrainResult as soon as that fold is trained (the job prints
            its summary), not for the folds `resume` skips.

    Returns:
        CrossValidationResult whose manifest is `cross_validation.json`'s content.

    Raises:
        TrainInputError: a setting `config.check()` refuses (its message unchanged), a table without
            folds, unusable input, or (without `resume`) a fold directory that already holds a checkpoint.
        TrainError: a fold's training failed (the folds before it stay complete).
    """
    from skinspark.train import train  # the package imports this module

    started = time.perf_counter()
    try:
        config.check()
    except ConfigError as error:
        raise TrainInputError(str(error)) from None
    directory = Path(local_path(model_dir))
    source = petastorm_url(storage.qualify(spark, data_dir))
    folds = fold_count(read_ingest_manifest(spark, source), data_dir)
    manifests = []
    for fold in range(folds):
        target = fold_dir(directory, fold)
        done = _complete_manifest(target) if resume else None
        if done is None:
            fold_config = dataclasses.replace(config, fold=fold, cross_validate=False)
            run = train(spark, data_dir, str(target), fold_config, fold_yaml(config_yaml, fold), resume)
            if on_fold is not None:
                on_fold(run)
            done = run.manifest
        manifests.append(done)
    record = summarise(manifests)
    record.update(
        {
            "job": "cross_validate",
            STATUS_KEY: STATUS_COMPLETE,
            "data": source,
            "model_dir": str(directory),
            "model": config.model,
            "epochs": config.epochs,
            "config": dataclasses.asdict(config),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    write_text_atomic(directory / CONFIG_FILE, config_yaml)
    fold_table_frame(record).to_csv(directory / CROSS_VALIDATION_CSV, index=False, float_format="%.9g")
    write_json_atomic(directory / CROSS_VALIDATION_JSON, record)  # last: its presence means every fold is in
    return CrossValidationResult(str(directory), record)


def _complete_manifest(directory: Path) -> dict | None:
    """A fold directory's manifest when that fold's run is complete, else None."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return manifest if manifest.get(STATUS_KEY) == STATUS_COMPLETE else None


def fold_yaml(config_yaml: str, fold: int) -> str:
    """The resolved config of one fold's run: the cross-validation's, with `fold` set and
    `cross_validate` off, so `--config MODEL_DIR/fold-k/_config.yaml` repeats that fold alone."""
    values = yaml.safe_load(config_yaml) if config_yaml else None
    if not isinstance(values, dict):
        return config_yaml
    values.update(fold=fold, cross_validate=False)
    return yaml.safe_dump(values, sort_keys=False)


def summarise(manifests: list[dict]) -> dict:
    """Each fold's validation and test figures (from its training manifest), then their mean and
    standard deviation per metric.

    The standard deviation is the population one (ddof 0, as NumPy's and scikit-learn's `cv_results_`);
    a metric undefined on some fold (a macro AUC of a split with one class) is averaged over the folds
    where it is defined, and is None where it is defined on none.

    Returns:
        {"folds": K, "metrics": [...], "per_fold": [{"fold", "model_dir", "validation", "test"}],
        "mean": {subset: {metric: value}}, "std": {subset: {metric: value}}}.
    """
    per_fold = [
        {
            "fold": manifest["fold"],
            "model_dir": manifest["model_dir"],
            **{subset: {key: manifest[subset][key] for key in ("images", *METRICS)} for subset in SUBSETS},
        }
        for manifest in sorted(manifests, key=lambda manifest: manifest["fold"])
    ]
    mean, std = {}, {}
    for subset in SUBSETS:
        mean[subset], std[subset] = {}, {}
        for metric in METRICS:
            values = [row[subset][metric] for row in per_fold if row[subset][metric] is not None]
            mean[subset][metric] = float(np.mean(values)) if values else None
            std[subset][metric] = float(np.std(values)) if values else None
    return {"folds": len(per_fold), "metrics": list(METRICS), "per_fold": per_fold, "mean": mean, "std": std}


def fold_table_frame(record: dict) -> pd.DataFrame:
    """`cross_validation.csv`: one row per fold (`fold`, `<subset>_images`, `<subset>_<metric>`), then a
    `mean` and a `std` row."""
    rows = [
        {
            "fold": str(row["fold"]),
            **{f"{subset}_{key}": row[subset][key] for subset in SUBSETS for key in ("images", *METRICS)},
        }
        for row in record["per_fold"]
    ]
    for name in ("mean", "std"):
        figures = record[name]
        cells = {f"{subset}_{key}": figures[subset][key] for subset in SUBSETS for key in METRICS}
        rows.append({"fold": name, **cells})
    return pd.DataFrame(rows)


def cross_validation_summary(result: CrossValidationResult) -> str:
    """The cross-validation as a table: one line per fold, then a mean ± std line."""
    record = result.manifest
    names = [f"{SHORT[subset]} {HEADINGS[metric]}" for subset in SUBSETS for metric in METRICS]
    lines = [
        f"cross-validation complete: {record['folds']} folds of {record['data']}, {record['model']}, "
        f"{record['epochs']} epoch(s) per fold, in {record['seconds']:.1f} s",
        f"  {'fold':<10} {'images val/test':>15}" + "".join(f" {name:>13}" for name in names),
    ]
    for row in record["per_fold"]:
        images = f"{row['validation']['images']}/{row['test']['images']}"
        cells = [_number(row[subset][metric]) for subset in SUBSETS for metric in METRICS]
        lines.append(f"  {row['fold']:<10} {images:>15}" + "".join(f" {cell:>13}" for cell in cells))
    cells = [
        f"{_number(record['mean'][subset][metric])} ± {_number(record['std'][subset][metric])}"
        for subset in SUBSETS
        for metric in METRICS
    ]
    lines.append(f"  {'mean ± std':<10} {'':>15}" + "".join(f" {cell:>13}" for cell in cells))
    lines.append(
        f"results: {result.output}/{CROSS_VALIDATION_JSON} and {CROSS_VALIDATION_CSV}; "
        f"models: {result.output}/fold-k"
    )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
