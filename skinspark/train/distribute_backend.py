"""The tf_distribute backend's worker: a fresh Python process per Spark barrier task
(`python -m skinspark.train.distribute_backend PLAN RESULT`), training under
MultiWorkerMirroredStrategy on its pyarrow shard of the training split (`arrow_shard`). The barrier
stage that starts these processes is skinspark.train.distribute_launch.

A fresh process, not the Spark Python worker itself: a reused Python worker may already hold an eager
context, and collectives can only be configured before the first TensorFlow op; a process of its own
also takes its threads and memory with it when it ends, and is killed with its task.

The process talks to its barrier task (skinspark.train.distribute_launch) in lines on stdin/stdout, before any
training output (which goes to stderr from then on):

    worker -> task   port N     a port it holds bound for TensorFlow's gRPC server
    task -> worker   TF_CONFIG  the cluster, from an allGather of every worker's host:port
    worker -> task   ready      MultiWorkerMirroredStrategy is up (or `retry`: the port was taken)
    task -> worker   go         every worker is ready

The placeholder socket is closed just before the strategy binds the port (TensorFlow's server does
not share a port), so the window in which another process can take the port is microseconds, not
the seconds between a bind in one process and TensorFlow's start in another; a worker that still
loses the race answers `retry` and every task starts a new worker.

Training is the rank recipe of skinspark.train.rank with the strategy where the Horovod backend has
Horovod: the same model, recipe, epoch log, checkpoints (written by worker 0; the others write to
scratch, as the strategy's saving needs every worker), watchdog and error reports. Each worker reads
its own row groups of the training split with pyarrow.dataset (no Petastorm) and runs the same
number of steps.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import traceback

import cloudpickle
import numpy as np
import tensorflow as tf

from skinspark import schema
from skinspark.table import split_row_groups
from skinspark.train.errors import TrainInputError, report_error
from skinspark.train.pipeline import Pipeline, pixel_batches
from skinspark.train.rank import (
    EpochLog,
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

EXIT_PORT_TAKEN = 3  # the worker could not bind the gathered port: its task starts another


def main(argv: list[str]) -> int:
    plan_path, result_path = argv
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # from here every print goes to stderr
    with open(plan_path, "rb") as handle:
        plan = cloudpickle.load(handle)
    tf.config.threading.set_intra_op_parallelism_threads(plan.task_cpus)
    tf.config.threading.set_inter_op_parallelism_threads(plan.task_cpus)
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    placeholder.bind(("", 0))
    protocol.write(f"port {placeholder.getsockname()[1]}\n")
    tf_config = sys.stdin.readline().strip()
    if not tf_config:
        return 1  # the task gave up (another worker failed to start)
    os.environ["TF_CONFIG"] = tf_config
    rank = int(json.loads(tf_config)["task"]["index"])
    placeholder.close()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.RING
            )
        )
    except tf.errors.UnknownError as error:
        if "Could not start gRPC server" not in str(error):
            raise
        protocol.write("retry\n")
        return EXIT_PORT_TAKEN
    protocol.write("ready\n")
    if sys.stdin.readline().strip() != "go":
        return 1
    result = run_worker(strategy, plan, rank)
    staging = f"{result_path}.tmp"
    with open(staging, "wb") as handle:
        cloudpickle.dump(result, handle)
    os.replace(staging, result_path)
    return 0


def run_worker(strategy, plan: RankPlan, rank: int) -> dict:
    """Train on this worker as `plan` says; on any error report it for the driver and exit at once
    (peers blocked in a collective are ended by their watchdogs)."""
    watchdog = Watchdog(plan.error_dir, rank, plan.stall_timeout_s, parent=os.getppid())
    try:
        return _train_worker(strategy, plan, rank, watchdog)
    except BaseException as error:
        report_error(plan.error_dir, rank, error)
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    finally:
        watchdog.stop()


def _train_worker(strategy, plan: RankPlan, rank: int, watchdog: Watchdog) -> dict:
    size = strategy.num_replicas_in_sync
    chosen = start_rank(plan, rank)  # this worker's own CPU decides its precision
    validation = read_validation(plan)
    watchdog.progress("reading the validation split")
    # The strategy averages gradients across workers: the rate scales with them, as with Horovod.
    scaled_lr = plan.learning_rate * size
    phases = training_phases(plan)
    with strategy.scope():
        model, optimizer = compile_model(
            plan, scaled_lr * phases[0].rate_factor, trainable=phases[0].trainable
        )
        restore_into(plan, phases[0], model, optimizer)  # every worker reads it: no broadcast needed
    watchdog.progress("building the model")
    sharding = {}

    def shard(context: tf.distribute.InputContext) -> tf.data.Dataset:
        worker = context.input_pipeline_id  # one input pipeline per worker: its rank
        dataset, sharding["mode"] = arrow_dataset(
            plan.train_url, worker, context.num_input_pipelines, plan.seed, plan.pipeline(worker)
        )
        return dataset.map(_weighted(plan.class_weight, plan.label_smoothing, len(plan.labels)))

    dataset = strategy.distribute_datasets_from_function(shard)
    with tempfile.TemporaryDirectory(prefix="skinspark-scratch-checkpoints-") as scratch:
        log = EpochLog(
            images_per_epoch=plan.steps_per_epoch * plan.batch_size * size,
            history=plan.previous_history,
            # Saving under the strategy needs every worker; only worker 0's checkpoint is kept.
            checkpoint_dir=plan.checkpoint_dir if rank == 0 else scratch,
            optimizer=optimizer,
            keep_checkpoints=plan.keep_checkpoints if rank == 0 else 1,
            progress=watchdog.progress,
        )
        for index, phase in enumerate(phases):
            if index > 0:  # fine-tuning: other trainable layers, a new optimizer at a lower rate
                with strategy.scope():
                    model, log.optimizer = compile_model(
                        plan, scaled_lr * phase.rate_factor, model=model, trainable=phase.trainable
                    )
            model.fit(
                dataset,
                callbacks=fit_callbacks(plan, scaled_lr * phase.rate_factor, size, log),
                **fit_arguments(plan, phase, validation, rank),
            )
    # Every worker reads the weights: reading a synchronised-on-read variable (batch normalisation's
    # moving statistics in a backbone) is a collective that waits for all of them.
    weights = model.get_weights()
    return rank_result(rank, size, log, sharding.get("mode"), chosen, weights)


def _weighted(class_weight: dict[int, float] | None, label_smoothing: float, classes: int):
    """(images, labels) -> (images, targets, sample weights): Keras' `class_weight` as the sample
    weights it becomes (fit takes no class_weight with a distributed dataset)."""
    table = tf.constant([(class_weight or {}).get(index, 1.0) for index in range(classes)], tf.float32)

    def weigh(images, labels):
        target = tf.one_hot(labels, classes) if label_smoothing > 0 else labels
        return images, target, tf.gather(table, labels)

    return weigh


def arrow_shard(url: str, rank: int, size: int, seed: int):
    """This worker's endless stream of (image bytes, labels) batches of the training split, one row
    group at a time, and how the split was sharded.

    Row group i belongs to worker i % size ("row_groups"); each pass over its row groups is in a new
    seeded order. A split with fewer row groups than workers is read whole by every worker in the
    same order, keeping every size-th row ("rows"), as the Petastorm path does.
    """
    groups = split_row_groups(url)
    if not groups:
        raise TrainInputError(f"the training split {url} holds no rows")
    sharding = "row_groups" if len(groups) >= size else "rows"
    mine = groups[rank::size] if sharding == "row_groups" else groups
    columns = [schema.IMAGE, schema.LABEL]

    def batches():
        rng = np.random.default_rng(seed if sharding == "rows" else seed + rank)
        while True:
            for position in rng.permutation(len(mine)):
                table = mine[position][0].to_table(columns=columns)
                raw = np.asarray(table.column(schema.IMAGE).to_pylist(), dtype=object)
                label = table.column(schema.LABEL).to_numpy().astype(np.int32)
                if sharding == "rows":
                    raw, label = raw[rank::size], label[rank::size]
                yield raw, label

    return batches, sharding


def arrow_dataset(url: str, rank: int, size: int, seed: int, pipeline: Pipeline):
    """`arrow_shard` (in the order of the run's `seed`) as an endless tf.data pipeline of (uint8
    images, int32 labels) batches (`pipeline.pixel_batches`); and the sharding."""
    batches, sharding = arrow_shard(url, rank, size, seed)
    rows = tf.data.Dataset.from_generator(
        batches,
        output_signature=(
            tf.TensorSpec(shape=(None,), dtype=tf.string),
            tf.TensorSpec(shape=(None,), dtype=tf.int32),
        ),
    )
    return pixel_batches(rows, pipeline), sharding


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
