"""Distributed training on Spark, with one of two data-parallel backends:

- horovod: `horovod.spark.run` starts N ranks (Spark tasks), each reads its Petastorm shard and
  averages gradients with Horovod over Gloo;
- tf_distribute: N workers as one Spark barrier stage under MultiWorkerMirroredStrategy (ring
  collectives), each reads its row groups with pyarrow.dataset; no Horovod, no Petastorm, so it also
  runs on the modern stack (Spark 4, TensorFlow >= 2.18 with tf-keras).

The driver (`train`) reads the ingest manifest, works out class weights, the rank count and the
steps per epoch, and hands plain values (`rank.RankPlan`) to the ranks. Rank 0 writes a checkpoint
after each epoch and returns its final weights; the driver then builds the model directory: model,
labels, preprocessing spec, test-split metrics, history and plots. Both backends run the same model,
recipe, epoch log, checkpoints and watchdog, and write the same model directory.

    recipe.py       the backend resolved, oversampling, class weights
    rank.py         what every rank runs, whatever the backend: the plan, phases, compiled model,
                    callbacks, epoch log, watchdog
    pipeline.py     a rank's training rows as tf.data pixel batches (decode, oversample, shuffle, flip)
    horovod_backend.py     the Horovod backend: the launch on Spark, the rank, its Petastorm shard
    distribute_launch.py   the tf_distribute launch: the barrier stage, TF_CONFIG, the driver's watch
    distribute_backend.py  the tf_distribute worker (a process of its own per barrier task), its
                    pyarrow shard
    checkpoints.py  epoch checkpoints and --resume
    errors.py       training's errors, each rank's error report, the driver's diagnosis
    artifacts.py    the files of a finished model directory and the summary
    folds.py        one cross-validation fold's table (`fold`), written beside the model
    cross_validation.py  every fold in turn (`cross_validate`), their metrics' mean and std

Model directory layout and write order:

    checkpoints/epoch-NNNN/     written by rank 0 after each epoch, directly in place (so `--resume`
                                finds them after a kill); each is written under a temporary name and
                                renamed, so a directory named epoch-NNNN is always complete
    model.keras, labels.json, preprocessing.json, _config.yaml, ingest_manifest.json,
    metrics.json, history.csv, test_predictions.csv, training_curves.png, confusion_matrix.png
                                written at the end into a staging folder and moved in file by file
    _manifest.json              moved in last: its presence means the directory is complete
    _errors/rank-N.json         only after a failure: each failed rank's error and traceback

A rank that fails reports its error there and exits at once; a watchdog thread in every rank ends it
when another rank has reported, or when it has made no progress for `stall_timeout_s`, so a failure
ends the job in bounded time with the failing rank's error instead of leaving the others waiting in
a collective.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from skinspark import precision, schema, session, storage
from skinspark.config import CLASS_WEIGHT_MODES, TrainConfig
from skinspark.errors import ConfigError
from skinspark.manifest import STATUS_COMPLETE, STATUS_KEY
from skinspark.metrics import baselines, classification_metrics, operating_threshold
from skinspark.model import WeightsError, build_model, min_input_size, resolve_weights
from skinspark.model_dir import local_path
from skinspark.table import EVAL_BATCH_SIZE, petastorm_url, read_ingest_manifest, read_split, split_url
from skinspark.tasks import get_task
from skinspark.train.artifacts import TrainResult, prediction_frame, train_summary, write_outputs
from skinspark.train.checkpoints import CHECKPOINTS, latest_checkpoint, restore_checkpoint, write_checkpoint
from skinspark.train.errors import ERRORS, TrainError, TrainInputError, describe_failure, table_errors
from skinspark.train.folds import fold_fields, fold_table, remove_fold_table
from skinspark.train.horovod_backend import rank_environment, run_ranks
from skinspark.train.rank import HISTORY_COLUMNS, RankPlan
from skinspark.train.recipe import class_weights, oversample_repeats, resolve_backend
from skinspark.versions import package_versions

RANK_KEYS = ("rank", "batches", "sharding", "precision")
TEST_SUMMARY_KEYS = ("images", "accuracy", "balanced_accuracy", "macro_f1", "loss", "macro_auc", "baselines")

__all__ = [
    "CLASS_WEIGHT_MODES",
    "TrainError",
    "TrainInputError",
    "TrainResult",
    "class_weights",
    "describe_failure",
    "latest_checkpoint",
    "petastorm_url",
    "rank_environment",
    "read_split",
    "restore_checkpoint",
    "train_summary",
    "train",
    "write_checkpoint",
]


@table_errors()
def train(
    spark: SparkSession,
    data_dir: str,
    model_dir: str,
    config: TrainConfig,
    config_yaml: str,
    resume: bool = False,
) -> TrainResult:
    """Train on `data_dir/split=train`, validate on `split=val`, evaluate on `split=test`.

    With `config.fold` k >= 0 (a table ingested with `--folds K`), train on the train and val rows of
    the other folds and validate on fold k instead: their table is written to `model_dir/_fold_data`
    first (`folds.fold_table`; reused by `--resume`, removed once the run is complete), the manifest
    records `fold` and `folds`, and metrics.json adds the validation fold's metrics as `validation`.

    Args:
        spark: the active session; Horovod's ranks run as its tasks.
        data_dir: the ingested table (any Hadoop/Petastorm URI) with its `_manifest.json`.
        model_dir: the output directory (a local or shared, mounted path).
        config: the resolved training config.
        config_yaml: the same config as YAML, written beside the model.
        resume: continue from the last complete checkpoint in `model_dir/checkpoints` (from the start
            when there is none).

    Returns:
        TrainResult with the manifest, test metrics, per-epoch history and the trained model.

    Raises:
        TrainInputError: a setting `config.check()` refuses (its message unchanged), unusable input
            (a fold of a table without folds, or a fold it does not have), or a checkpoint in
            `model_dir` without `resume`.
        TrainError: a rank failed or stalled, or the ranks did not start within the start timeout.
    """
    started = time.perf_counter()
    try:
        config.check()
    except ConfigError as error:
        raise TrainInputError(str(error)) from None
    directory = Path(local_path(model_dir))
    if config.fold >= 0:  # train on the other folds, validate on this one: the fold's own table
        data_dir = fold_table(spark, data_dir, directory, config.fold)
    data_url = petastorm_url(storage.qualify(spark, data_dir))
    ingest_manifest = read_ingest_manifest(spark, data_url)
    run = _plan_run(spark, config, ingest_manifest, data_dir)
    latest = _previous_run(directory, model_dir, resume)
    initial_epoch, history_rows = (latest[0], latest[2]["history"]) if latest is not None else (0, [])
    with precision.policy(precision.FLOAT32):  # the saved model is float32; each user picks its own
        model = build_model(config.model, run["input_shape"], run["task"].num_classes, config.dropout)
    ranks: list[dict] = []
    train_seconds = 0.0
    if initial_epoch < config.epochs:
        plan = RankPlan.build(
            config,
            data_url,
            directory,
            input_shape=run["input_shape"],
            initial_epoch=initial_epoch,
            previous_history=history_rows,
            resume_dir=str(latest[1]) if latest is not None else None,
            steps_per_epoch=run["steps_per_epoch"],
            class_weight=run["class_weight"],
            repeats=run["repeats"],
            task_cpus=run["task_cpus"],
            weights=run["weights"],
        )
        train_started = time.perf_counter()
        ranks = _run(spark, run["backend"], plan, run["num_proc"], config, directory / ERRORS)
        train_seconds = time.perf_counter() - train_started
        model.set_weights(ranks[0]["weights"])
        history_rows = ranks[0]["history"]
    else:
        # Nothing left to train (a resumed run that had already finished): the last checkpoint is the model.
        restore_checkpoint(latest[1], model)
    history = pd.DataFrame(history_rows, columns=list(HISTORY_COLUMNS))
    run.update(ranks=ranks, training_seconds=train_seconds, initial_epoch=initial_epoch)
    result = _finish(model, config, data_url, directory, ingest_manifest, history, run, config_yaml, started)
    if config.fold >= 0:
        remove_fold_table(spark, directory)
    return result


def _run(spark: SparkSession, backend: str, plan: RankPlan, num_proc: int, config, error_dir: Path):
    if backend == "tf_distribute":
        from skinspark.train.distribute_launch import run_workers

        return run_workers(spark, plan, num_proc, config.start_timeout_s, error_dir)
    return run_ranks(plan, num_proc, config.start_timeout_s, error_dir, config.horovod_cycle_time_ms)


def _plan_run(spark: SparkSession, config: TrainConfig, ingest_manifest: dict, data_dir: str) -> dict:
    """The run's sizes from the table and the session: rows per split, class weights, ranks, steps."""
    splits = ingest_manifest["counts"]["splits"]
    rows = {split: int(splits[split]["images"]) for split in schema.SPLITS}
    empty = [split for split, count in rows.items() if count == 0]
    if empty:
        raise TrainInputError(f"the ingested table {data_dir} has no images in split(s) {', '.join(empty)}")
    task_cpus = session.task_cpus(spark)
    num_proc = config.num_proc or max(1, session.default_parallelism(spark) // task_cpus)
    try:
        backend = resolve_backend(config.backend)
    except ValueError as error:
        raise TrainInputError(str(error)) from error
    input_shape = tuple(int(value) for value in ingest_manifest["image_shape"])
    smallest = min_input_size(config.model)
    if min(input_shape[:2]) < smallest:
        raise TrainInputError(
            f"{config.model} needs images of at least {smallest}x{smallest}, but {data_dir} holds "
            f"{input_shape[0]}x{input_shape[1]}: ingest again with --height and --width of {smallest} or more"
        )
    try:
        weights = resolve_weights(config.model, config.weights)
    except WeightsError as error:
        raise TrainInputError(str(error)) from error
    task = get_task(config.task)
    by_class = task.class_counts(splits["train"]["by_class"])  # per output unit of the task
    weighting = (
        class_weights(by_class, config.class_weight, task.labels)
        if config.balance == "class_weight"
        else None
    )
    repeats = (
        oversample_repeats(by_class, config.oversample_to, task.labels)
        if config.balance == "oversample"
        else None
    )
    epoch_images = rows["train"]
    if repeats is not None:  # an epoch is the oversampled split: every image times its class's repeats
        epoch_images = sum(by_class[label] * repeats[index] for index, label in enumerate(task.labels))
    return {
        "task": task,
        "backend": backend,
        "input_shape": input_shape,
        "weights": weights,
        "rows": rows,
        "class_weight": weighting,
        "repeats": repeats,
        "task_cpus": task_cpus,
        "num_proc": num_proc,
        # Every rank runs this many steps per epoch, whatever the size of its shard (else allreduce hangs).
        "steps_per_epoch": math.ceil(epoch_images / (config.batch_size * num_proc)),
    }


def _previous_run(directory: Path, model_dir: str, resume: bool):
    """The newest checkpoint to resume from (or None), after checking the directory may be used."""
    latest = latest_checkpoint(directory / CHECKPOINTS)
    if latest is not None and not resume:
        raise TrainInputError(
            f"{model_dir} already holds a checkpoint of epoch {latest[0]}: pass --resume "
            "to continue it, or choose another --output"
        )
    (directory / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(directory / ERRORS, ignore_errors=True)
    return latest


def _finish(
    model, config, data_url, directory, ingest_manifest, history, run, config_yaml, started
) -> TrainResult:
    """Evaluate on the test split, then write the model directory with its manifest."""
    height, width = run["input_shape"][0], run["input_shape"][1]
    # The driver predicts in the precision its own CPU resolves to; the saved model stays float32.
    evaluated_in = precision.resolve(config.precision)
    evaluator = precision.in_precision(model, evaluated_in)
    # The melanoma operating point is fixed on the validation split, then reported on the test split.
    task = run["task"]
    validation = read_split(
        split_url(data_url, schema.VAL), height, width, config.workers_per_rank, task.label_map
    )
    validation_probabilities = evaluator.predict(validation["image"], batch_size=EVAL_BATCH_SIZE, verbose=0)
    threshold = operating_threshold(validation["label"], validation_probabilities, task.labels)
    test = read_split(
        split_url(data_url, schema.TEST), height, width, config.workers_per_rank, task.label_map
    )
    probabilities = evaluator.predict(test["image"], batch_size=EVAL_BATCH_SIZE, verbose=0)
    test_metrics = classification_metrics(test["label"], probabilities, task.labels, threshold)
    test_metrics["task"] = task.name
    test_metrics["baselines"] = baselines(test["label"])
    fold = fold_fields(ingest_manifest)
    if fold:  # a cross-validation fold: its validation fold's metrics too, which the folds' mean uses
        validation_metrics = classification_metrics(
            validation["label"], validation_probabilities, task.labels, threshold
        )
        validation_metrics["baselines"] = baselines(validation["label"])
        test_metrics["validation"] = validation_metrics
        fold["validation"] = {key: validation_metrics[key] for key in TEST_SUMMARY_KEYS}
    trained = history[history["epoch"] > run["initial_epoch"]]
    weights = run["class_weight"] or {}
    manifest = {
        "job": "train",
        STATUS_KEY: STATUS_COMPLETE,
        "data": data_url,
        "model_dir": str(directory),
        "model": config.model,
        "task": task.name,
        "labels": list(task.labels),
        "backend": run["backend"],
        "parameters": int(model.count_params()),
        "num_proc": run["num_proc"],
        "task_cpus": run["task_cpus"],
        "rows": run["rows"],
        "steps_per_epoch": run["steps_per_epoch"],
        "images_per_epoch": run["steps_per_epoch"] * config.batch_size * run["num_proc"],
        "epochs": config.epochs,
        "initial_epoch": run["initial_epoch"],
        "epochs_trained": len(trained),
        "ranks": [{key: rank[key] for key in RANK_KEYS} for rank in run["ranks"]],
        "precision": {
            "requested": config.precision,
            "trained_in": sorted({rank["precision"] for rank in run["ranks"]}),
            "evaluated_in": evaluated_in,
        },
        "class_weight": {task.labels[index]: weight for index, weight in weights.items()},
        "balance": config.balance,
        "oversample_repeats": (
            {task.labels[index]: count for index, count in run["repeats"].items()} if run["repeats"] else None
        ),
        "training_seconds": round(run["training_seconds"], 3),
        "images_per_second": round(float(trained["images_per_second"].mean()), 1) if len(trained) else None,
        "test": {key: test_metrics[key] for key in TEST_SUMMARY_KEYS},
        **fold,
        "config": dataclasses.asdict(config),
        "versions": package_versions(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    outputs = {
        "metrics": test_metrics,
        "history": history,
        "predictions": prediction_frame(test, probabilities, task),
    }
    write_outputs(directory, model, ingest_manifest, config_yaml, outputs, manifest, task)
    return TrainResult(str(directory), manifest, test_metrics, history, model)
