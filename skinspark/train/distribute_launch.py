"""The tf_distribute backend's launch: N workers as one Spark barrier stage, no Horovod.

The driver (`run_workers`) checks that the application has N free task slots (a barrier stage needs
all of its tasks at once), then runs `rdd.barrier().mapPartitions(_task)` over N partitions. Each task:

1. starts its worker process (`python -m skinspark.train.distribute_backend`, whose docstring says
   why a process of its own), which binds a port and says which;
2. builds TF_CONFIG from `BarrierTaskContext.getTaskInfos()` (its host) and an `allGather` of every
   task's host:port, the task index being the partition id;
3. waits until every worker's MultiWorkerMirroredStrategy is up (another `allGather`), starting new
   workers on new ports when one lost its port to another process, then lets them train;
4. returns its worker's result (worker 0's holds the history and final weights), or its exit code.

Every step that can fail in one task is a value in the next allGather, so no task waits forever for a
peer that has given up. While the stage runs, the driver watches MODEL_DIR/_errors: when a worker has
reported an error (or its watchdog a stall), the driver gives the others a few seconds to report,
cancels the stage and raises TrainError naming the first failure, so that a dead worker ends the job
in bounded time instead of being retried by Spark's barrier-stage resubmission.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cloudpickle
from pyspark.sql import SparkSession

from skinspark import session
from skinspark.train.errors import TrainError, describe_failure

RENDEZVOUS_ATTEMPTS = 3  # workers started anew when one of them lost its port
REPORT_GRACE_S = 10.0  # after the first error report, how long the others get to report theirs
WORKER_RANK_ENV = "SKINSPARK_WORKER_RANK"
_PR_SET_PDEATHSIG = 1


def run_workers(
    spark: SparkSession, plan, num_proc: int, start_timeout_s: int, error_dir: Path
) -> list[dict]:
    """Run the training `plan` on `num_proc` tf.distribute workers (one barrier stage); results in
    worker order.

    Raises:
        TrainError: too few task slots within `start_timeout_s`, or a worker failed or stalled.
    """
    _wait_for_slots(spark, num_proc, start_timeout_s)
    task = functools.partial(_task, cloudpickle.dumps(plan), start_timeout_s)
    context = spark.sparkContext
    stage = context.parallelize(range(num_proc), num_proc).barrier().mapPartitions(task)
    group = f"skinspark-train-{uuid.uuid4().hex[:12]}"
    outcome: dict = {}

    def collect() -> None:
        context.setJobGroup(group, "skinspark tf_distribute training", interruptOnCancel=True)
        try:
            outcome["rows"] = stage.collect()
        except Exception as error:  # noqa: BLE001 - reported below with the workers' own errors
            outcome["error"] = error

    runner = threading.Thread(target=collect, name="skinspark-barrier-stage", daemon=True)
    runner.start()
    first_report = None
    while runner.is_alive():
        runner.join(1.0)
        if first_report is None and any(Path(error_dir).glob("rank-*.json")):
            first_report = time.monotonic()
        if first_report is not None and time.monotonic() - first_report > REPORT_GRACE_S:
            context.cancelJobGroup(group)
            runner.join(60.0)
            break
    results = sorted((cloudpickle.loads(row) for row in outcome.get("rows", [])), key=lambda row: row["rank"])
    exited = next(((str(row["rank"]), str(row["exit_code"])) for row in results if "exit_code" in row), None)
    if exited is None and "error" in outcome:
        exited = lost_task(outcome["error"], error_dir, num_proc)
    if "error" in outcome or exited or first_report is not None or len(results) != num_proc:
        error = outcome.get("error") or RuntimeError(f"{len(results)} of {num_proc} workers returned")
        raise TrainError(describe_failure(error, error_dir, num_proc, start_timeout_s, exited=exited))
    return results


def lost_task(error: BaseException, error_dir: Path, num_proc: int) -> tuple[str, str] | None:
    """(rank, how) of the worker whose Spark task was lost (its executor killed, say), which cannot
    report an error itself: the task Spark names as the barrier stage's failure, else the one rank
    that neither reported nor returned."""
    found = re.search(r"barrier task ResultTask\(\d+, (\d+)\) finished unsuccessfully", str(error))
    if found:
        return found.group(1), "its Spark task was lost"
    reported = {path.stem.removeprefix("rank-") for path in Path(error_dir).glob("rank-*.json")}
    silent = [str(rank) for rank in range(num_proc) if str(rank) not in reported]
    return (silent[0], "its Spark task was lost") if len(silent) == 1 else None


def task_slots(spark: SparkSession) -> int:
    """Tasks the application can run at once now (what a barrier stage needs all of)."""
    try:
        jsc = spark.sparkContext._jsc.sc()
        profile = jsc.resourceProfileManager().defaultResourceProfile()
        return int(jsc.maxNumConcurrentTasks(profile))
    except Exception:  # noqa: BLE001 - an internal API: fall back on the public sizes
        return session.default_parallelism(spark) // session.task_cpus(spark)


def _wait_for_slots(spark: SparkSession, num_proc: int, start_timeout_s: int) -> None:
    deadline = time.monotonic() + start_timeout_s
    while (slots := task_slots(spark)) < num_proc:
        if time.monotonic() > deadline:
            raise TrainError(
                f"the tf_distribute backend needs {num_proc} task slots at once (a barrier stage), but "
                f"the Spark application has {slots} after {start_timeout_s} s: set --num-proc, or give "
                "it more executors or cores"
            )
        time.sleep(1.0)


def _die_with_parent() -> None:
    """In the worker process before exec: be killed when the Spark task's process dies."""
    import contextlib
    import ctypes
    import signal

    # Not Linux (no prctl): the worker's watchdog notices that its parent is gone instead.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _task(plan_bytes: bytes, start_timeout_s: int, _partition):
    """One barrier task: start its worker, rendezvous with the other tasks, wait for it to finish."""
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    host = context.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    with tempfile.TemporaryDirectory(prefix="skinspark-worker-") as scratch:
        plan_path, result_path = os.path.join(scratch, "plan.pkl"), os.path.join(scratch, "result.pkl")
        Path(plan_path).write_bytes(plan_bytes)
        for _ in range(RENDEZVOUS_ATTEMPTS):
            worker = _start_worker(plan_path, result_path, rank)
            try:
                state = _rendezvous(context, worker, rank, host, start_timeout_s)
            except BaseException:
                worker.kill()
                raise
            if state != "retry":
                break
            worker.wait()
        code = worker.wait()
        if code == 0 and os.path.exists(result_path):
            yield Path(result_path).read_bytes()
        elif state == "peer failed":  # this worker was fine: another one did not start
            yield cloudpickle.dumps({"rank": rank, "stopped": True})
        else:
            yield cloudpickle.dumps({"rank": rank, "exit_code": code})


