"""What every rank runs, whatever the backend: the plan it receives, the phases of a run, the model
compiled for a phase, the callbacks, the per-epoch log and checkpoint, and the watchdog that ends a
rank which can no longer finish. Each backend (horovod_backend, distribute_backend) applies this
recipe to a model and its own shard of the training split.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from skinspark import precision, schema
from skinspark.config import TrainConfig
from skinspark.model import BACKBONES, build_model, set_trainable_layers
from skinspark.table import EVAL_BATCH_SIZE, read_split, split_url
from skinspark.tasks import get_task
from skinspark.train.checkpoints import CHECKPOINTS, restore_checkpoint, write_checkpoint
from skinspark.train.errors import ERRORS, report_error, table_errors
from skinspark.train.pipeline import Pipeline

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


@dataclasses.dataclass(frozen=True)
class RankPlan:
    """Everything a rank needs, as plain values: the driver builds it, every rank receives it pickled.

    The run's settings are its `config`, read through the plan: `plan.batch_size` is
    `plan.config.batch_size`, for every TrainConfig field the plan has no value of its own for. Two
    fields are the run's resolution of a setting and win over it: `weights` (the file the setting names,
    or None; `config.weights` is what was asked for) and `class_weight` (the loss weight of each of the
    task's units; `config.class_weight` is the mode).
    """

    config: TrainConfig
    train_url: str
    val_url: str
    checkpoint_dir: str
    error_dir: str
    labels: tuple[str, ...]  # the task's output units
    label_map: tuple[int, ...]  # the table's label index -> the task's unit
    weights: str | None  # a backbone's weights file (readable where the rank runs), or None: random
    input_shape: tuple[int, int, int]
    initial_epoch: int
    resume_dir: str | None
    previous_history: list[dict]
    steps_per_epoch: int
    class_weight: dict[int, float] | None
    repeats: dict[int, int] | None  # oversampling: each training image of a class this many times per epoch
    task_cpus: int

    @classmethod
    def build(cls, config: TrainConfig, data_url: str, model_dir: Path, **run) -> RankPlan:
        """The plan of a run: the recipe `config`, the splits under `data_url`, checkpoints and error
        reports under `model_dir`, and the run's own values (`run`: input_shape, initial_epoch,
        previous_history, resume_dir, steps_per_epoch, class_weight, repeats, task_cpus, weights)."""
        task = get_task(config.task)
        return cls(
            config=config,
            train_url=split_url(data_url, schema.TRAIN),
            val_url=split_url(data_url, schema.VAL),
            checkpoint_dir=str(model_dir / CHECKPOINTS),
            error_dir=str(model_dir / ERRORS),
            labels=task.labels,
            label_map=task.label_map,
            **run,
        )

    @property
    def model_name(self) -> str:
        return self.config.model

    def pipeline(self, rank: int) -> Pipeline:
        """How rank `rank` turns its training rows into batches."""
        height, width, _ = self.input_shape
        config = self.config
        return Pipeline(
            height,
            width,
            config.batch_size,
            config.shuffle_buffer,
            config.augment,
            config.seed + rank,
            self.repeats,
            self.label_map,
        )

    def __getattr__(self, name: str):
        # Only called for a name the plan itself lacks. Read through __dict__: while unpickling, the
        # plan has no `config` yet and pickle asks for names such as __setstate__.
        config = self.__dict__.get("config")
        if config is not None and name in _CONFIG_FIELDS:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(TrainConfig))


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained with one set of trainable layers at one share of the rate."""

    start: int  # epochs done before it
    end: int  # epochs done after it (Keras fit's `epochs`)
    trainable: int | None  # backbone layers that train: None all, 0 none (frozen), N the top N
    rate_factor: float  # of the scaled learning rate


