"""What each worker of the tf.distribute backend runs: a fresh Python process per Spark barrier task
(`python -m skinspark.train.distribute PLAN RESULT`), training under MultiWorkerMirroredStrategy.

A fresh process, not the Spark Python worker itself: a reused Python worker may already hold an eager
context, and collectives can only be configured before the first TensorFlow op; a process of its own
also takes its threads and memory with it when it ends, and is killed with its task.

The process talks to its barrier task (skinspark.train.barrier) in lines on stdin/stdout, before any
training output (which goes to stderr from then on):

    worker -> task   port N     a port it holds bound for TensorFlow's gRPC server
    task -> worker   TF_CONFIG  the cluster, from an allGather of every worker's host:port
    worker -> task   ready      MultiWorkerMirroredStrategy is up (or `retry`: the port was taken)
    task -> worker   go         every worker is ready

The placeholder socket is closed just before the strategy binds the port (TensorFlow's server does
not share a port), so the window in which another process can take the port is microseconds, not
the seconds between a bind in one process and TensorFlow's start in another; a worker that still
loses the race answers `retry` and every task starts a new worker.

Training is the Horovod rank's (worker.py) with the strategy in Horovod's place: the same model,
recipe, epoch log, checkpoints (written by worker 0; the others write to scratch, as the strategy's
saving needs every worker), watchdog and error reports. Each worker reads its own row groups of the
training split with pyarrow.dataset (no Petastorm) and runs the same number of steps.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import traceback

import cloudpickle

EXIT_PORT_TAKEN = 3  # the worker could not bind the gathered port: its task starts another


def main(argv: list[str]) -> int:
    plan_path, result_path = argv
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # from here every print goes to stderr
    with open(plan_path, "rb") as handle:
        plan = cloudpickle.load(handle)
    import tensorflow as tf  # before the port is gathered: the import takes seconds

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


def run_worker(strategy, plan, rank: int) -> dict:
    """Train on this worker as `plan` says; on any error report it for the driver and exit at once
    (peers blocked in a collective are ended by their watchdogs)."""
    from skinspark.train.errors import report_error
    from skinspark.train.worker import Watchdog

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


def _train_worker(strategy, plan, rank: int, watchdog) -> dict:
    import tensorflow as tf

    from skinspark import precision
    from skinspark.table import read_split
    from skinspark.train.data import arrow_dataset
    from skinspark.train.errors import table_errors
    from skinspark.train.worker import (
        EpochLog,
        compile_model,
        fit_arguments,
        fit_callbacks,
        restore_into,
        training_phases,
    )

    size = strategy.num_replicas_in_sync
    tf.keras.utils.set_random_seed(plan.seed + rank)
    chosen = precision.resolve(plan.precision)  # this worker's own CPU decides
    precision.use(chosen)
    height, width, _ = plan.input_shape
    with table_errors():
        validation = read_split(plan.val_url, height, width, label_map=plan.label_map)
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
        dataset, sharding["mode"] = arrow_dataset(
            plan.train_url,
            context.input_pipeline_id,
            context.num_input_pipelines,
            height,
            width,
            plan.batch_size,
            plan.shuffle_buffer,
            plan.augment,
            plan.seed,
            plan.repeats,
            plan.label_map,
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
    result = {
        "rank": rank,
        "size": size,
        "batches": log.batches,
        "sharding": sharding.get("mode"),
        "precision": chosen,
    }
    # Every worker reads the weights: reading a synchronised-on-read variable (batch normalisation's
    # moving statistics in a backbone) is a collective that waits for all of them.
    weights = model.get_weights()
    if rank == 0:
        result["history"] = log.history
        result["weights"] = weights
    return result


def _weighted(class_weight: dict[int, float] | None, label_smoothing: float, classes: int):
    """(images, labels) -> (images, targets, sample weights): Keras' `class_weight` as the sample
    weights it becomes (fit takes no class_weight with a distributed dataset)."""
    import tensorflow as tf

    table = tf.constant([(class_weight or {}).get(index, 1.0) for index in range(classes)], tf.float32)

    def weigh(images, labels):
        target = tf.one_hot(labels, classes) if label_smoothing > 0 else labels
        return images, target, tf.gather(table, labels)

    return weigh


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
