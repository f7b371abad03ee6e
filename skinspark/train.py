"""Distributed training on Spark: `horovod.spark.run` starts N ranks, each reads its Petastorm shard.

The driver (`train`) reads the ingest manifest, works out class weights, the rank count and the
steps per epoch, and hands plain values to `train_worker`, a top-level function that every rank runs
(workers import it by reference). Rank 0 writes a checkpoint after each epoch and returns its final
weights; the driver then builds the model directory: model, labels, preprocessing spec, test-split
metrics, history and plots.

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
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from pyspark.sql import SparkSession

from skinspark import metrics as metrics_module
from skinspark import schema, session, storage
from skinspark.config import TrainConfig
from skinspark.model import (
    MODELS,
    build_model,
    local_path,
    save_model_dir,
    write_json_atomic,
    write_text_atomic,
)
from skinspark.versions import package_versions

CHECKPOINTS = "checkpoints"
ERRORS = "_errors"
CHECKPOINT_PREFIX = "ckpt"
STATE_FILE = "state.json"
# How gradients travel between ranks: as they are, or as float16 (Horovod's Compression.fp16).
GRADIENT_COMPRESSIONS = ("none", "fp16")
HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
    "images_per_second",
)
CLASS_WEIGHT_MODES = ("balanced", "none")
EVAL_BATCH_SIZE = 256
TEST_SUMMARY_KEYS = ("images", "accuracy", "balanced_accuracy", "macro_f1", "loss")


class TrainError(RuntimeError):
    """Training failed: a rank's error (the message says which rank and why) or a start timeout."""


class TrainInputError(TrainError):
    """Training cannot start: unusable input table or an output directory that holds another run."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` produced: the model directory, its manifest and test metrics, and the model."""

    model_dir: str
    manifest: dict
    metrics: dict
    history: pd.DataFrame
    model: Any  # the trained tf.keras.Model, as saved in model_dir


# --------------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------------