def training_phases(plan: RankPlan) -> list[Phase]:
    """The phases still to train after `plan.initial_epoch`.

    One phase of everything for the paper's CNN, or a backbone with `freeze_epochs` 0. Otherwise
    fine-tuning in two: the backbone frozen (only the new head trains) for `freeze_epochs`, then its
    top `fine_tune_layers` layers (0: all) train too, at `fine_tune_rate_factor` of the rate.
    """
    if plan.model_name not in BACKBONES or plan.freeze_epochs == 0:
        phases = [Phase(0, plan.epochs, None, 1.0)]
    else:
        frozen = min(plan.freeze_epochs, plan.epochs)
        tuned = plan.fine_tune_layers or None
        phases = [Phase(0, frozen, 0, 1.0), Phase(frozen, plan.epochs, tuned, plan.fine_tune_rate_factor)]
    return [phase for phase in phases if phase.end > max(phase.start, plan.initial_epoch)]


def fit_arguments(plan: RankPlan, phase: Phase, validation: dict, rank: int) -> dict:
    """Keras fit's arguments for one phase that every backend passes alike."""
    return {
        # The dataset never ends; a fixed step count gives every rank the same number of collectives.
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": phase.end,
        "initial_epoch": max(plan.initial_epoch, phase.start),
        "validation_data": (
            validation["image"],
            targets(validation["label"], plan.label_smoothing, len(plan.labels)),
        ),
        "validation_batch_size": EVAL_BATCH_SIZE,
        "verbose": 2 if rank == 0 else 0,
    }


def restore_into(plan: RankPlan, phase: Phase, model, optimizer) -> bool:
    """Restore `plan.resume_dir` when `phase` is where the resumed run continues; the optimizer's state
    too, unless the checkpoint closed the phase before (its optimizer had other variables). True if
    a checkpoint was read."""
    if plan.resume_dir is None or phase.start > plan.initial_epoch:
        return False
    restore_checkpoint(plan.resume_dir, model, optimizer if plan.initial_epoch > phase.start else None)
    return True


def start_rank(plan: RankPlan, rank: int) -> str:
    """Seed this rank and set the precision it trains in; returns that precision. Decided here, on
    this rank's CPU: a cluster can mix machines with and without bfloat16 units."""
    tf.keras.utils.set_random_seed(plan.seed + rank)
    chosen = precision.resolve(plan.precision)
    precision.use(chosen)
    return chosen


def read_validation(plan: RankPlan) -> dict[str, np.ndarray]:
    """The whole validation split, its labels as the task's units (`skinspark.table.read_split`).

    Raises:
        TrainInputError: the split does not read whole.
    """
    height, width, _ = plan.input_shape
    with table_errors():
        return read_split(plan.val_url, height, width, plan.workers_per_rank, plan.label_map)


def rank_result(rank: int, size: int, log: EpochLog, sharding: str | None, chosen: str, weights) -> dict:
    """What a rank returns to the driver: {"rank", "size", "batches", "sharding", "precision" (what it
    trained in)}; rank 0 adds "history" (all epochs, including those of a resumed run) and "weights"
    (the final model weights as NumPy arrays)."""
    result = {"rank": rank, "size": size, "batches": log.batches, "sharding": sharding, "precision": chosen}
    if rank == 0:
        result["history"] = log.history
        result["weights"] = weights
    return result


class Watchdog:
    """Ends a rank process that can no longer finish, so that the job fails instead of hanging.

    A daemon thread checks every few seconds and exits the process when another rank has reported a
    failure (this rank would wait forever in its next collective), or when this rank has made no
    progress (`progress()`: a finished batch) for `stall_timeout_s`: a hung input pipeline, or a peer
    missing from a collective. Horovod's own stall shutdown does not fire with Gloo on Spark. With
    `parent` (a process id), it also exits when that process is gone: the Spark task that started it.
    """

    def __init__(
        self,
        error_dir: str,
        rank: int,
        stall_timeout_s: float,
        interval_s: float = 2.0,
        parent: int | None = None,
    ):
        self.error_dir = Path(error_dir)
        self.parent = parent
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
            if self.parent is not None and os.getppid() != self.parent:
                print(f"rank {self.rank}: stopping because its Spark task ended", file=sys.stderr, flush=True)
                os._exit(1)
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
                report_error(str(self.error_dir), self.rank, error)
                print(f"rank {self.rank}: {error}", file=sys.stderr, flush=True)
                os._exit(1)


