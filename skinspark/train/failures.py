"""The Horovod launch: the ranks' environment and `horovod.spark.run`, which turns a failed rank into a
TrainError naming it instead of a hang."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from skinspark.train.errors import TrainError, describe_failure

if TYPE_CHECKING:
    from skinspark.train.worker import RankPlan

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

    from skinspark.train.worker import train_worker

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
