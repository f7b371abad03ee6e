"""Reporting finished runs to MLflow (the optional `tracking` extra).

A training run becomes one MLflow run: the resolved config as params, `history.csv` as per-epoch
metrics, the test split's figures as `test_*` metrics, the model directory's records and plots as
artifacts, and the model in MLflow's TensorFlow flavor (registered under a name when one is given). A
scoring run becomes one with its counts, its `_metrics.json` figures and its records. The jobs call these
after the library's work has succeeded, so what the job wrote stands whatever MLflow does.

MLflow is imported inside the functions only: importing skinspark, or this module, never needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from skinspark import schema, storage
from skinspark.config import Loaded
from skinspark.errors import JobError, typed_line
from skinspark.manifest import CONFIG_FILE, COUNTS_KEY, MANIFEST_FILE, SCORING_METRICS_FILE, STATUS_KEY
from skinspark.model_dir import (
    CONFUSION_MATRIX_FILE,
    CROSS_VALIDATION_CSV,
    CROSS_VALIDATION_JSON,
    HISTORY_FILE,
    INGEST_MANIFEST_FILE,
    LABELS_FILE,
    METRICS_FILE,
    PREPROCESSING_FILE,
    RELIABILITY_DIAGRAM_FILE,
    TEST_PREDICTIONS_FILE,
    TRAINING_CURVES_FILE,
)

INSTALL_HINT = "pip install 'skinspark[tracking]'"
MODEL_ARTIFACT = "model"  # the logged model's name inside its run
# The files of MODEL_DIR logged beside the model: its records, the test split's figures and the plots.
TRAINING_ARTIFACTS = (
    MANIFEST_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    HISTORY_FILE,
    TEST_PREDICTIONS_FILE,
    LABELS_FILE,
    PREPROCESSING_FILE,
    INGEST_MANIFEST_FILE,
    TRAINING_CURVES_FILE,
    CONFUSION_MATRIX_FILE,
    RELIABILITY_DIAGRAM_FILE,
)
# The headline figures of one `classification_metrics` result, logged under these names.
HEADLINE_METRICS = (
    "images",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "loss",
    "macro_auc",
    "macro_average_precision",
)


class TrackingError(JobError):
    """MLflow is not installed, or its tracking store could not be reached or refused the run."""


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """Where a run was logged: MLflow's run id, the experiment, the tracking URI, the run's artifact
    URI, and for training the logged model's URI and its registered name and version (or None)."""

    run_id: str
    experiment_id: str
    experiment: str
    tracking_uri: str
    artifact_uri: str
    model_uri: str | None = None
    registered: str | None = None

    def summary(self) -> str:
        """Two lines for the job's summary: the run and where it went, and its artifacts."""
        line = f"mlflow: run {self.run_id} in experiment {self.experiment!r} at {self.tracking_uri}"
        if self.registered:
            line += f"; model registered as {self.registered}"
        return f"{line}\n  artifacts: {self.artifact_uri}"


def import_mlflow():
    """The `mlflow` module.

    Raises:
        TrackingError: MLflow is not installed; the message names the extra that installs it.
    """
    try:
        import mlflow
    except ImportError as error:
        raise TrackingError(
            f"MLflow tracking needs the tracking extra, which is not installed ({error}): {INSTALL_HINT}"
        ) from None
    return mlflow


def open_experiment(tracking_uri: str, experiment: str) -> str:
    """Check that MLflow is installed and its store answers, before a job spends its time: the id of
    `experiment` in the store at `tracking_uri`, created when missing.

    Raises:
        TrackingError: MLflow is missing, the store cannot be reached or refuses, or the experiment is
            deleted.
    """
    mlflow = import_mlflow()
    with _reporting(f"the MLflow tracking store at {tracking_uri} cannot be used"):
        return _experiment_id(mlflow.MlflowClient(tracking_uri), experiment)