def compile_model(plan: RankPlan, learning_rate: float, wrap=None, model=None, trainable: int | None = None):
    """The plan's model (built unless `model` is given) compiled with Adam at `learning_rate` (wrapped
    by `wrap`, e.g. Horovod's distributed optimizer), its optimizer built so that restores and
    broadcasts reach its slots. For a backbone, `trainable` says which of its layers train (None: all,
    0: none, N: the top N)."""
    if model is None:
        model = build_model(
            plan.model_name, tuple(plan.input_shape), len(plan.labels), plan.dropout, weights=plan.weights
        )
    if plan.model_name in BACKBONES:
        set_trainable_layers(model, trainable)
    clipping = {"global_clipnorm": plan.clip_norm} if plan.clip_norm > 0 else {}
    optimizer = tf.keras.optimizers.Adam(learning_rate=learning_rate, **clipping)
    if wrap is not None:
        optimizer = wrap(optimizer)
    model.compile(optimizer=optimizer, loss=loss(plan.label_smoothing), metrics=["accuracy"])
    optimizer.build(model.trainable_variables)
    return model, optimizer


def fit_callbacks(plan: RankPlan, scaled_lr: float, size: int, log: EpochLog, warmup: bool = True) -> list:
    """The callbacks of every backend: the learning-rate warm-up from lr to lr * size (counted in
    optimizer steps: an epoch of a small split can be a dozen steps, too few for an epoch-counted ramp
    to be gentle; `warmup_epochs` counts as that many epochs of steps when `warmup_steps` is 0),
    ReduceLROnPlateau, and the epoch log (history everywhere, checkpoints where it has a directory)."""
    callbacks = []
    steps = plan.warmup_steps or plan.warmup_epochs * plan.steps_per_epoch
    if warmup and steps > 0:
        callbacks.append(StepWarmup(scaled_lr / size, scaled_lr, steps, plan.steps_per_epoch))
    reduce_lr = tf.keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        factor=plan.reduce_lr_factor,
        patience=plan.reduce_lr_patience,
        min_lr=plan.min_learning_rate,
    )
    return [*callbacks, reduce_lr, log]


def loss(label_smoothing: float) -> tf.keras.losses.Loss:
    """Cross-entropy on integer labels, or on one-hot targets when smoothing them."""
    if label_smoothing > 0:
        return tf.keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return tf.keras.losses.SparseCategoricalCrossentropy()


def targets(labels: np.ndarray, label_smoothing: float, classes: int = schema.NUM_CLASSES) -> np.ndarray:
    """Integer labels as the loss of `loss(label_smoothing)` takes them."""
    return np.eye(classes, dtype=np.float32)[labels] if label_smoothing > 0 else labels


class StepWarmup(tf.keras.callbacks.Callback):
    """The learning rate ramped linearly from `start` to `end` over the first `steps` optimizer steps
    (counted from the start of the run, so a resumed run continues the ramp where it was)."""

    def __init__(self, start: float, end: float, steps: int, steps_per_epoch: int):
        super().__init__()
        self.start, self.end, self.steps, self.steps_per_epoch = start, end, steps, steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self._epoch * self.steps_per_epoch + batch
        if step <= self.steps:
            rate = self.start + (self.end - self.start) * min(1.0, step / self.steps)
            tf.keras.backend.set_value(self.model.optimizer.learning_rate, rate)


class EpochLog(tf.keras.callbacks.Callback):
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
