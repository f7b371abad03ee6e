"""What every job's entry point shares: common flags, config resolution, the session's lifetime and
exit codes."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pyspark.sql import SparkSession

from skinspark.config import Loaded, load_config, parse_overrides
from skinspark.errors import ConfigError
from skinspark.images import READERS
from skinspark.manifest import ERROR_KEY, JobResult
from skinspark.precision import PRECISIONS
from skinspark.session import build_session, stop_session
from skinspark.tracking import TrackedRun, TrackingError


def add_common_arguments(
    parser: argparse.ArgumentParser, default_master: str = "local[*]"
) -> argparse.ArgumentParser:
    """`--master`, `--config` and repeatable `--conf key=value`, as every job takes them; `default_master`
    is the master the help names for a run that gives none, neither here nor to spark-submit."""
    parser.add_argument(
        "--master", default=None, help=f"Spark master URL (default: spark-submit's, else {default_master})"
    )
    parser.add_argument(
        "--config", default=None, help="YAML config file (default: the job's file under conf/)"
    )
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, or a Spark setting when KEY starts with 'spark.'; repeatable",
    )
    return parser


def add_reader_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--reader`, the flag of the config key `reader` (ingest and score)."""
    parser.add_argument(
        "--reader",
        choices=READERS,
        help="who reads each file: python (the worker) or spark (the JVM); default auto",
    )
    return parser


def add_precision_argument(parser: argparse.ArgumentParser, computer: str) -> argparse.ArgumentParser:
    """`--precision`, the flag of the config key `precision` (train and score); `computer` names whose CPU
    `auto` looks at ("the rank's", "the worker's")."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=f"float32 or bfloat16 (Keras mixed_bfloat16); auto: bfloat16 where {computer} CPU has the units",
    )
    return parser


def resolve_config(args: argparse.Namespace, cls: type, job: str, flags: Mapping[str, Any]) -> Loaded:
    """Defaults, then the config file, then `--conf`, then explicit flags (those not None).

    Raises:
        ConfigError: an unknown key or a badly typed value, naming the key.
    """
    overrides = parse_overrides(args.conf)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return load_config(cls, args.config, overrides, job=job)


@contextlib.contextmanager
def job_session(app_name: str, master: str | None, conf: Mapping[str, str]) -> Iterator[SparkSession]:
    """Build the job's session and stop it at the end, unless it was already running (a test's)."""
    already_running = SparkSession.getActiveSession() is not None
    spark = build_session(app_name, master, conf)
    try:
        yield spark
    finally:
        if not already_running:
            stop_session(spark)


def flag_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """{name: args.name} for the flags that override config keys of the same name."""
    return {name: getattr(args, name) for name in names}


def run_job(
    args: argparse.Namespace,
    job: str,
    cls: type,
    flags: Mapping[str, Any],
    work: Callable[[SparkSession, Loaded], int],
    input_errors: tuple[type[BaseException], ...],
    run_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """What every job's `main` does around its one library call: resolve the config, build the
    session, call `work(spark, loaded)` and stop the session; a config error or one of `input_errors`
    exits 2 with one line, one of `run_errors` exits 1.

    Returns:
        The exit code: `work`'s own, or the error's.
    """
    try:
        loaded = resolve_config(args, cls, job, flags)
    except ConfigError as error:
        return fail(job, str(error))
    with job_session(f"skinspark-{job}", args.master, loaded.spark) as spark:
        try:
            return work(spark, loaded)
        except input_errors as error:
            return fail(job, str(error))
        except run_errors as error:
            return fail(job, str(error), code=1)


def finish(job: str, result: JobResult, summary: str, label: str) -> int:
    """Print a job's summary, then where its output is (exit 0), or its verdict's error (exit 1)."""
    print(summary)
    if not result.ok:
        return fail(job, result.manifest[ERROR_KEY], code=1)
    print(f"{label}: {result.output}")
    return 0


def add_tracking_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--mlflow URI` and `--mlflow-experiment NAME`, the flags of the config keys `mlflow_tracking_uri`
    and `mlflow_experiment`."""
    parser.add_argument(
        "--mlflow",
        dest="mlflow_tracking_uri",
        metavar="URI",
        help="log the finished run to this MLflow tracking URI (sqlite:///mlflow.db, http://host:5000, ...); "
        "needs the tracking extra: pip install 'skinspark[tracking]'",
    )
    parser.add_argument(
        "--mlflow-experiment", metavar="NAME", help="the MLflow experiment to log into (default skinspark)"
    )
    return parser


def log_run(job: str, log: Callable[[], TrackedRun], kept: str) -> int:
    """Report a finished job's run to MLflow with `log()` and print where it went (exit 0); when that
    fails, one line that says so and what is `kept` (exit 1): the job's own output stands."""
    try:
        tracked = log()
    except TrackingError as error:
        return fail(job, f"{error} ({kept}; only the MLflow run is missing)", code=1)
    print(tracked.summary())
    return 0


def fail(job: str, message: str, code: int = 2) -> int:
    """Print one clear line to stderr and return the exit code."""
    print(f"{job}: error: {message}", file=sys.stderr)
    return code


__all__ = [
    "ConfigError",
    "add_common_arguments",
    "add_precision_argument",
    "add_reader_argument",
    "add_tracking_arguments",
    "fail",
    "finish",
    "flag_values",
    "job_session",
    "log_run",
    "resolve_config",
    "run_job",
]
