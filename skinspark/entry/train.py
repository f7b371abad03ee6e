"""Train the paper's CNN on an ingested table, data-parallel on Spark; evaluate it on the test split.

    spark-submit jobs/train.py --data out/ham10000 --output out/model --epochs 25 --batch-size 32
    spark-submit jobs/train.py --data out/ham10000 --output out/model --backend tf_distribute
    spark-submit jobs/train.py --data out/ham10000-folds --output out/cv --cross-validate
    spark-submit jobs/train.py --data out/ham10000 --output out/model --mlflow sqlite:///mlflow.db \
        --register-model skin-lesion-cnn

Also `python jobs/train.py ...` and the console script `skinspark-train ...`. Ranks default to the
application's task slots (default parallelism / spark.task.cpus). Exit codes: 0 done, 1 training
failed (a rank's error is printed) or the finished run could not be logged to MLflow (the model
directory is complete), 2 bad arguments or input (MLflow missing or its store not reachable, checked
before training).
"""

from __future__ import annotations

import argparse
import functools
import sys

from pyspark.sql import SparkSession

from skinspark import tracking
from skinspark.cli import (
    add_common_arguments,
    add_precision_argument,
    add_tracking_arguments,
    flag_values,
    log_run,
    run_job,
)
from skinspark.config import BACKENDS, BALANCE_MODES, CLASS_WEIGHT_MODES, Loaded, TrainConfig
from skinspark.tasks import TASKS
from skinspark.train import TrainError, TrainInputError, train, train_summary
from skinspark.train.cross_validation import cross_validate, cross_validation_summary

# The flags that set the config keys of the same name.
FLAGS = (
    "backend",
    "num_proc",
    "epochs",
    "batch_size",
    "learning_rate",
    "model",
    "task",
    "weights",
    "class_weight",
    "balance",
    "augment",
    "seed",
    "precision",
    "fold",
    "cross_validate",
    "mlflow_tracking_uri",
    "mlflow_experiment",
    "mlflow_model_name",
)


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="ingested table (the ingest job's --output)"
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="MODEL_DIR",
        help="model directory (local or shared path); holds checkpoints for --resume",
    )
    _add_model_arguments(parser)
    _add_recipe_arguments(parser)
    _add_fold_arguments(parser)
    add_tracking_arguments(parser)
    parser.add_argument(
        "--register-model",
        dest="mlflow_model_name",
        metavar="NAME",
        help="with --mlflow: register the logged model under NAME in MLflow's model registry",
    )
    return add_common_arguments(parser)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What is trained, where and how long: backend, ranks, epochs, batch, rate, model, task, weights."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="data-parallel backend: horovod, or tf_distribute (MultiWorkerMirroredStrategy on a Spark "
        "barrier stage); auto (default): horovod where it is installed, else tf_distribute",
    )
    parser.add_argument(
        "--num-proc", type=int, help="ranks / workers (default: the application's task slots)"
    )
    parser.add_argument("--epochs", type=int, help="total epochs (default 25)")
    parser.add_argument("--batch-size", type=int, help="images per batch per rank (default 32)")
    parser.add_argument(
        "--learning-rate",
        type=float,
        help="Adam learning rate per rank, multiplied by the number of ranks (default 0.0003)",
    )
    parser.add_argument(
        "--model",
        help="architecture: paper_cnn (default), mobilenet_v2, resnet50, inception_v3 or densenet201",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        help="what the model predicts: dx7 (default), the seven diagnoses; or malignant, benign (nv, bkl, "
        "df, vasc) against malignant (mel, bcc, akiec)",
    )
    parser.add_argument(
        "--weights",
        help="a backbone's starting weights: none (default, random), imagenet (the no-top file in "
        "~/.keras/models; never downloaded) or PATH to a no-top .h5 every executor can read",
    )


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """How: class weights, balancing, augmentation, resuming, seed and precision."""
    parser.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHT_MODES,
        help="per-class loss weights from the train split's counts (default balanced)",
    )
    parser.add_argument(
        "--balance",
        choices=BALANCE_MODES,
        help="rare classes: loss weights (default, see --class-weight), oversampling inside the training "
        "split, or neither",
    )
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal and vertical flips (default on)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last complete epoch checkpoint in MODEL_DIR"
    )
    parser.add_argument("--seed", type=int, help="random seed (default 42)")
    add_precision_argument(parser, "the rank's")


def _add_fold_arguments(parser: argparse.ArgumentParser) -> None:
    """A table ingested with --folds: one fold, or all of them."""
    parser.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="a table ingested with --folds: validate on fold K, train on the other folds (test stays test)",
    )
    parser.add_argument(
        "--cross-validate",
        action="store_true",
        default=None,
        help="a table ingested with --folds: train every fold into MODEL_DIR/fold-k and write each "
        "metric's mean and standard deviation (cross_validation.json, .csv)",
    )


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    work = functools.partial(train_and_log, data=args.data, output=args.output, resume=args.resume)
    input_errors = (TrainInputError, ValueError, tracking.TrackingError)
    return run_job(args, "train", TrainConfig, flag_values(args, FLAGS), work, input_errors, (TrainError,))


def train_and_log(
    spark: SparkSession, loaded: Loaded[TrainConfig], data: str, output: str, resume: bool
) -> int:
    """Train on the table `data` into `output` (every fold with `cross_validate`) and print the summary;
    with an MLflow URI in the config, check the store first and log the run after. The exit code: 0
    done, 1 the run could not be logged (the model directory stands).

    Raises:
        TrainInputError, ValueError, TrackingError: bad input, or MLflow missing or away (exit 2).
        TrainError: training failed (exit 1).
    """
    config = loaded.job
    if config.mlflow_tracking_uri:  # MLflow missing or its store away: say so before training, not after
        tracking.open_experiment(config.mlflow_tracking_uri, config.mlflow_experiment)
    if config.cross_validate:
        return _cross_validate_and_log(spark, loaded, data, output, resume)
    result = train(spark, data, output, config, loaded.to_yaml(), resume=resume)
    print(train_summary(result))
    if not config.mlflow_tracking_uri:
        return 0
    return log_run(
        "train",
        lambda: tracking.log_training(
            result, loaded, config.mlflow_tracking_uri, config.mlflow_experiment, config.mlflow_model_name
        ),
        kept=f"the model directory {result.model_dir} is complete",
    )


def _cross_validate_and_log(
    spark: SparkSession, loaded: Loaded[TrainConfig], data: str, output: str, resume: bool
) -> int:
    """`train_and_log` for --cross-validate: every fold, each one's summary as it ends, then theirs."""
    config = loaded.job
    trained: list = []
    on_fold = functools.partial(_print_and_keep, trained)
    folds = cross_validate(spark, data, output, config, loaded.to_yaml(), resume, on_fold=on_fold)
    print(cross_validation_summary(folds))
    if not config.mlflow_tracking_uri:
        return 0
    return log_run(
        "train",
        lambda: tracking.log_cross_validation(
            folds, trained, loaded, config.mlflow_tracking_uri, config.mlflow_experiment
        ),
        kept=f"the cross-validation in {folds.output} is complete",
    )


def _print_and_keep(trained: list, result) -> None:
    """A fold's training ended: print its summary and keep its result for the MLflow run."""
    print(train_summary(result), flush=True)
    trained.append(result)


if __name__ == "__main__":
    sys.exit(main())