def log_training(
    result, loaded: Loaded, tracking_uri: str, experiment: str, model_name: str = ""
) -> TrackedRun:
    """Log a finished training run to MLflow as one run.

    Args:
        result: the `skinspark.train.TrainResult` (its model directory, manifest, metrics, history, model).
        loaded: the resolved config (`Loaded`): every field a param, Spark settings as `spark.*` params.
        tracking_uri: the MLflow tracking URI (sqlite:///..., http://..., file:...).
        experiment: the experiment's name, created when missing.
        model_name: register the logged model under this name; "" registers nothing.

    Returns:
        TrackedRun: the run, and the model's URI and registered version.

    Raises:
        TrackingError: MLflow is missing, or the store failed; the run is then marked FAILED where the
            store still takes that.
    """
    mlflow = import_mlflow()
    manifest = result.manifest
    tags = {
        "job": "train",
        "model": manifest["model"],
        "backend": manifest["backend"],
        "precision": ",".join(manifest["precision"]["trained_in"]) or manifest["precision"]["requested"],
        "data": manifest["data"],
        "model_dir": manifest["model_dir"],
        "ranks": str(manifest["num_proc"]),
        "parameters": str(manifest["parameters"]),
    }
    run_name = f"train {manifest['model']} {Path(result.model_dir).name}"
    with _logged_run(mlflow, loaded, tracking_uri, experiment, run_name, tags) as run:
        for epoch, values in epoch_metrics(result.history):
            mlflow.log_metrics(values, step=epoch)
        mlflow.log_metrics(metric_scalars(result.metrics, prefix="test_"))
        mlflow.log_metric("training_seconds", float(manifest["training_seconds"]))
        _log_artifacts(mlflow, result.model_dir, TRAINING_ARTIFACTS)
        model = _log_model(mlflow, result.model, result.model_dir, model_name)
    return _tracked(run, experiment, tracking_uri, model, model_name)


def log_cross_validation(
    result, folds: list, loaded: Loaded, tracking_uri: str, experiment: str
) -> TrackedRun:
    """Log a finished cross-validation to MLflow: each fold trained by this run as a run of its own
    (`log_training`, its model logged but not registered: K models of one name are no release), then
    one run for the whole with each metric's mean and standard deviation over the folds
    (`mean_validation_balanced_accuracy`, `std_test_macro_auc`, ...), the folds' run ids as tags and
    `cross_validation.json`/`.csv` as artifacts.

    Args:
        result: the `skinspark.train.cross_validation.CrossValidationResult`.
        folds: the TrainResult of each fold trained by this run (a resumed run skips complete folds,
            which their own run logged).
        loaded, tracking_uri, experiment: as for `log_training`.

    Returns:
        TrackedRun of the whole.

    Raises:
        TrackingError: MLflow is missing, or the store failed.
    """
    mlflow = import_mlflow()
    fold_runs = {
        str(fold.manifest["fold"]): log_training(fold, loaded, tracking_uri, experiment).run_id
        for fold in folds
    }
    record = result.manifest
    metrics = {
        f"{kind}_{subset}_{metric}": float(value)
        for kind in ("mean", "std")
        for subset, figures in record[kind].items()
        for metric, value in figures.items()
        if value is not None
    }
    tags = {
        "job": "cross_validate",
        "model": record["model"],
        "data": record["data"],
        "model_dir": record["model_dir"],
        "folds": str(record["folds"]),
        **{f"fold_{fold}_run_id": run_id for fold, run_id in fold_runs.items()},
    }
    run_name = f"cross-validate {record['model']} {Path(result.output).name}"
    with _logged_run(mlflow, loaded, tracking_uri, experiment, run_name, tags) as run:
        mlflow.log_metrics(metrics)
        _log_artifacts(mlflow, result.output, (CROSS_VALIDATION_JSON, CROSS_VALIDATION_CSV))
    return _tracked(run, experiment, tracking_uri)


def log_scoring(spark, result, loaded: Loaded, tracking_uri: str, experiment: str) -> TrackedRun:
    """Log a finished scoring run to MLflow as one run: its counts, its metrics (`_metrics.json`, for a
    labelled table or `--truth`) and its records. A run whose verdict failed (too many error rows) is
    logged all the same, with MLflow status FAILED.

    Args:
        spark: the session, to read the output's records from any Hadoop URI.
        result: the `skinspark.score.ScoreResult` (the output directory and its manifest).
        loaded: the resolved config, logged as params as for training.
        tracking_uri: the MLflow tracking URI.
        experiment: the experiment's name, created when missing.

    Returns:
        TrackedRun.

    Raises:
        TrackingError: MLflow is missing, or the store failed.
    """
    mlflow = import_mlflow()
    manifest = result.manifest
    records = {
        name: _read_or_none(spark, f"{result.output}/{name}")
        for name in (MANIFEST_FILE, CONFIG_FILE, SCORING_METRICS_FILE)
    }
    metrics = scoring_counts(manifest)
    for name, figures in json.loads(records[SCORING_METRICS_FILE] or "{}").items():
        metrics.update(metric_scalars(figures, prefix=f"{name}_"))
    tags = {
        "job": "score",
        "status": manifest[STATUS_KEY],
        "model_id": manifest["model"]["model_id"],
        "model_dir": manifest["model"]["dir"],
        "input_kind": manifest["input_kind"],
        "output": manifest["output"],
        "mode": manifest["run"]["mode"],
    }
    run_name = f"score {Path(manifest['output']).name}"
    with _logged_run(mlflow, loaded, tracking_uri, experiment, run_name, tags) as run:
        mlflow.log_metrics(metrics)
        for name, text in records.items():
            if text is not None:
                mlflow.log_text(text, name)
        if not result.ok:
            mlflow.end_run(status="FAILED")
    return _tracked(run, experiment, tracking_uri)


