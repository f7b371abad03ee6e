"""Score images with a trained model: one row per file, errors as rows, resumable.

    spark-submit jobs/score.py --model out/model --images archive/ --output out/predictions

    spark-submit jobs/score.py --model out/model --table out/ham10000 --output out/test-scores \
        --mlflow sqlite:///mlflow.db

Also `python jobs/score.py ...` and the console script `skinspark-score ...`. `--mode resume` scores
only the files not already in the output. Exit codes: 0 done, 1 more error rows than
max_bad_fraction (the rows are written) or the finished run could not be logged to MLflow, 2 bad
arguments or input (MLflow missing or its store not reachable, checked before scoring).
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
    add_reader_argument,
    add_tracking_arguments,
    finish,
    flag_values,
    log_run,
    run_job,
)
from skinspark.config import SCORE_MODES, Loaded, ScoreConfig
from skinspark.score import ScoreError, score, score_summary

# The flags that set the config keys of the same name.
FLAGS = ("mode", "batch_size", "reader", "precision", "mlflow_tracking_uri", "mlflow_experiment")


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="MODEL_DIR",
        help="model directory (model.keras, labels.json, preprocessing.json), local or mounted; repeat it "
        "for an ensemble whose probabilities are averaged (one label order and input size for all)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="directories (searched recursively for *.jpg/*.jpeg/*.png, any case) or globs; "
        "any Hadoop URI",
    )
    source.add_argument(
        "--table", metavar="DIR", help="an ingested table: scored with its labels, plus metrics"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="predictions directory (Parquet)")
    parser.add_argument(
        "--isic-csv", metavar="FILE", help="also write an ISIC 2018 Task 3 submission CSV (image,MEL,NV,...)"
    )
    parser.add_argument(
        "--truth", metavar="CSV", help="evaluate against an ISIC 2018 Task 3 ground-truth CSV (one-hot)"
    )
    parser.add_argument(
        "--mode",
        choices=SCORE_MODES,
        help="overwrite: replace DIR (default); resume: score only files not already in DIR",
    )
    parser.add_argument("--batch-size", type=int, help="images per Arrow batch and model call (default 256)")
    add_reader_argument(parser)
    add_precision_argument(parser, "the worker's")
    add_tracking_arguments(parser)
    return add_common_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    work = functools.partial(
        score_and_log,
        models=args.model,
        output=args.output,
        images=args.images,
        table=args.table,
        isic_csv=args.isic_csv,
        truth=args.truth,
    )
    input_errors = (ScoreError, ValueError, tracking.TrackingError)
    return run_job(args, "score", ScoreConfig, flag_values(args, FLAGS), work, input_errors)


def score_and_log(
    spark: SparkSession,
    loaded: Loaded[ScoreConfig],
    models: list[str],
    output: str,
    images: list[str] | None,
    table: str | None,
    isic_csv: str | None,
    truth: str | None,
) -> int:
    """Score `images` (or `table`) with `models` into `output` and print the summary; with an MLflow
    URI in the config, check the store first and log the run after. The exit code: 0 done, 1 more
    error rows than allowed or the run could not be logged (the predictions stand).

    Raises:
        ScoreError, ValueError, TrackingError: bad input, or MLflow missing or away before scoring (exit 2).
    """
    config = loaded.job
    if config.mlflow_tracking_uri:  # MLflow missing or its store away: say so before scoring, not after
        tracking.open_experiment(config.mlflow_tracking_uri, config.mlflow_experiment)
    result = score(
        spark,
        models,
        output,
        config,
        images=images,
        table=table,
        config_text=loaded.to_yaml(),
        progress=print,
        isic_csv=isic_csv,
        truth=truth,
    )
    code = finish("score", result, score_summary(result.manifest), "predictions")
    if not config.mlflow_tracking_uri:
        return code
    logged = log_run(
        "score",
        lambda: tracking.log_scoring(
            spark, result, loaded, config.mlflow_tracking_uri, config.mlflow_experiment
        ),
        kept=f"the predictions in {result.output} are written",
    )
    return code or logged


if __name__ == "__main__":
    sys.exit(main())
