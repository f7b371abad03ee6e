"""The Horovod backend: the launch on Spark (`horovod.spark.run`, one rank per Spark task, Gloo for
the collectives), what each rank runs (`train_worker`: the rank recipe of skinspark.train.rank with
Horovod's distributed optimizer, broadcasts and metric averaging) and its Petastorm shard of the
training split.

Everything but `run_ranks` runs inside the rank processes; Horovod pickles `train_worker` by
reference, so it stays a top-level function of this module.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf

from skinspark import schema
from skinspark.train.errors import TrainError, describe_failure, report_error
from skinspark.train.pipeline import Pipeline, pixel_batches
from skinspark.train.rank import (
    EpochLog,
    Phase,
    RankPlan,
    Watchdog,
    compile_model,
    fit_arguments,
    fit_callbacks,
    rank_result,
    read_validation,
    restore_into,
    start_rank,
    training_phases,
)

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


def train_worker(plan: RankPlan) -> dict:
    """Train on one Horovod rank, as `plan` says. Runs in every rank's process.

    Returns:
        The rank's `rank.rank_result`: its batches, sharding and precision; rank 0's also the history
        and the final weights.

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
        report_error(plan.error_dir, rank, error)
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


def _train_rank(hvd, watchdog: Watchdog | None, plan: RankPlan) -> dict:
    rank, size = hvd.rank(), hvd.size()
    quiet_petastorm()
    # Horovod: a rank owns its Spark task's cores (spark.task.cpus), not the whole machine.
    tf.config.threading.set_intra_op_parallelism_threads(plan.task_cpus)
    tf.config.threading.set_inter_op_parallelism_threads(plan.task_cpus)
    chosen = start_rank(plan, rank)
    progress = watchdog.progress if watchdog is not None else (lambda where: None)

    validation = read_validation(plan)
    progress("reading the validation split")
    phases = training_phases(plan)
    model, optimizer, scaled_lr = _compiled_model(hvd, plan, rank, size, phases[0])
    progress("building the model")
    log = EpochLog(
        images_per_epoch=plan.steps_per_epoch * plan.batch_size * size,
        history=plan.previous_history,
        checkpoint_dir=plan.checkpoint_dir if rank == 0 else None,
        optimizer=optimizer,
        keep_checkpoints=plan.keep_checkpoints,
        progress=progress,
    )
    reader, sharding = open_train_reader(plan.train_url, rank, size, plan.seed, plan.workers_per_rank)
    with reader:
        shard = (rank, size) if sharding == "rows" else None
        dataset = training_dataset(reader, plan.pipeline(rank), shard)
        if plan.label_smoothing > 0:  # smoothing needs one-hot targets (class weights still apply)
            dataset = dataset.map(lambda image, label: (image, tf.one_hot(label, len(plan.labels))))
        for index, phase in enumerate(phases):
            if index > 0:  # fine-tuning: other trainable layers, a new optimizer at a lower rate
                model, log.optimizer, scaled_lr = _compiled_model(hvd, plan, rank, size, phase, model)
            model.fit(
                dataset,
                class_weight=plan.class_weight,
                callbacks=_callbacks(hvd, plan, scaled_lr, log),
                **fit_arguments(plan, phase, validation, rank),
            )
    return rank_result(rank, size, log, sharding, chosen, model.get_weights() if rank == 0 else None)


def _compiled_model(hvd, plan: RankPlan, rank: int, size: int, phase: Phase, model=None):
    """The model (built unless given) compiled for `phase` with a distributed optimizer, in rank 0's
    state on every rank; and the phase's scaled rate."""
    import horovod.tensorflow as hvd_tf

    # Horovod: scale the learning rate by the number of ranks (the global batch grows with it).
    scaled_lr = plan.learning_rate * size * phase.rate_factor
    # Horovod: average gradients across ranks.
    compression = hvd.Compression.fp16 if plan.gradient_compression == "fp16" else hvd.Compression.none
    model, optimizer = compile_model(
        plan,
        scaled_lr,
        wrap=lambda adam: hvd.DistributedOptimizer(adam, compression=compression),
        model=model,
        trainable=phase.trainable,
    )
    if rank == 0:
        # Horovod: only rank 0 reads the checkpoint; the broadcast below hands its state to the others.
        restore_into(plan, phase, model, optimizer)
    # Horovod: every rank starts from rank 0's weights and optimizer state, before the first step (the
    # callback in `_callbacks` broadcasts again after the first batch, as in Horovod's examples).
    hvd_tf.broadcast_variables(model.variables + list(optimizer.variables), root_rank=0)
    return model, optimizer, scaled_lr


def _callbacks(hvd, plan: RankPlan, scaled_lr: float, log: EpochLog) -> list:
    callbacks = [
        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Horovod: average metrics among ranks at the end of every epoch, before anything reads them.
        hvd.callbacks.MetricAverageCallback(),
    ]
    if plan.warmup_steps == 0 and plan.warmup_epochs > 0:
        # Horovod: ramp the learning rate from lr to lr * size over the first epochs.
        callbacks.append(
            hvd.callbacks.LearningRateWarmupCallback(
                initial_lr=scaled_lr,
                warmup_epochs=plan.warmup_epochs,
                steps_per_epoch=plan.steps_per_epoch,
                verbose=0,
            )
        )
        return [*callbacks, *fit_callbacks(plan, scaled_lr, hvd.size(), log, warmup=False)]
    return [*callbacks, *fit_callbacks(plan, scaled_lr, hvd.size(), log)]


def quiet_petastorm() -> None:
    # Petastorm 0.13 calls pyarrow APIs that pyarrow 14 marks deprecated, once per row group.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow\..*")
    # It also warns that "image" no longer matches "image_id" as a prefix: exact names are what we want.
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed", category=UserWarning)


def open_train_reader(train_url: str, rank: int, size: int, seed: int, workers: int):
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


def training_dataset(reader, pipeline: Pipeline, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """A Petastorm batch reader as an endless tf.data pipeline of (uint8 images, int32 labels) batches
    (`pipeline.pixel_batches`); `shard` (index, count) keeps every count-th row starting at index."""
    from petastorm.tf_utils import make_petastorm_dataset

    def columns(batch):
        return getattr(batch, schema.IMAGE), getattr(batch, schema.LABEL)

    rows = make_petastorm_dataset(reader).map(columns)
    return pixel_batches(rows, pipeline, shard)