def config_params(loaded: Loaded) -> dict[str, str]:
    """The resolved config as MLflow params: each field by name (a tuple in the `--conf` form `a,b,c`),
    each Spark setting by its `spark.` key."""
    params = {
        name: ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
        for name, value in dataclasses.asdict(loaded.job).items()
    }
    for key, value in loaded.spark.items():
        params[key if key.startswith("spark.") else f"spark.{key}"] = str(value)
    return params


def epoch_metrics(history: pd.DataFrame) -> list[tuple[int, dict[str, float]]]:
    """(epoch, {column: value}) per row of a training history, for every numeric column but `epoch`."""
    columns = [
        column
        for column in history.columns
        if column != "epoch" and pd.api.types.is_numeric_dtype(history[column])
    ]
    return [
        (int(row["epoch"]), {column: float(row[column]) for column in columns})
        for _, row in history.iterrows()
    ]


def metric_scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of one `skinspark.metrics.classification_metrics` result under flat names: the
    headline figures, `auc_<label>`, `ap_<label>` (average precision), `precision_/recall_/f1_/
    support_<label>` for each of its labels (the seven diagnoses, or benign and malignant), the operating
    point's `mel_threshold`, `mel_sensitivity`, `mel_specificity` (at the validation split's threshold)
    and `mel_sensitivity_argmax`, `mel_specificity_argmax` (`malignant_...` for a benign/malignant model,
    with `malignant_f1`, `malignant_roc_auc`, `malignant_average_precision`), `ece`, and the baselines;
    each name prefixed with `prefix`. Undefined figures (None: an AUC of a class absent from the split)
    are left out."""
    values: dict[str, Any] = {key: metrics.get(key) for key in HEADLINE_METRICS}
    for label in metrics.get("labels") or schema.LABELS:
        values[f"auc_{label}"] = (metrics.get("roc_auc") or {}).get(label)
        values[f"ap_{label}"] = (metrics.get("average_precision") or {}).get(label)
        for key, value in ((metrics.get("per_class") or {}).get(label) or {}).items():
            values[f"{key}_{label}"] = value
    for short, section in (("mel", "melanoma"), ("malignant", "malignant")):
        point = metrics.get(section) or {}
        for key, value in (point.get("at_threshold") or {}).items():
            values[f"{short}_{key}"] = value
        for key, value in (point.get("at_argmax") or {}).items():
            values[f"{short}_{key}_argmax"] = value
        for key in ("f1", "roc_auc", "average_precision"):
            values[f"{short}_{key}"] = point.get(key)
    values["ece"] = (metrics.get("calibration") or {}).get("ece")
    values.update(metrics.get("baselines") or {})
    return {f"{prefix}{name}": float(value) for name, value in values.items() if value is not None}


def scoring_counts(manifest: Mapping[str, Any]) -> dict[str, float]:
    """A scoring manifest's numbers as metrics: the output's counts (`rows`, `scored`, `errors`,
    `errors_<reason>`, `predicted_<label>`, ...), this run's (`files_seen`, `files_scored`, `seconds`,
    ...), `bad_fraction`, and the ground truth's match counts as `truth_<count>`."""
    counts = manifest.get(COUNTS_KEY, {})
    values = {key: value for key, value in counts.items() if isinstance(value, int | float)}
    for reason, number in counts.get("errors_by_reason", {}).items():
        values[f"errors_{reason}"] = number
    for label, number in counts.get("predicted", {}).items():
        values[f"predicted_{label}"] = number
    run = manifest.get("run", {})
    values.update({key: value for key, value in run.items() if isinstance(value, int | float)})
    if "bad_fraction" in manifest:
        values["bad_fraction"] = manifest["bad_fraction"]
    truth = (manifest.get("truth") or {}).get("counts", {})
    values.update({f"truth_{key}": value for key, value in truth.items() if isinstance(value, int | float)})
    return {name: float(value) for name, value in values.items() if not isinstance(value, bool)}