def train(
    spark: SparkSession,
    data_dir: str,
    model_dir: str,
    config: TrainConfig,
    config_yaml: str,
    resume: bool = False,
) -> TrainResult:
    """Train on `data_dir/split=train`, validate on `split=val`, evaluate on `split=test`.

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
        ValueError: an invalid config value.
        TrainInputError: unusable input, or a checkpoint in `model_dir` without `resume`.
        TrainError: a rank failed or stalled, or the ranks did not start within the start timeout.
    """
    started = time.perf_counter()
    validate_config(config)
    directory = Path(local_path(model_dir)).absolute()
    data_url = petastorm_url(storage.qualify(spark, data_dir))
    ingest_manifest = read_ingest_manifest(spark, data_url)
    input_shape = tuple(int(value) for value in ingest_manifest["image_shape"])
    splits = ingest_manifest["counts"]["splits"]
    rows = {split: int(splits[split]["images"]) for split in schema.SPLITS}
    empty = [split for split, count in rows.items() if count == 0]
    if empty:
        raise TrainInputError(f"the ingested table {data_dir} has no images in split(s) {', '.join(empty)}")
    weights = class_weights(splits["train"]["by_class"], config.class_weight)
    task_cpus = session.task_cpus(spark)
    num_proc = config.num_proc or max(1, session.default_parallelism(spark) // task_cpus)
    # Every rank runs this many steps per epoch, whatever the size of its shard (else allreduce hangs).
    steps_per_epoch = math.ceil(rows["train"] / (config.batch_size * num_proc))

    latest = latest_checkpoint(directory / CHECKPOINTS)
    if latest is not None and not resume:
        raise TrainInputError(
            f"{model_dir} already holds a checkpoint of epoch {latest[0]}: pass --resume "
            "to continue it, or choose another --output"
        )
    initial_epoch, history_rows = (latest[0], latest[2]["history"]) if latest is not None else (0, [])
    (directory / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(directory / ERRORS, ignore_errors=True)

    model = build_model(config.model, input_shape, schema.NUM_CLASSES, config.dropout)
    ranks: list[dict] = []
    train_seconds = 0.0
    if initial_epoch < config.epochs:
        plan = RankPlan(
            train_url=f"{data_url}/split=train",
            val_url=f"{data_url}/split=val",
            checkpoint_dir=str(directory / CHECKPOINTS),
            error_dir=str(directory / ERRORS),
            model_name=config.model,
            input_shape=input_shape,
            dropout=config.dropout,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            previous_history=history_rows,
            resume_dir=str(latest[1]) if latest is not None else None,
            steps_per_epoch=steps_per_epoch,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_epochs=config.warmup_epochs,
            reduce_lr_patience=config.reduce_lr_patience,
            reduce_lr_factor=config.reduce_lr_factor,
            min_learning_rate=config.min_learning_rate,
            class_weight=weights,
            augment=config.augment,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            task_cpus=task_cpus,
            reader_workers=config.workers_per_rank,
            keep_checkpoints=config.keep_checkpoints,
            gradient_compression=config.gradient_compression,
            stall_timeout_s=config.stall_timeout_s,
        )
        train_started = time.perf_counter()
        ranks = run_ranks(
            plan, num_proc, config.start_timeout_s, directory / ERRORS, config.horovod_cycle_time_ms
        )
        train_seconds = time.perf_counter() - train_started
        model.set_weights(ranks[0]["weights"])
        history_rows = ranks[0]["history"]
    else:
        # Nothing left to train (a resumed run that had already finished): the last checkpoint is the model.
        restore_checkpoint(latest[1], model)

    height, width = input_shape[0], input_shape[1]
    test = read_split(f"{data_url}/split=test", height, width, workers=config.workers_per_rank)
    probabilities = model.predict(test["image"], batch_size=EVAL_BATCH_SIZE, verbose=0)
    test_metrics = metrics_module.classification_metrics(test["label"], probabilities)
    history = pd.DataFrame(history_rows, columns=list(HISTORY_COLUMNS))
    trained = history[history["epoch"] > initial_epoch]
    manifest = {
        "job": "train",
        "status": "complete",
        "data": data_url,
        "model_dir": str(directory),
        "model": config.model,
        "parameters": int(model.count_params()),
        "num_proc": num_proc,
        "task_cpus": task_cpus,
        "rows": rows,
        "steps_per_epoch": steps_per_epoch,
        "images_per_epoch": steps_per_epoch * config.batch_size * num_proc,
        "epochs": config.epochs,
        "initial_epoch": initial_epoch,
        "epochs_trained": len(trained),
        "ranks": [{key: rank[key] for key in ("rank", "batches", "sharding")} for rank in ranks],
        "class_weight": {schema.LABELS[index]: weight for index, weight in (weights or {}).items()},
        "training_seconds": round(train_seconds, 3),
        "images_per_second": round(float(trained["images_per_second"].mean()), 1) if len(trained) else None,
        "test": {key: test_metrics[key] for key in TEST_SUMMARY_KEYS},
        "config": dataclasses.asdict(config),
        "versions": package_versions(),
    }
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    predictions = _prediction_frame(test, probabilities)
    outputs = {"metrics": test_metrics, "history": history, "predictions": predictions}
    write_outputs(directory, model, ingest_manifest, config_yaml, outputs, manifest)
    return TrainResult(str(directory), manifest, test_metrics, history, model)


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first invalid training setting."""
    checks = [
        (config.model in MODELS, f"model must be one of {sorted(MODELS)}, got {config.model!r}"),
        (config.epochs >= 1, f"epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"batch_size must be at least 1, got {config.batch_size}"),
        (config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}"),
        (config.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {config.warmup_epochs}"),
        (
            config.class_weight in CLASS_WEIGHT_MODES,
            f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {config.class_weight!r}",
        ),
        (config.num_proc >= 0, f"num_proc must be >= 0 (0: all task slots), got {config.num_proc}"),
        (config.shuffle_buffer >= 1, f"shuffle_buffer must be at least 1, got {config.shuffle_buffer}"),
        (config.stall_timeout_s >= 1, f"stall_timeout_s must be at least 1, got {config.stall_timeout_s}"),
        (config.workers_per_rank >= 1, f"workers_per_rank must be at least 1, got {config.workers_per_rank}"),
        (config.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {config.keep_checkpoints}"),
        (
            config.horovod_cycle_time_ms > 0,
            f"horovod_cycle_time_ms must be positive, got {config.horovod_cycle_time_ms}",
        ),
        (
            config.gradient_compression in GRADIENT_COMPRESSIONS,
            f"gradient_compression must be one of {GRADIENT_COMPRESSIONS}, "
            f"got {config.gradient_compression!r}",
        ),
        (
            0 < config.reduce_lr_factor < 1,
            f"reduce_lr_factor must be in (0, 1), got {config.reduce_lr_factor}",
        ),
        (0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def petastorm_url(uri: str) -> str:
    """Petastorm wants `file:///abs/path`; Hadoop qualifies local paths as `file:/abs/path`."""
    uri = uri.rstrip("/")
    if uri.startswith("file:") and not uri.startswith("file://"):
        return "file://" + uri[len("file:") :]
    return uri


def read_ingest_manifest(spark: SparkSession, data_url: str) -> dict:
    """The ingest job's `_manifest.json`; raises TrainError when missing or not complete."""
    path = f"{data_url}/_manifest.json"
    if not storage.exists(spark, path):
        raise TrainInputError(f"no _manifest.json in {data_url}: is it a table written by the ingest job?")
    manifest = json.loads(storage.read_text(spark, path))
    if manifest.get("status") != "complete":
        status = manifest.get("status")
        raise TrainInputError(f"the ingested table {data_url} is not complete (status {status!r})")
    return manifest


def class_weights(counts: Mapping[str, int], mode: str = "balanced") -> dict[int, float] | None:
    """Per-class loss weights from the train split's class counts.

    "balanced" is scikit-learn's `compute_class_weight('balanced')`: n_samples / (n_classes * count),
    over the classes present; classes absent from the split get 1.0. "none" returns None.

    Args:
        counts: {label: images} for the train split (labels of schema.LABELS).
        mode: "balanced" or "none".

    Returns:
        {label index: weight} for every label, or None.

    Raises:
        ValueError: an unknown mode or label, a negative count, or no images at all.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")
    unknown = set(counts) - set(schema.LABELS)
    if unknown:
        raise ValueError(f"unknown labels in class counts: {sorted(unknown)}")
    if any(int(count) < 0 for count in counts.values()):
        raise ValueError(f"class counts must be >= 0, got {dict(counts)}")
    if mode == "none":
        return None
    present = {label: int(count) for label, count in counts.items() if int(count) > 0}
    if not present:
        raise ValueError("no images in the class counts")
    total = sum(present.values())
    return {
        index: total / (len(present) * present[label]) if label in present else 1.0
        for index, label in enumerate(schema.LABELS)
    }


_HOROVOD_PER_RANK = (
    "HOROVOD_RANK",
    "HOROVOD_SIZE",
    "HOROVOD_LOCAL_",
    "HOROVOD_CROSS_",
    "HOROVOD_GLOO_",
    "HOROVOD_HOSTNAME",
    "HOROVOD_CONTROLLER",
)


def rank_environment(cycle_time_ms: float, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables the driver hands to every rank.

    HOROVOD_CYCLE_TIME is `cycle_time_ms`; Horovod's other tuning knobs (HOROVOD_FUSION_THRESHOLD,
    ...) and an explicit HOROVOD_CYCLE_TIME in `environ` pass through, since horovod.spark.run passes
    only the variables it is given. A rank's identity and rendezvous variables are Horovod's to set.
    """
    env = {
        "TF_CPP_MIN_LOG_LEVEL": environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONUNBUFFERED": "1",  # ranks' output reaches the driver's log as it happens
        "HOROVOD_CYCLE_TIME": f"{cycle_time_ms:g}",
    }
    env.update(
        {
            key: value
            for key, value in environ.items()
            if key.startswith("HOROVOD_") and not key.startswith(_HOROVOD_PER_RANK)
        }
    )
    return env


def run_ranks(
    plan: RankPlan, num_proc: int, start_timeout_s: int, error_dir: Path, cycle_time_ms: float
) -> list[dict]:
    """Run `train_worker` on `num_proc` Horovod ranks (Spark tasks); results in rank order.

    `cycle_time_ms` becomes the ranks' HOROVOD_CYCLE_TIME unless the job's environment sets one
    (`rank_environment`).

    Raises:
        TrainError: a rank failed (with that rank's error) or the ranks did not all start in time.
    """
    import horovod.spark

    env = rank_environment(cycle_time_ms, os.environ)
    try:
        # Horovod: one Spark task per rank, Gloo for the collectives (no MPI needed).
        return horovod.spark.run(
            train_worker,
            kwargs={"plan": plan},
            num_proc=num_proc,
            start_timeout=start_timeout_s,
            use_gloo=True,
            env=env,
            # Horovod starts ranks with the driver's interpreter unless told otherwise; on a cluster with
            # a shipped environment (spark.pyspark.python=./environment/bin/python) that path may not
            # exist on the executors.
            executable=os.environ.get("PYSPARK_PYTHON") or sys.executable,
            verbose=1,
        )
    except Exception as error:  # Horovod raises plain Exceptions (RuntimeError, timeouts, Spark errors)
        raise TrainError(describe_failure(error, error_dir, num_proc, start_timeout_s)) from error


def describe_failure(error: BaseException, error_dir: Path, num_proc: int, start_timeout_s: int) -> str:
    """One line naming the rank that failed first and its error, from the ranks' error files."""
    reports = []
    for path in sorted(Path(error_dir).glob("rank-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    # Horovod names the first rank process that exited ("Process name: 1\nExit code: 137").
    exited = re.search(r"Process name: (\S+)\s+Exit code: (\S+)", str(error))
    if reports:
        # A failing rank takes the others down with it (their collectives break): the root cause is
        # the report written first.
        reports.sort(key=lambda report: report["time"])
        first = reports[0]
        reported = {str(report["rank"]) for report in reports}
        if exited and exited.group(1) not in reported and exited.group(2) != "1":
            # A rank killed outright (out of memory: exit code 137, or its executor lost) writes no report,
            # and Horovod saw it go first: it is the cause. (Ranks that stop on their own exit with 1.) The
            # others only report what its disappearance did to them ("Horovod has been shut down. ...").
            return (
                f"training failed: rank {exited.group(1)} exited first without reporting an error (exit code "
                f"{exited.group(2)}: killed, or its executor lost? see the executor's log); then "
                f"{len(reports)} other rank(s) failed, first rank {first['rank']}: "
                + first["error"].split(". ")[0]
            )
        others = f" ({len(reports) - 1} other rank(s) failed after it)" if len(reports) > 1 else ""
        # A rank that reported its error may still not have been the first to exit.
        killed = (
            f"; rank {exited.group(1)} exited first (exit code {exited.group(2)})"
            if exited and exited.group(1) != str(first["rank"])
            else ""
        )
        return f"training failed on rank {first['rank']}: {first['error']}{others}{killed}"
    if exited:
        return (
            f"training failed: rank {exited.group(1)} exited with code {exited.group(2)} without "
            "reporting an error (killed? see the executor's log)"
        )
    message = _first_line(error)
    if "Timed out" in message:
        return (
            f"the {num_proc} Horovod ranks did not all start within {start_timeout_s} s: the Spark "
            f"application needs {num_proc} free task slots (set --num-proc or start_timeout_s)"
        )
    return f"training failed: {message}"


def latest_checkpoint(checkpoint_dir: str | Path) -> tuple[int, Path, dict] | None:
    """(epoch, directory, state) of the newest complete checkpoint, or None."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return None
    found = []
    for path in directory.glob("epoch-*"):
        state_file = path / STATE_FILE
        if path.is_dir() and state_file.is_file():
            state = json.loads(state_file.read_text())
            found.append((int(state["epoch"]), path, state))
    return max(found, key=lambda item: item[0]) if found else None


def read_split(url: str, height: int, width: int, workers: int = 1) -> dict[str, np.ndarray]:
    """Read a whole (small) split with Petastorm: image (n, h, w, 3) uint8, label int32, image_id.

    Raises:
        ValueError: an image whose byte length is not height * width * 3.
    """
    from petastorm import make_batch_reader

    _quiet_petastorm()
    images, labels, ids = [], [], []
    with make_batch_reader(
        url,
        schema_fields=[schema.IMAGE_ID, schema.LABEL, schema.IMAGE],
        num_epochs=1,
        shuffle_row_groups=False,
        workers_count=workers,
    ) as reader:
        for batch in reader:
            images.append(_pixels(getattr(batch, schema.IMAGE), height, width))
            labels.append(np.asarray(getattr(batch, schema.LABEL), dtype=np.int32))
            ids.append(np.asarray(getattr(batch, schema.IMAGE_ID), dtype=object))
    if not images:
        return {
            "image": np.zeros((0, height, width, 3), np.uint8),
            "label": np.zeros(0, np.int32),
            "image_id": np.zeros(0, object),
        }
    # Sort by image_id: the reader's batch order depends on its threads.
    order = np.argsort(np.concatenate(ids), kind="stable")
    return {
        "image": np.concatenate(images)[order],
        "label": np.concatenate(labels)[order],
        "image_id": np.concatenate(ids)[order],
    }


def _pixels(raw: Sequence[bytes], height: int, width: int) -> np.ndarray:
    size = height * width * 3
    bad = [index for index, value in enumerate(raw) if len(value) != size]
    if bad:
        raise ValueError(f"{len(bad)} image(s) do not hold {height}x{width}x3 bytes")
    return np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), height, width, 3)


def _quiet_petastorm() -> None:
    # Petastorm 0.13 calls pyarrow APIs that pyarrow 14 marks deprecated, once per row group.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow\..*")
    # It also warns that "image" no longer matches "image_id" as a prefix: exact names are what we want.
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed", category=UserWarning)


def _prediction_frame(test: dict[str, np.ndarray], probabilities: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            schema.IMAGE_ID: test["image_id"],
            schema.LABEL: test["label"],
            "predicted": probabilities.argmax(axis=1),
        }
    )
    for index, column in enumerate(schema.PROB_COLUMNS):
        frame[column] = probabilities[:, index]
    return frame


def write_outputs(
    directory: Path, model, ingest_manifest: dict, config_yaml: str, outputs: dict, manifest: dict
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
        save_model_dir(model, str(staging), ingest_manifest, config_yaml)
        test_metrics = outputs["metrics"]
        write_json_atomic(staging / "metrics.json", test_metrics)
        outputs["history"].to_csv(staging / "history.csv", index=False, float_format="%.9g")
        outputs["predictions"].to_csv(staging / "test_predictions.csv", index=False, float_format="%.9g")
        metrics_module.plot_training_curves(outputs["history"], staging / "training_curves.png")
        metrics_module.plot_confusion_matrix(
            test_metrics["confusion_matrix"], test_metrics["labels"], staging / "confusion_matrix.png"
        )
        for path in sorted(staging.iterdir()):
            os.replace(path, directory / path.name)
    write_json_atomic(directory / "_manifest.json", manifest)


def summary(result: TrainResult) -> str:
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
    lines.append("test split: " + metrics_module.summary(result.metrics))
    lines.append(f"model: {result.model_dir}")
    return "\n".join(lines)


def _first_line(error: BaseException) -> str:
    """`Type: message` on one line. TensorFlow's op errors open with "Graph execution error:" and a
    stack of the node's definition; their message proper is the first line after that."""
    lines = [line.strip() for line in str(error).splitlines()]
    noise = ("Graph execution error", "Detected at node", "File ", "[[", "<stack traces unavailable>")
    meaningful = [line for line in lines if line and not line.startswith(noise)]
    meaningful = meaningful or [line for line in lines if line]
    return f"{type(error).__name__}: {meaningful[0]}" if meaningful else type(error).__name__


# --------------------------------------------------------------------------------------------------
# Rank side: everything below runs inside the Horovod processes.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RankPlan:
    """Everything a rank needs, as plain values: the driver builds it, every rank receives it pickled."""

    train_url: str
    val_url: str
    checkpoint_dir: str
    error_dir: str
    model_name: str
    input_shape: tuple[int, int, int]
    dropout: float
    epochs: int
    initial_epoch: int
    resume_dir: str | None
    previous_history: list[dict]
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    warmup_epochs: int
    reduce_lr_patience: int
    reduce_lr_factor: float
    min_learning_rate: float
    class_weight: dict[int, float] | None
    augment: bool
    shuffle_buffer: int
    seed: int
    task_cpus: int
    reader_workers: int
    keep_checkpoints: int
    gradient_compression: str
    stall_timeout_s: float


def train_worker(plan: RankPlan) -> dict:
    """Train on one Horovod rank, as `plan` says. Runs in every rank's process.

    Returns:
        {"rank", "size", "batches", "sharding"}; rank 0 adds "history" (all epochs, including those
        of a resumed run) and "weights" (the final model weights as NumPy arrays).

    Raises:
        Whatever stopped this rank, after writing `error_dir/rank-<r>.json` for the driver.
    """
    import horovod.tensorflow.keras as hvd

    launched = "HOROVOD_RANK" in os.environ  # inside a Horovod rank process, not called directly
    rank = int(os.environ.get("HOROVOD_RANK", "0"))
    watchdog = None
    try:
        # Horovod: initialise; from here rank() and size() are known.
        hvd.init()
        rank = hvd.rank()
        if launched:
            watchdog = Watchdog(plan.error_dir, rank, plan.stall_timeout_s)
        return _train_rank(hvd, watchdog, plan)
    except BaseException as error:
        _report_error(plan.error_dir, rank, error)
        if launched:
            # A failed rank can leave threads that never end (a Petastorm reader whose consumer stopped)
            # and peers waiting in a collective: exit now so that the whole job ends instead of hanging.
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        raise
    finally:
        if watchdog is not None:
            watchdog.stop()


class Watchdog:
    """Ends a rank process that can no longer finish, so that the job fails instead of hanging.

    A daemon thread checks every few seconds and exits the process when another rank has reported a
    failure (this rank would wait forever in its next collective), or when this rank has made no
    progress (`progress()`: a finished batch) for `stall_timeout_s`: a hung input pipeline, or a peer
    missing from a collective. Horovod's own stall shutdown does not fire with Gloo on Spark.
    """

    def __init__(self, error_dir: str, rank: int, stall_timeout_s: float, interval_s: float = 2.0):
        self.error_dir = Path(error_dir)
        self.rank = rank
        self.stall_timeout_s = stall_timeout_s
        self.interval_s = interval_s
        self.where = "starting"
        self._last = time.monotonic()
        self._stopped = threading.Event()
        threading.Thread(target=self._watch, name="skinspark-rank-watchdog", daemon=True).start()

    def progress(self, where: str) -> None:
        self.where = where
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        own = f"rank-{self.rank}.json"
        while not self._stopped.wait(self.interval_s):
            failed = sorted(path.stem for path in self.error_dir.glob("rank-*.json") if path.name != own)
            if failed:
                print(f"rank {self.rank}: stopping because {failed[0]} failed", file=sys.stderr, flush=True)
                os._exit(1)
            idle = time.monotonic() - self._last
            if idle > self.stall_timeout_s:
                error = TimeoutError(
                    f"no progress for {idle:.0f} s (stall_timeout_s={self.stall_timeout_s}) after "
                    f"{self.where}: a hung input pipeline (e.g. an empty shard) or a rank missing from a "
                    "collective"
                )
                _report_error(str(self.error_dir), self.rank, error)
                print(f"rank {self.rank}: {error}", file=sys.stderr, flush=True)
                os._exit(1)


def _train_rank(hvd, watchdog: Watchdog | None, plan: RankPlan) -> dict:
    import horovod.tensorflow as hvd_tf

    _quiet_petastorm()
    rank, size = hvd.rank(), hvd.size()
    # Horovod: a rank owns its Spark task's cores (spark.task.cpus), not the whole machine.
    tf.config.threading.set_intra_op_parallelism_threads(plan.task_cpus)
    tf.config.threading.set_inter_op_parallelism_threads(plan.task_cpus)
    tf.keras.utils.set_random_seed(plan.seed + rank)
    height, width, _ = plan.input_shape
    progress = watchdog.progress if watchdog is not None else (lambda where: None)

    validation = read_split(plan.val_url, height, width, workers=plan.reader_workers)
    progress("reading the validation split")
    model = build_model(plan.model_name, tuple(plan.input_shape), schema.NUM_CLASSES, plan.dropout)
    # Horovod: scale the learning rate by the number of ranks (the global batch grows with it).
    scaled_lr = plan.learning_rate * size
    # Horovod: average gradients across ranks.
    compression = hvd.Compression.fp16 if plan.gradient_compression == "fp16" else hvd.Compression.none
    optimizer = hvd.DistributedOptimizer(
        tf.keras.optimizers.Adam(learning_rate=scaled_lr), compression=compression
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    optimizer.build(model.trainable_variables)  # slot variables exist now: restore and broadcast reach them
    if plan.resume_dir is not None and rank == 0:
        # Horovod: only rank 0 reads the checkpoint; the broadcast below hands its state to the others.
        restore_checkpoint(plan.resume_dir, model, optimizer)
    # Horovod: every rank starts from rank 0's weights and optimizer state, before the first step (the
    # callback below broadcasts again after the first batch, as in Horovod's examples).
    hvd_tf.broadcast_variables(model.variables + list(optimizer.variables), root_rank=0)
    progress("building the model")

    log = _EpochLog(
        images_per_epoch=plan.steps_per_epoch * plan.batch_size * size,
        history=plan.previous_history,
        checkpoint_dir=plan.checkpoint_dir if rank == 0 else None,
        optimizer=optimizer,
        keep_checkpoints=plan.keep_checkpoints,
        progress=progress,
    )
    callbacks = [
        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Horovod: average metrics among ranks at the end of every epoch, before anything reads them.
        hvd.callbacks.MetricAverageCallback(),
    ]
    if plan.warmup_epochs > 0:
        # Horovod: ramp the learning rate from lr to lr * size over the first epochs.
        callbacks.append(
            hvd.callbacks.LearningRateWarmupCallback(
                initial_lr=scaled_lr,
                warmup_epochs=plan.warmup_epochs,
                steps_per_epoch=plan.steps_per_epoch,
                verbose=0,
            )
        )
    callbacks += [
        tf.keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=plan.reduce_lr_factor,
            patience=plan.reduce_lr_patience,
            min_lr=plan.min_learning_rate,
        ),
        # Horovod: history everywhere, checkpoints on rank 0 only (checkpoint_dir is None elsewhere).
        log,
    ]
    reader, sharding = _open_train_reader(plan.train_url, rank, size, plan.seed, plan.reader_workers)
    with reader:
        dataset = training_dataset(
            reader,
            height,
            width,
            plan.batch_size,
            plan.shuffle_buffer,
            plan.augment,
            plan.seed + rank,
            shard=(rank, size) if sharding == "rows" else None,
        )
        model.fit(
            dataset,
            # The dataset never ends; a fixed step count gives every rank the same number of allreduces.
            steps_per_epoch=plan.steps_per_epoch,
            epochs=plan.epochs,
            initial_epoch=plan.initial_epoch,
            validation_data=(validation["image"], validation["label"]),
            validation_batch_size=EVAL_BATCH_SIZE,
            class_weight=plan.class_weight,
            callbacks=callbacks,
            verbose=2 if rank == 0 else 0,
        )
    result = {"rank": rank, "size": size, "batches": log.batches, "sharding": sharding}
    if rank == 0:
        result["history"] = log.history
        result["weights"] = model.get_weights()
    return result


def _open_train_reader(train_url: str, rank: int, size: int, seed: int, workers: int):
    """This rank's endless Petastorm reader of the training split, and how the split was sharded.

    Normally each rank reads its own row groups ("row_groups"). A table with fewer row groups than
    ranks cannot be sharded that way; then every rank reads all of it in the same seeded order (one
    reader thread keeps the order fixed) and keeps every size-th row ("rows").
    """
    from petastorm import make_batch_reader
    from petastorm.errors import NoDataAvailableError

    columns = [schema.LABEL, schema.IMAGE]
    try:
        # Horovod: each rank reads its own shard, forever (num_epochs=None).
        reader = make_batch_reader(
            train_url,
            schema_fields=columns,
            num_epochs=None,
            cur_shard=rank,
            shard_count=size,
            shuffle_row_groups=True,
            seed=seed,
            workers_count=workers,
        )
        return reader, "row_groups"
    except NoDataAvailableError:
        reader = make_batch_reader(
            train_url,
            schema_fields=columns,
            num_epochs=None,
            shuffle_row_groups=True,
            seed=seed,
            workers_count=1,
        )
        return reader, "rows"


def training_dataset(
    reader,
    height: int,
    width: int,
    batch_size: int,
    shuffle_buffer: int,
    augment: bool,
    seed: int,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """A Petastorm batch reader as an endless tf.data pipeline of (uint8 images, int32 labels) batches.

    Raw pixel bytes are decoded in the graph (`tf.io.decode_raw` + reshape); rows are shuffled in a
    buffer of `shuffle_buffer` and, with `augment`, flipped at random horizontally and vertically.

    Args:
        shard: (index, count) to keep every count-th row starting at index, or None to keep all.
    """
    from petastorm.tf_utils import make_petastorm_dataset

    size = height * width * 3

    def decode(batch):
        raw = getattr(batch, schema.IMAGE)
        tf.debugging.assert_equal(
            tf.strings.length(raw),
            size,
            message=f"an image in the training split does not hold {height}x{width}x3 bytes",
        )
        pixels = tf.io.decode_raw(raw, tf.uint8)
        return tf.reshape(pixels, (-1, height, width, 3)), tf.cast(getattr(batch, schema.LABEL), tf.int32)

    dataset = make_petastorm_dataset(reader).map(decode).unbatch()
    if shard is not None:
        dataset = dataset.shard(shard[1], shard[0])
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if augment:
        dataset = dataset.map(
            lambda image, label: (_flip(image, seed), label), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _flip(image: tf.Tensor, seed: int) -> tf.Tensor:
    # Distinct op seeds: with one seed both flips would draw the same numbers and always come together.
    image = tf.image.random_flip_left_right(image, seed=seed)
    return tf.image.random_flip_up_down(image, seed=seed + 1)


class _EpochLog(tf.keras.callbacks.Callback):
    """Per-epoch history with timings, progress for the watchdog, and (where `checkpoint_dir` is set:
    rank 0) the epoch's checkpoint."""

    def __init__(
        self,
        images_per_epoch: int,
        history: list[dict],
        checkpoint_dir: str | None,
        optimizer,
        keep_checkpoints: int,
        progress,
    ):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.history = [dict(row) for row in history]
        self.checkpoint_dir = checkpoint_dir
        self.optimizer = optimizer
        self.keep_checkpoints = keep_checkpoints
        self.progress = progress
        self.batches = 0
        self._epoch = 0
        self._epoch_started = self._train_ended = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._epoch_started = time.perf_counter()
        self._train_ended = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        self.progress(f"epoch {self._epoch} batch {batch + 1}")

    def on_test_begin(self, logs=None):
        if not self._train_ended:
            self._train_ended = time.perf_counter()

    def on_test_batch_end(self, batch, logs=None):
        self.progress(f"epoch {self._epoch} validation batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        now = time.perf_counter()
        train_seconds = (self._train_ended or now) - self._epoch_started
        learning_rate = logs.get("lr", tf.keras.backend.get_value(self.optimizer.learning_rate))
        row = {
            "epoch": epoch + 1,
            "loss": float(logs.get("loss", float("nan"))),
            "accuracy": float(logs.get("accuracy", float("nan"))),
            "val_loss": float(logs.get("val_loss", float("nan"))),
            "val_accuracy": float(logs.get("val_accuracy", float("nan"))),
            "learning_rate": float(learning_rate),
            "seconds": round(now - self._epoch_started, 3),
            "images_per_second": round(self.images_per_epoch / max(train_seconds, 1e-9), 1),
        }
        self.history = [old for old in self.history if old["epoch"] < row["epoch"]] + [row]
        if self.checkpoint_dir is not None:
            write_checkpoint(
                self.checkpoint_dir,
                epoch + 1,
                self.model,
                self.optimizer,
                self.history,
                self.keep_checkpoints,
            )
        self.progress(f"epoch {epoch + 1}")


def write_checkpoint(
    checkpoint_dir: str | Path, epoch: int, model, optimizer, history: list[dict], keep: int = 2
) -> Path:
    """Write weights, optimizer state and history after `epoch` (1-based) as `epoch-NNNN/`.

    The files go to a temporary directory that is renamed when complete, so a kill never leaves a
    directory that `latest_checkpoint` would take for a finished epoch. Older checkpoints beyond the
    newest `keep` are removed.
    """
    directory = Path(checkpoint_dir)
    final = directory / f"epoch-{epoch:04d}"
    temporary = directory / f".epoch-{epoch:04d}.tmp-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(parents=True)
    tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(temporary / CHECKPOINT_PREFIX))
    state = {"epoch": epoch, "history": history, "written": time.time()}
    (temporary / STATE_FILE).write_text(json.dumps(state, indent=2))
    if final.exists():  # the same epoch trained again after resuming from an older checkpoint
        shutil.rmtree(final)
    os.rename(temporary, final)
    complete = sorted(path for path in directory.glob("epoch-*") if (path / STATE_FILE).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(".epoch-*.tmp-*"):
        if stale != temporary:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def restore_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Load a checkpoint written by `write_checkpoint` into `model` (and a built `optimizer`, if given).

    Returns:
        The checkpoint's state: {"epoch", "history", "written"}.
    """
    path = Path(path)
    if optimizer is None:
        tf.train.Checkpoint(model=model).read(str(path / CHECKPOINT_PREFIX)).expect_partial()
    else:
        status = tf.train.Checkpoint(model=model, optimizer=optimizer).read(str(path / CHECKPOINT_PREFIX))
        status.assert_existing_objects_matched()
    return json.loads((path / STATE_FILE).read_text())


def _report_error(error_dir: str, rank: int, error: BaseException) -> None:
    """Leave this rank's error where the driver looks for it (best effort: never masks the error)."""
    try:
        directory = Path(error_dir)
        directory.mkdir(parents=True, exist_ok=True)
        report = {
            "rank": rank,
            "time": time.time(),
            "error": _first_line(error),
            "traceback": "".join(traceback.format_exception(error)),
        }
        write_text_atomic(directory / f"rank-{rank}.json", json.dumps(report, indent=2))
    except Exception:  # noqa: BLE001 - reporting must not replace the real error
        pass
