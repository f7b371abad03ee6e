"""The one session builder: worker interpreter, master handling, settings."""

from __future__ import annotations

import os
import sys

from skinspark.session import build_session


def test_workers_run_this_interpreter(spark):
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    executables = (
        spark.sparkContext.parallelize(range(2), 2).map(lambda _: __import__("sys").executable).collect()
    )
    assert set(executables) == {sys.executable}
    # The workers can import the stack because they run the venv's interpreter.
    versions = (
        spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("pyarrow").__version__).collect()
    )
    assert versions == [__import__("pyarrow").__version__]  # the driver's own, on either stack


def test_builder_reuses_the_active_session_and_applies_runtime_conf(spark):
    again = build_session("another-name", conf={"spark.sql.shuffle.partitions": "3"})
    assert again is spark or again.sparkContext is spark.sparkContext
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    spark.conf.set("spark.sql.shuffle.partitions", "4")


def test_defaults_enable_arrow_and_utc(spark):
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.sparkContext.master == "local[2]"