def tensorflow_requirements() -> list[str]:
    """The pip requirements of the logged model: the TensorFlow distribution installed here (and tf-keras
    where it is), pinned, so that MLflow need not infer them by loading the model in a subprocess."""
    requirements = []
    for names in (("tensorflow-cpu", "tensorflow"), ("tf-keras",)):
        for name in names:
            try:
                requirements.append(f"{name}=={metadata.version(name)}")
                break
            except metadata.PackageNotFoundError:
                continue
    return requirements


def _log_model(mlflow, model, model_dir: str, model_name: str):
    """Log `model` in MLflow's TensorFlow flavor, with a signature of MODEL_DIR's input (uint8 pixels)
    and output (one probability per label); registered under `model_name` when it is not ""."""
    import mlflow.tensorflow
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = json.loads((Path(model_dir) / PREPROCESSING_FILE).read_text())
    labels = json.loads((Path(model_dir) / LABELS_FILE).read_text())["labels"]  # the task's units
    shape = (-1, int(spec["height"]), int(spec["width"]), int(spec["channels"]))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(spec["input_dtype"]), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(labels)))]),
    )
    return mlflow.tensorflow.log_model(
        model,
        name=MODEL_ARTIFACT,
        signature=signature,
        pip_requirements=tensorflow_requirements(),
        registered_model_name=model_name or None,
    )


@contextlib.contextmanager
def _logged_run(
    mlflow, loaded: Loaded, tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str]
) -> Iterator[Any]:
    """One MLflow run of a job, for the block to log its figures and files into: MLflow's API pointed at
    `tracking_uri` for the block, `experiment` created when missing, the run started under `run_name`
    with `tags` and the resolved config logged as its params. The run ends with the block (FAILED where
    the block raises), and any failure of MLflow comes out as one TrackingError.

    Yields:
        the active run (`mlflow.ActiveRun`), for `_tracked` once the block is done.
    """
    with _reporting(f"logging to MLflow at {tracking_uri} failed"), _tracking_to(mlflow, tracking_uri):
        experiment_id = _experiment_id(mlflow.MlflowClient(tracking_uri), experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            mlflow.log_params(config_params(loaded))
            yield run


def _log_artifacts(mlflow, directory: str, names) -> None:
    """Log each file of `names` that `directory` holds as an artifact of the active run."""
    for name in names:
        if (Path(directory) / name).is_file():
            mlflow.log_artifact(str(Path(directory) / name))


def _tracked(run, experiment: str, tracking_uri: str, model=None, model_name: str = "") -> TrackedRun:
    registered = None
    if model is not None and model.registered_model_version is not None:
        registered = f"{model_name!r} version {model.registered_model_version}"
    return TrackedRun(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        experiment=experiment,
        tracking_uri=tracking_uri,
        artifact_uri=run.info.artifact_uri,
        model_uri=model.model_uri if model is not None else None,
        registered=registered,
    )


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"the MLflow experiment {name!r} is deleted: restore it, or choose another experiment"
        )
    return found.experiment_id


def _read_or_none(spark, path: str) -> str | None:
    try:
        return storage.read_text(spark, path)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _reporting(what: str) -> Iterator[None]:
    """Turn any failure of MLflow into a one-line TrackingError: `what` failed (naming the store), and
    the error's type and first line."""
    try:
        yield
    except TrackingError:
        raise
    # MLflow's stores fail with errors of their own layers (MlflowException, requests' connection
    # errors, SQLAlchemy's, OSError for a file store): for the job every one means "not logged".
    except Exception as error:
        raise TrackingError(f"{what}: {typed_line(error)}") from error


@contextlib.contextmanager
def _tracking_to(mlflow, tracking_uri: str) -> Iterator[None]:
    """Point MLflow's module-level API (which `log_model` and `start_run` use) at `tracking_uri` for one
    block, then put back what was there: a URI set in this process, or none (so that MLflow goes on
    resolving it from the MLFLOW_TRACKING_URI variable, which `set_tracking_uri` also overwrites)."""
    variable = os.environ.get("MLFLOW_TRACKING_URI")
    # With the variable unset, a set URI can only be one set in this process; with it set, the variable
    # holds the URI that was set last (set_tracking_uri writes it), so restoring the variable suffices.
    set_here = variable is None and mlflow.tracking.is_tracking_uri_set()
    previous = mlflow.get_tracking_uri() if set_here else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable
