"""The one SparkSession builder used by every job and by the tests."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from pyspark.sql import SparkSession

# The job defaults (<job>.yaml), the quiet log4j2.properties and the Spark profiles: package data, so a wheel
# carries them; the checkout's top-level conf/ is a link to this folder for spark-submit and SPARK_CONF_DIR.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def build_session(
    app_name: str, master: str | None = None, conf: Mapping[str, str] | None = None
) -> SparkSession:
    """Build (or reuse) a SparkSession.

    Args:
        app_name: the application name shown in Spark's UI and logs.
        master: a Spark master URL. Set only when given, so `spark-submit --master` wins otherwise;
            with neither, Spark's default applies (`local[*]` when run with plain `python`).
        conf: extra Spark settings, applied after the defaults below.

    Returns:
        The active SparkSession.
    """
    # Spark's Python workers must run this interpreter, or they cannot import pandas, Horovod or
    # TensorFlow. PySpark reads the worker interpreter from PYSPARK_PYTHON when the context starts
    # (spark.pyspark.python only takes effect through spark-submit), so set it unless the user did.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    log4j = CONF_DIR / "log4j2.properties"
    if log4j.is_file() and "SPARK_SUBMIT_OPTS" not in os.environ and not _inside_spark_submit():
        # A quiet default log; spark-submit users pass their own with --driver-java-options.
        os.environ["SPARK_SUBMIT_OPTS"] = f"-Dlog4j2.configurationFile=file:{log4j}"
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    defaults = {
        # Arrow moves pandas batches between the JVM and Python workers (mapInPandas, pandas UDFs).
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        # Let adaptive execution shrink shuffles inside cached plans too (Spark 4's default); without
        # it a cached frame keeps spark.sql.shuffle.partitions (200) tiny tasks.
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
    }
    for key, value in {**defaults, **dict(conf or {})}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def stop_session(spark: SparkSession) -> None:
    """Stop the session so that the process can end, barrier stages or not.

    On Spark 3.5, a JVM that ran a barrier task keeps a non-daemon timer thread
    (BarrierTaskContext's "Barrier task timer for barrier() calls.", made a daemon in Spark 4 by
    SPARK-46895), so a `local[*]` driver, whose JVM runs the tasks, never exits after spark-submit;
    executors are ended by their backends and are not affected. The timer is cancelled here, at the
    end of the application, since a cancelled timer fails any later barrier() call in the JVM.
    """
    with contextlib.suppress(Exception):  # a JVM without the class or the field: nothing to cancel
        companion = getattr(spark.sparkContext._jvm.org.apache.spark, "BarrierTaskContext$")
        timer = getattr(getattr(companion, "MODULE$"), "org$apache$spark$BarrierTaskContext$$timer")()
        timer.cancel()
    spark.stop()


def master_or_default(master: str | None, default: str) -> str | None:
    """The master for `build_session`: `master` when given; else None when Spark's launcher names one
    (the driver runs under spark-submit, whose `--master`, properties file or own default is then in the
    JVM's `spark.master`; `--master` in PYSPARK_SUBMIT_ARGS; the MASTER variable), so that it wins;
    else `default`."""
    if master:
        return master
    submit_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "").split()
    if _inside_spark_submit() or "--master" in submit_args or os.environ.get("MASTER"):
        return None
    return default


def _inside_spark_submit() -> bool:
    """True when the JVM was already launched by spark-submit (its options can no longer change)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def task_cpus(spark: SparkSession) -> int:
    """Cores per task (`spark.task.cpus`), which sizes TensorFlow's thread pools in workers."""
    return int(spark.conf.get("spark.task.cpus", "1"))


def default_parallelism(spark: SparkSession) -> int:
    """The number of task slots Spark reports for the application."""
    return int(spark.sparkContext.defaultParallelism)


@contextlib.contextmanager
def query_settings(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set Spark SQL settings for the queries run inside the block, then restore the old values.

    File partitioning and Arrow batch sizes are read when a query is planned and run, so the block must
    hold the action (a write, a collect), not only the DataFrame's construction.
    """
    old = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, str(value))
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


# What spark-submit (and a running PySpark driver) puts in the environment for its own Python process.
_DRIVER_ONLY_VARIABLES = (
    "PYSPARK_GATEWAY_PORT",
    "PYSPARK_GATEWAY_SECRET",
    "PYSPARK_DRIVER_CONN_INFO_PATH",
    "SPARK_AUTH_SOCKET_TIMEOUT",
    "SPARK_BUFFER_SIZE",
)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a job started as a child process of a Spark driver.

    A child that inherits the driver's PySpark gateway variables connects to the parent's JVM instead
    of starting its own, and fails; everything else (PATH, SPARK_HOME, PYSPARK_PYTHON) passes through.
    """
    env = {key: value for key, value in os.environ.items() if key not in _DRIVER_ONLY_VARIABLES}
    env.update(extra or {})
    return env
