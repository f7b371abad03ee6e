"""The three jobs on Spark's `local-cluster[2,1,2048]` master (two executor JVMs, each with its own Python
workers), compared with the same jobs on the tests' local[2] session, and two faults: an executor killed
during training (the job fails fast, `--resume` finishes it) and one killed during scoring (one row per
file all the same). Marked `cluster`: `make test-cluster` runs them.

A pytest process holds one SparkContext (the session-scoped local[2] one), so the local-cluster runs are
subprocesses: `python -m jobs.<job> ... --master local-cluster[2,1,2048]`, each with its own event log,
which tells which executors ran the tasks and which tasks were lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from jobs import ingest as ingest_job
from jobs import score as score_job
from skinspark import precision, schema
from skinspark.table import EVAL_BATCH_SIZE
from skinspark.tools import cluster
from skinspark.train.distribute_launch import WORKER_RANK_ENV
from tests.conftest import BACKENDS, generated_dataset

pytestmark = pytest.mark.cluster

LOCAL_CLUSTER = "local-cluster[2,1,2048]"
EXECUTORS = {"0", "1"}  # local-cluster[2,...] names its two executors "0" and "1"
IMAGES = 96
SEED = 5
JOB_TIMEOUT_S = 600
# Two ranks, small batches, one epoch: the rest are the job's defaults.
TRAIN_ARGS = ["--num-proc", "2", "--batch-size", "16"]
# How long a training job may take to fail once one of its executors is gone.
FAIL_WITHIN_S = 180
EXECUTOR_CLASS = "CoarseGrainedExecutorBackend"


# --------------------------------------------------------------------------------------------------
# Running a job on local-cluster as a subprocess


def _cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


class Job:
    """`python -m jobs.<name> ARGS --master local-cluster[2,1,2048]` in its own process group, its output
    in `<log_dir>/<name>.log`, its Spark event log in `<log_dir>/<name>-events/`. `stop()` kills what is
    left of it: the group, and any descendant seen that left the group (Horovod's rank processes)."""

    def __init__(self, name: str, args: list[str], log_dir: Path, extra_conf: dict[str, str] | None = None):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.events = log_dir / f"{name}-events"
        self.events.mkdir(parents=True)
        conf = {
            "spark.ui.enabled": "false",
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": self.events.as_uri(),
            # One plain JSON-lines file, as on Spark 3.5 (Spark 4 rolls and compresses by default).
            "spark.eventLog.rolling.enabled": "false",
            "spark.eventLog.compress": "false",
            **(extra_conf or {}),
        }
        module = name.split("-")[0]  # "train-resume" runs jobs.train
        command = [sys.executable, "-m", f"jobs.{module}", *args, "--master", LOCAL_CLUSTER]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYSPARK_GATEWAY")}
        env.update(
            # local-cluster starts each executor from $SPARK_HOME's jars: the pip package's directory.
            SPARK_HOME=str(cluster.spark_home()),
            # The executors' Python workers (and Horovod's ranks) must run this interpreter.
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
        )
        self.started = time.monotonic()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )
        self._seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        """Live descendants of the job's process (remembered, so that `stop` can end orphans too)."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._seen.setdefault(child.pid, child)
        return [process for process in self._seen.values() if process.is_running()]

    def executors(self) -> list[psutil.Process]:
        return [process for process in self.descendants() if EXECUTOR_CLASS in _cmdline(process)]

    def wait(self, timeout_s: float = JOB_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name} ran past {timeout_s:.0f} s; last lines:\n{self.tail()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self) -> None:
        leftovers = self.descendants()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def run(self) -> Job:
        """Wait for the job and fail the test, with its last lines, when it did not exit with 0."""
        try:
            code = self.wait()
        finally:
            self.stop()
        assert code == 0, f"{self.name} exited with {code}; last lines:\n{self.tail()}"
        return self

    def seconds(self) -> float:
        return time.monotonic() - self.started


def _events(job: Job) -> list[dict]:
    """The job's Spark event log (one JSON event per line), written when its application stopped."""
    logs = [path for path in job.events.iterdir() if not path.name.startswith(".")]
    assert len(logs) == 1, f"expected one event log in {job.events}, found {logs}"
    return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


def _task_executors(events: list[dict]) -> set[str]:
    """Executors on which at least one task finished successfully."""
    return {
        event["Task Info"]["Executor ID"]
        for event in events
        if event["Event"] == "SparkListenerTaskEnd" and event["Task End Reason"]["Reason"] == "Success"
    }


def _failed_tasks(events: list[dict]) -> list[str]:
    return [
        event["Task End Reason"]["Reason"]
        for event in events
        if event["Event"] == "SparkListenerTaskEnd" and event["Task End Reason"]["Reason"] != "Success"
    ]


def _wait_for(condition, job: Job, what: str, timeout_s: float = JOB_TIMEOUT_S, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if job.process.poll() is not None:
            pytest.fail(f"{job.name} exited ({job.process.returncode}) before {what}:\n{job.tail()}")
        if time.monotonic() > deadline:
            job.stop()
            pytest.fail(f"no {what} within {timeout_s:.0f} s:\n{job.tail()}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------------------------------
# Data, generated once: the images, the table ingested on local-cluster and on local[2], a model trained
# on local-cluster, and its predictions for every image on local-cluster and on local[2]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster-jobs")


@pytest.fixture(scope="module")
def source(work) -> Path:
    root = work / "data"
    generated_dataset(root, images=IMAGES, seed=SEED, workers=2)
    return root


def _ingest_args(source: Path, output: Path) -> list[str]:
    images = ["--images", str(source), "--metadata", str(source / schema.METADATA_FILE)]
    return [*images, "--output", str(output)]


def _scoring_args(model: Path, source: Path, output: Path, batch_size: int = 8) -> list[str]:
    paths = ["--model", str(model), "--images", str(source), "--output", str(output)]
    return [*paths, "--batch-size", str(batch_size)]


@pytest.fixture(scope="module")
def cluster_ingest(source, work) -> tuple[Path, Job]:
    job = Job("ingest", _ingest_args(source, work / "cluster-table"), work / "logs").run()
    return work / "cluster-table", job


@pytest.fixture(scope="module")
def local_table(spark, source, work) -> Path:
    assert ingest_job.main(_ingest_args(source, work / "local-table")) == 0
    return work / "local-table"


@pytest.fixture(scope="module")
def cluster_training(cluster_ingest, work) -> tuple[Path, Job]:
    table, _ = cluster_ingest
    model = work / "model"
    args = ["--data", str(table), "--output", str(model), "--epochs", "1", *TRAIN_ARGS]
    return model, Job("train", args, work / "logs").run()


@pytest.fixture(scope="module")
def cluster_scores(cluster_training, source, work) -> tuple[Path, Job]:
    model, _ = cluster_training
    output = work / "cluster-scores"
    args = [*_scoring_args(model, source, output), "--conf", "chunk_files=30"]
    return output, Job("score", args, work / "logs").run()


@pytest.fixture(scope="module")
def local_scores(spark, cluster_training, source, work) -> Path:
    model, _ = cluster_training
    output = work / "local-scores"
    assert score_job.main([*_scoring_args(model, source, output), "--conf", "chunk_files=30"]) == 0
    return output


def _table_rows(table: Path) -> pd.DataFrame:
    """Every row of an ingested table with its split, the pixels as a hash, sorted by image_id."""
    frame = pq.read_table(table).to_pandas()
    frame[schema.SPLIT] = frame[schema.SPLIT].astype(str)
    frame["pixels_sha1"] = frame.pop(schema.IMAGE).map(lambda raw: hashlib.sha1(raw).hexdigest())
    return frame.sort_values(schema.IMAGE_ID).reset_index(drop=True)


def _all_images(source: Path) -> set[str]:
    return {f"file:{path}" for path in source.rglob("*.jpg")}


def _probabilities(output: Path) -> pd.DataFrame:
    rows = pd.read_parquet(output)
    assert rows["path"].is_unique
    return rows.set_index("path").sort_index()


# --------------------------------------------------------------------------------------------------
# The same outputs as on local[2]


def test_ingest_on_local_cluster_gives_the_local_table(cluster_ingest, local_table):
    table, job = cluster_ingest
    # Both executors decoded images: the job really ran in two JVMs with their own Python workers.
    assert _task_executors(_events(job)) == EXECUTORS
    cluster_rows, local_rows = _table_rows(table), _table_rows(local_table)
    assert len(cluster_rows) == IMAGES
    # Same rows, splits, labels and pixels, column for column (source_path included).
    pd.testing.assert_frame_equal(cluster_rows[local_rows.columns], local_rows)
    manifests = [json.loads((path / "_manifest.json").read_text()) for path in (table, local_table)]
    assert manifests[0]["counts"] == manifests[1]["counts"]
    assert manifests[0]["counts"]["files"]["quarantined"] == 0
    assert manifests[0]["image_shape"] == manifests[1]["image_shape"] == [75, 100, 3]


def test_training_on_local_cluster_saves_the_model_it_trained(
    cluster_ingest, cluster_training, model_artifacts
):
    from skinspark.model_dir import load_model
    from skinspark.train import read_split

    table, _ = cluster_ingest
    model, job = cluster_training
    # One Horovod rank per executor: each of the two executors ran one of the job's two tasks.
    events = _events(job)
    assert _task_executors(events) == EXECUTORS and not _failed_tasks(events)
    assert {path.name for path in model.iterdir()} >= model_artifacts
    manifest = json.loads((model / "_manifest.json").read_text())
    rows = manifest["rows"]
    steps = math.ceil(rows["train"] / (16 * 2))
    assert (manifest["num_proc"], manifest["epochs_trained"], manifest["steps_per_epoch"]) == (2, 1, steps)
    assert [rank["batches"] for rank in manifest["ranks"]] == [steps, steps]
    assert pd.read_csv(model / "history.csv")["epoch"].tolist() == [1]
    assert sorted(path.name for path in (model / "checkpoints").iterdir()) == ["epoch-0001"]
    # test_predictions.csv holds what the in-memory model (rank 0's weights, on the driver) predicted,
    # in the driver's precision; the saved model.keras in that precision predicts the same.
    predictions = pd.read_csv(model / "test_predictions.csv")
    test = read_split(f"file://{table}/split=test", 75, 100)
    assert len(test["image_id"]) == rows["test"] > 0
    assert predictions["image_id"].tolist() == test["image_id"].tolist()
    evaluated = precision.in_precision(load_model(str(model)), manifest["precision"]["evaluated_in"])
    reloaded = evaluated.predict(test["image"], batch_size=EVAL_BATCH_SIZE, verbose=0)
    np.testing.assert_allclose(reloaded, predictions[list(schema.PROB_COLUMNS)].to_numpy(), atol=1e-6)
    assert json.loads((model / "metrics.json").read_text())["images"] == rows["test"]


def test_scoring_on_local_cluster_predicts_what_local_scoring_does(cluster_scores, local_scores, source):
    output, job = cluster_scores
    assert _task_executors(_events(job)) == EXECUTORS
    on_cluster, on_local = _probabilities(output), _probabilities(local_scores)
    assert set(on_cluster.index) == set(on_local.index) == _all_images(source)  # one row per file
    assert on_cluster["error"].isna().all()
    probabilities = list(schema.PROB_COLUMNS)
    np.testing.assert_allclose(on_cluster[probabilities], on_local[probabilities], atol=1e-5)
    assert on_cluster["predicted_label"].tolist() == on_local["predicted_label"].tolist()
    assert on_cluster["model_id"].nunique() == 1 and on_cluster["model_id"].equals(on_local["model_id"])
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["chunks"] == math.ceil(IMAGES / 30)
    workers = manifest["run"]["workers"]
    # One Python worker per executor at least, and the model loaded once in each.
    assert workers["python_processes"] >= 2 and workers["model_loads"] == workers["python_processes"]


# --------------------------------------------------------------------------------------------------
# Faults


def _is_rank(process: psutil.Process, backend: str, rank: int) -> bool:
    """Whether `process` is the backend's rank `rank`: Horovod's `gloo_exec_fn` (HOROVOD_RANK) or a
    tf_distribute worker (`skinspark.train.distribute`, SKINSPARK_WORKER_RANK)."""
    marker, variable = ("gloo_exec_fn", "HOROVOD_RANK")
    if backend == "tf_distribute":
        marker, variable = ("skinspark.train.distribute", WORKER_RANK_ENV)
    with contextlib.suppress(psutil.Error):
        return marker in _cmdline(process) and process.environ().get(variable) == str(rank)
    return False


def _rank_executor(job: Job, backend: str, rank: int) -> psutil.Process:
    """The executor JVM whose Python worker runs rank `rank` of `backend`."""
    executors = {process.pid: process for process in job.executors()}
    for process in job.descendants():
        if _is_rank(process, backend, rank):
            with contextlib.suppress(psutil.Error):
                for parent in process.parents():
                    if parent.pid in executors:
                        return executors[parent.pid]
    processes = [_cmdline(process) for process in job.descendants()]
    raise AssertionError(f"no executor runs rank {rank}; processes: {processes}")


def _forked_python_worker(executor: psutil.Process) -> bool:
    """Whether the executor's pyspark.daemon has forked a Python worker (which runs tasks)."""
    with contextlib.suppress(psutil.Error):
        for child in executor.children(recursive=True):
            parent = child.parent()
            if parent is not None and all("pyspark.daemon" in _cmdline(p) for p in (child, parent)):
                return True
    return False


def _error_lines(job: Job, name: str) -> list[str]:
    return [line for line in job.output().splitlines() if line.startswith(f"{name}: error:")]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_executor_fails_training_fast_and_resume_finishes_it(
    backend, cluster_ingest, work, model_artifacts
):
    from skinspark.train import latest_checkpoint

    table, _ = cluster_ingest
    model = work / f"killed-model-{backend}"
    args = ["--data", str(table), "--output", str(model), *TRAIN_ARGS, "--backend", backend]
    args += ["--conf", "stall_timeout_s=60"]
    job = Job(f"train-killed-{backend}", [*args, "--epochs", "30"], work / "logs")
    try:
        _wait_for(lambda: (model / "checkpoints" / "epoch-0001").is_dir(), job, "first epoch's checkpoint")
        victim = _rank_executor(job, backend, 1)
        ranks = [
            process
            for process in job.descendants()
            if _is_rank(process, backend, 0) or _is_rank(process, backend, 1)
        ]
        victim.kill()
        killed = time.monotonic()
        code = job.wait(FAIL_WITHIN_S + 120)
        failed_after = time.monotonic() - killed
        # Nothing of the job outlives it: no rank process keeps training alone.
        _, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive, [_cmdline(process) for process in alive]
    finally:
        job.stop()
    errors = _error_lines(job, "train")
    # What the fault did (shown with `pytest -rP`).
    print(f"[train fault, {backend}] failed {failed_after:.1f} s after the kill, exit code {code}: {errors}")
    assert code == 1 and failed_after < FAIL_WITHIN_S
    assert len(errors) == 1, job.tail()
    # The killed rank is named as the cause, not the rank that only saw its peer go.
    assert errors[0].startswith("train: error: training failed: rank 1 exited"), errors[0]
    assert not (model / "_manifest.json").exists()

    epoch, _, state = latest_checkpoint(model / "checkpoints")
    assert 1 <= epoch < 30
    resumed = Job(
        f"train-resume-{backend}", [*args, "--epochs", str(epoch + 1), "--resume"], work / "logs"
    ).run()
    manifest = json.loads((model / "_manifest.json").read_text())
    # The resumed run is a whole run: its two ranks ran on the two executors, with every artifact.
    assert _task_executors(_events(resumed)) == EXECUTORS and manifest["backend"] == backend
    assert {path.name for path in model.iterdir()} >= model_artifacts
    print(
        f"[train fault, {backend}] resumed after epoch {epoch}: "
        f"epoch {epoch + 1} in {resumed.seconds():.0f} s"
    )
    assert manifest["initial_epoch"] == epoch and manifest["epochs"] == epoch + 1
    assert manifest["epochs_trained"] == 1
    history = pd.read_csv(model / "history.csv")
    assert history["epoch"].tolist() == list(range(1, epoch + 2))
    # The epochs before the kill are the killed run's, as its checkpoint recorded them, not retrained.
    before = pd.DataFrame(state["history"])[history.columns]
    pd.testing.assert_frame_equal(history.iloc[:epoch].reset_index(drop=True), before, check_dtype=False)


@pytest.mark.timeout(1200)
def test_a_killed_executor_during_scoring_still_gives_one_row_per_file(
    cluster_training, local_scores, source, work
):
    model, _ = cluster_training
    output = work / "killed-scores"
    # Small batches and chunks: 8 chunks of several tasks each, so that the kill lands mid-way.
    args = [*_scoring_args(model, source, output, batch_size=4), "--conf", "chunk_files=12"]
    job = Job("score-killed", args, work / "logs")

    def scoring_on_both_executors() -> bool:
        # A Python worker forked by an executor's pyspark.daemon exists once that executor runs the first
        # chunk's pandas UDF (planning runs in the JVM only); it then imports TensorFlow and loads the model.
        executors = job.executors()
        return len(executors) == 2 and all(_forked_python_worker(executor) for executor in executors)

    try:
        _wait_for(scoring_on_both_executors, job, "Python workers on both executors")
        job.executors()[0].kill()
        code = job.wait()
    finally:
        job.stop()
    events = _events(job)
    lost = [reason for reason in _failed_tasks(events) if reason == "ExecutorLostFailure"]
    removed = [event for event in events if event["Event"] == "SparkListenerExecutorRemoved"]
    recovery = "Spark's task retries"
    if code != 0:  # the job did not survive the kill: --mode resume must finish the output
        recovery = "--mode resume"
        Job("score-resume", [*args, "--mode", "resume"], work / "logs").run()
    rows = pd.read_parquet(output)
    print(
        f"[score fault] exit code {code}, {len(lost)} task(s) lost with the executor, recovered by "
        f"{recovery}: {len(rows)} rows, {rows['path'].nunique()} distinct paths"
    )
    assert removed and lost, "the kill did not hit running tasks"
    assert len(rows) == IMAGES and rows["path"].is_unique  # no duplicates
    assert set(rows["path"]) == _all_images(source)  # no gaps
    assert rows["error"].isna().all()
    recovered, expected = rows.set_index("path").sort_index(), _probabilities(local_scores)
    probabilities = list(schema.PROB_COLUMNS)
    np.testing.assert_allclose(recovered[probabilities], expected[probabilities], atol=1e-5)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["rows"] == manifest["counts"]["distinct_paths"] == IMAGES
