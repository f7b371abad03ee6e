"""The three jobs submitted to a running master in turn: their arguments, their spark-submit command lines,
each one's output echoed and logged, and the run's summary (`cluster-run.json`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from skinspark import schema
from skinspark.manifest import MANIFEST_FILE
from skinspark.session import CONF_DIR, child_environment
from skinspark.tools.cluster.daemons import ARCHIVE_NAME, STOP_GRACE_S, ClusterError, signal_group, spark_home

JOBS = ("ingest", "train", "score")


@dataclasses.dataclass(frozen=True)
class SubmittedJob:
    """One spark-submit run of a job: the job's name, spark-submit's exit code, its wall time in
    seconds and the file its output was logged to. (What a job itself returns is
    `skinspark.manifest.JobResult`.)"""

    name: str
    returncode: int
    seconds: float
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def job_script(job: str) -> str:
    """The file spark-submit runs for `job`: `skinspark/entry/<job>.py` as installed (editable checkout,
    wheel or packed environment; a wheel has no `jobs/`).

    Found without importing it: importing a job imports TensorFlow.
    """
    spec = importlib.util.find_spec(f"skinspark.entry.{job}")
    if spec is None or spec.origin is None:
        raise ClusterError(f"cannot find the job module skinspark.entry.{job}: is skinspark installed?")
    return str(Path(spec.origin).resolve())


def pipeline(output: Path, num_proc: int, epochs: int) -> list[tuple[str, list[str]]]:
    """The three jobs' arguments: ingest the sample, train on the table, score the sample's images."""
    data = output / "data"
    return [
        (
            "ingest",
            [
                "--images",
                *[str(data / folder) for folder in schema.IMAGE_FOLDERS],
                "--metadata",
                str(data / schema.METADATA_FILE),
                "--output",
                str(output / "table"),
            ],
        ),
        (
            "train",
            [
                "--data",
                str(output / "table"),
                "--output",
                str(output / "model"),
                "--num-proc",
                str(num_proc),
                "--epochs",
                str(epochs),
            ],
        ),
        (
            "score",
            [
                "--model",
                str(output / "model"),
                "--images",
                *[str(data / folder) for folder in schema.IMAGE_FOLDERS],
                "--output",
                str(output / "predictions"),
            ],
        ),
    ]


def submit_command(
    script: str,
    job_args: Sequence[str],
    master: str,
    conf: Mapping[str, str],
    properties_file: str | None = None,
    env_archive: str | None = None,
    driver_python: str = sys.executable,
) -> list[str]:
    """A `spark-submit` command line for one job in client mode.

    With `env_archive` (a `make pack` tarball) Spark unpacks it as `./environment` in every executor's
    working directory and the executors' Python workers run `./environment/bin/python`; the driver,
    which runs here (client mode), keeps `driver_python`. Without it, executors run `driver_python`,
    which then has to exist at the same path on every worker (true on one machine and in the image).
    `conf` is applied last, so it wins over the properties file.
    """
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", master]
    if properties_file:
        command += ["--properties-file", properties_file]
    log4j = CONF_DIR / "log4j2.properties"
    if log4j.is_file():
        command += ["--driver-java-options", f"-Dlog4j2.configurationFile=file:{log4j}"]
    settings = {"spark.pyspark.driver.python": driver_python}
    if env_archive:
        command += ["--archives", f"{env_archive}#{ARCHIVE_NAME}"]
        settings["spark.pyspark.python"] = f"./{ARCHIVE_NAME}/bin/python"
    else:
        settings["spark.pyspark.python"] = driver_python
    settings.update(conf)
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, script, *job_args]


def run_logged(command: Sequence[str], log_path: Path, env: Mapping[str, str]) -> int:
    """Run `command`, echoing its output to stdout and to `log_path`; return its exit code.

    The child runs in its own process group, which is killed if this process is interrupted.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            return process.wait()
        finally:
            if process.poll() is None:
                signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    signal_group(process, signal.SIGKILL)
                    process.wait()


def run_jobs(
    master: str,
    output: Path,
    *,
    images: int,
    seed: int,
    num_proc: int,
    epochs: int,
    conf: Mapping[str, str],
    properties_file: str | None,
    env_archive: str | None,
    extra_env: Mapping[str, str] | None = None,
) -> list[SubmittedJob]:
    """Generate the sample, then submit ingest, train and score in turn; stop at the first failure.

    Returns:
        One SubmittedJob per job that was started, in order.
    """
    from skinspark.tools.synthetic import format_summary, generate

    output.mkdir(parents=True, exist_ok=True)
    print(f"sample: generating {images} HAM10000-shaped images into {output / 'data'}", flush=True)
    print(format_summary(generate(output / "data", images=images, seed=seed, overwrite=True)), flush=True)
    _remove_previous_model(output / "model")
    env = child_environment(extra_env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results: list[SubmittedJob] = []
    for name, job_args in pipeline(output, num_proc, epochs):
        command = submit_command(job_script(name), job_args, master, conf, properties_file, env_archive)
        log_path = output / "logs" / f"{name}.log"
        print(f"\n[{name}] {' '.join(command)}", flush=True)
        started = time.perf_counter()
        returncode = run_logged(command, log_path, env)
        result = SubmittedJob(name, returncode, round(time.perf_counter() - started, 1), str(log_path))
        results.append(result)
        state = "ok" if result.ok else f"FAILED (exit code {returncode}, log {log_path})"
        print(f"[{name}] {state} in {result.seconds:.1f} s", flush=True)
        if not result.ok:
            break
    return results


def _remove_previous_model(model_dir: Path) -> None:
    # The train job refuses a directory with checkpoints unless resuming; this demo starts afresh.
    # Only a directory the train job wrote is removed.
    if (model_dir / "checkpoints").is_dir() or (model_dir / MANIFEST_FILE).is_file():
        shutil.rmtree(model_dir)


def report(results: Sequence[SubmittedJob], master: str, output: Path) -> int:
    """Print the per-job summary, write `cluster-run.json`; return the exit code (0: all three ran)."""
    print("\njob      result   wall time")
    for result in results:
        print(f"{result.name:<8} {'ok' if result.ok else 'failed':<8} {result.seconds:8.1f} s")
    for name in JOBS[len(results) :]:
        print(f"{name:<8} {'not run':<8}")
    summary = {
        "master": master,
        "jobs": [dataclasses.asdict(result) for result in results],
        "ok": len(results) == len(JOBS) and all(result.ok for result in results),
    }
    (output / "cluster-run.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["ok"]:
        return 0
    failed = [result for result in results if not result.ok]
    return (failed[0].returncode or 1) if failed else 1