def _start_worker(plan_path: str, result_path: str, rank: int) -> subprocess.Popen:
    env = dict(os.environ)
    env[WORKER_RANK_ENV] = str(rank)  # which worker a process is, for `ps` and tests
    # The worker imports skinspark from wherever this Python worker found it (an installed package,
    # --py-files, a shipped environment).
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "skinspark.train.distribute_backend", plan_path, result_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_die_with_parent,
    )


def _rendezvous(context, worker: subprocess.Popen, rank: int, host: str, timeout_s: float) -> str:
    """TF_CONFIG for every worker and a common start. Returns "go", "retry" (start new workers: a port
    was taken), "failed" (this worker did not start) or "peer failed" (another one did not)."""
    line = _read_line(worker, timeout_s)
    endpoint = f"{host}:{line.split()[1]}" if line.startswith("port ") else "failed"
    endpoints = context.allGather(endpoint)
    if "failed" in endpoints:
        _send(worker, "")
        return "failed" if endpoint == "failed" else "peer failed"
    _send(worker, json.dumps({"cluster": {"worker": endpoints}, "task": {"type": "worker", "index": rank}}))
    line = _read_line(worker, timeout_s)
    state = line if line in ("ready", "retry") else "failed"
    states = context.allGather(state)
    if all(each == "ready" for each in states):
        _send(worker, "go")
        return "go"
    if "failed" not in states:
        worker.kill()
        return "retry"
    _send(worker, "")
    return "failed" if state == "failed" else "peer failed"


def _read_line(worker: subprocess.Popen, timeout_s: float) -> str:
    """The worker's next protocol line, or "" when it exited or said nothing within `timeout_s`."""
    ready, _, _ = select.select([worker.stdout], [], [], timeout_s)
    return worker.stdout.readline().strip() if ready else ""


def _send(worker: subprocess.Popen, line: str) -> None:
    try:
        worker.stdin.write(line + "\n")
        worker.stdin.flush()
    except (BrokenPipeError, OSError):
        pass  # the worker is gone: its exit code says why
