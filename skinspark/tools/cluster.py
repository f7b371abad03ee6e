"""Spark's own standalone cluster on this machine, and the three jobs submitted to it.

    python -m skinspark.tools.cluster demo --workers 2 --output cluster-output
    python -m skinspark.tools.cluster demo --output cluster-output --env-archive dist/skinspark-env.tar.gz
    python -m skinspark.tools.cluster jobs --master spark://master:7077 --master-ui http://master:8080 \
        --output DIR

`demo` starts a standalone master and N workers from the installed pyspark (`$SPARK_HOME/bin/spark-class`,
listening on 127.0.0.1 only), waits until every worker has registered, generates a HAM10000-shaped
sample, runs ingest, train and score with `spark-submit --master spark://127.0.0.1:PORT`, prints each
job's wall time and always stops the daemons (also on Ctrl-C or SIGTERM). `jobs` runs the same three
jobs against a master that is already running (the docker compose cluster). `make cluster-demo` runs
`demo`.

Every output lands under `--output`: `data/` (the sample), `table/`, `model/`, `predictions/`, `logs/`
(each daemon's and each job's log), `work/` (the workers' directories, with executor logs) and
`cluster-run.json` (exit code and wall time per job).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from skinspark import schema
from skinspark.session import CONF_DIR, child_environment

LOCALHOST = "127.0.0.1"
JOBS = ("ingest", "train", "score")
# The packed environment's name inside each executor's working directory (the `#environment` suffix).
ARCHIVE_NAME = "environment"
STOP_GRACE_S = 10.0


class ClusterError(RuntimeError):
    """A daemon exited early, or the workers did not register in time."""


@dataclasses.dataclass(frozen=True)
class JobResult:
    name: str
    returncode: int
    seconds: float
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def spark_home() -> Path:
    """`$SPARK_HOME`, or the installed pyspark package, whose `bin/` holds spark-class and spark-submit."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def master_command(home: Path, host: str, port: int, webui_port: int) -> list[str]:
    """The command that runs a standalone master in the foreground (the pip package has no sbin/)."""
    return [
        str(home / "bin" / "spark-class"),
        "org.apache.spark.deploy.master.Master",
        "--host",
        host,
        "--port",
        str(port),
        "--webui-port",
        str(webui_port),
    ]


def worker_command(
    home: Path, master_url: str, host: str, cores: int, memory: str, work_dir: Path, webui_port: int
) -> list[str]:
    """The command that runs a standalone worker offering `cores` and `memory` to `master_url`."""
    return [
        str(home / "bin" / "spark-class"),
        "org.apache.spark.deploy.worker.Worker",
        "--host",
        host,
        "--cores",
        str(cores),
        "--memory",
        memory,
        "--work-dir",
        str(work_dir),
        "--webui-port",
        str(webui_port),
        master_url,
    ]


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


# --------------------------------------------------------------------------------------------------
# Daemons
# --------------------------------------------------------------------------------------------------


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def master_status(ui_url: str, timeout_s: float = 5.0) -> dict:
    """The master's state from its web UI's JSON endpoint (`<ui_url>/json/`)."""
    with urllib.request.urlopen(f"{ui_url.rstrip('/')}/json/", timeout=timeout_s) as response:
        return json.load(response)


def alive_workers(status: Mapping) -> int:
    """How many registered workers the master reports as ALIVE."""
    return sum(1 for worker in status.get("workers", []) if worker.get("state") == "ALIVE")


def wait_for_workers(
    ui_url: str, count: int, timeout_s: float, daemons: Daemons | None = None, interval_s: float = 1.0
) -> dict:
    """Poll the master until `count` workers are ALIVE; return its status.

    Raises:
        ClusterError: a daemon exited, or fewer than `count` workers registered within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    status: dict = {}
    while True:
        if daemons is not None:
            daemons.check_running()
        with contextlib.suppress(OSError, ValueError):  # not listening yet / half-written reply
            status = master_status(ui_url)
            if alive_workers(status) >= count:
                return status
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{alive_workers(status)} of {count} workers registered with the master at {ui_url} "
                f"within {timeout_s:.0f} s"
            )
        time.sleep(interval_s)


class Daemons:
    """Long-running processes, each in its own process group, so that stopping one also stops what it
    started (a worker's executors and their Python workers)."""

    def __init__(self) -> None:
        self._processes: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str]) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,  # its own process group: Ctrl-C here does not reach it
            )
        self._processes[name] = (process, log_path)

    def check_running(self) -> None:
        """Raise ClusterError naming the first daemon that has exited, with its log's last lines."""
        for name, (process, log_path) in self._processes.items():
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise ClusterError(
                    f"{name} exited with code {process.returncode}; last lines of {log_path}:\n"
                    + "\n".join(tail)
                )

    def stop_all(self) -> None:
        """SIGTERM every daemon's process group, then SIGKILL what is left after a grace period."""
        for process, _ in reversed(self._processes.values()):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process, _ in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process, _ in self._processes.values():
            # Executors and Python workers share the group and may outlive the worker's JVM.
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._processes.clear()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@contextlib.contextmanager
def standalone_cluster(
    output: Path, workers: int, cores: int, memory: str, timeout_s: float = 120.0
) -> Iterator[tuple[str, str]]:
    """Start a master and `workers` workers on 127.0.0.1; yield (master URL, web UI URL); stop them all.

    Raises:
        ClusterError: a daemon exited early or the workers did not all register within `timeout_s`.
    """
    home = spark_home()
    port, webui_port = free_port(), free_port()
    master_url, ui_url = f"spark://{LOCALHOST}:{port}", f"http://{LOCALHOST}:{webui_port}"
    # Bind every daemon, and the web UIs, to the loopback interface only.
    env = child_environment({"SPARK_LOCAL_IP": LOCALHOST, "SPARK_HOME": str(home)})
    daemons = Daemons()
    try:
        daemons.start(
            "master", master_command(home, LOCALHOST, port, webui_port), output / "logs/master.log", env
        )
        for index in range(1, workers + 1):
            work_dir = output / "work" / f"worker-{index}"
            work_dir.mkdir(parents=True, exist_ok=True)
            command = worker_command(home, master_url, LOCALHOST, cores, memory, work_dir, free_port())
            daemons.start(f"worker-{index}", command, output / f"logs/worker-{index}.log", env)
        status = wait_for_workers(ui_url, workers, timeout_s, daemons)
        print(
            f"cluster: master {master_url} (UI {ui_url}), {alive_workers(status)} workers, "
            f"{status.get('cores')} cores",
            flush=True,
        )
        yield master_url, ui_url
    finally:
        daemons.stop_all()
        removed = remove_unpacked_archives(output / "work")
        print(f"cluster: master and workers stopped{removed}", flush=True)


def remove_unpacked_archives(work_dir: Path) -> str:
    """Delete the copies of a packed environment that executors unpacked (one per executor and job,
    hundreds of MB each); the executors' logs stay. Returns a note for the console, or ""."""
    unpacked = [path for path in work_dir.glob(f"*/app-*/*/{ARCHIVE_NAME}") if path.is_dir()]
    for path in unpacked:
        shutil.rmtree(path, ignore_errors=True)
    return f"; removed {len(unpacked)} unpacked environment(s) from {work_dir}" if unpacked else ""


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


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
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
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
) -> list[JobResult]:
    """Generate the sample, then submit ingest, train and score in turn; stop at the first failure.

    Returns:
        One JobResult per job that was started, in order.
    """
    from skinspark.tools.synthetic import format_summary, generate

    output.mkdir(parents=True, exist_ok=True)
    print(f"sample: generating {images} HAM10000-shaped images into {output / 'data'}", flush=True)
    print(format_summary(generate(output / "data", images=images, seed=seed, overwrite=True)), flush=True)
    _remove_previous_model(output / "model")
    env = child_environment(extra_env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results: list[JobResult] = []
    for name, job_args in pipeline(output, num_proc, epochs):
        command = submit_command(job_script(name), job_args, master, conf, properties_file, env_archive)
        log_path = output / "logs" / f"{name}.log"
        print(f"\n[{name}] {' '.join(command)}", flush=True)
        started = time.perf_counter()
        returncode = run_logged(command, log_path, env)
        result = JobResult(name, returncode, round(time.perf_counter() - started, 1), str(log_path))
        results.append(result)
        state = "ok" if result.ok else f"FAILED (exit code {returncode}, log {log_path})"
        print(f"[{name}] {state} in {result.seconds:.1f} s", flush=True)
        if not result.ok:
            break
    return results


def _remove_previous_model(model_dir: Path) -> None:
    # The train job refuses a directory with checkpoints unless resuming; this demo starts afresh.
    # Only a directory the train job wrote is removed.
    if (model_dir / "checkpoints").is_dir() or (model_dir / "_manifest.json").is_file():
        shutil.rmtree(model_dir)


def report(results: Sequence[JobResult], master: str, output: Path) -> int:
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


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinspark-cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="start a standalone cluster on 127.0.0.1 and run the jobs on it")
    demo.add_argument("--workers", type=int, default=2, help="standalone workers (default 2)")
    demo.add_argument("--worker-cores", type=int, default=1, help="cores each worker offers (default 1)")
    demo.add_argument("--worker-memory", default="2g", help="memory each worker offers (default 2g)")
    demo.add_argument(
        "--register-timeout", type=float, default=120.0, help="seconds to wait for the workers (default 120)"
    )
    jobs = commands.add_parser("jobs", help="run the jobs on a running master (e.g. the compose cluster)")
    jobs.add_argument("--master", required=True, help="master URL, e.g. spark://master:7077")
    jobs.add_argument("--master-ui", help="the master's web UI; with --workers, wait for them to register")
    jobs.add_argument("--workers", type=int, default=0, help="workers to wait for (default: do not wait)")
    jobs.add_argument(
        "--register-timeout", type=float, default=300.0, help="seconds to wait for the workers (default 300)"
    )
    for command in (demo, jobs):
        command.add_argument("--output", required=True, metavar="DIR", help="where every output goes")
        command.add_argument("--images", type=int, default=1000, help="sample size (default 1,000)")
        command.add_argument("--seed", type=int, default=42)
        command.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
        command.add_argument("--num-proc", type=int, help="Horovod ranks (default: workers x executor cores)")
        command.add_argument(
            "--env-archive",
            metavar="TAR_GZ",
            help="a `make pack` tarball: shipped with --archives, executors run its Python",
        )
        command.add_argument(
            "--properties-file",
            default=str(CONF_DIR / "spark-cluster.conf"),
            help="Spark properties for every job (default conf/spark-cluster.conf)",
        )
        command.add_argument("--executor-cores", type=int, default=1, help="spark.executor.cores (default 1)")
        command.add_argument("--executor-memory", default="1g", help="spark.executor.memory (default 1g)")
        command.add_argument(
            "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting; repeatable"
        )
    return parser


def _spark_conf(args: argparse.Namespace) -> dict[str, str]:
    # Executors sized to fit the workers (the cluster profile's are for real nodes), one core per task.
    conf = {
        "spark.executor.cores": str(args.executor_cores),
        "spark.executor.memory": args.executor_memory,
        "spark.task.cpus": "1",
    }
    for pair in args.conf:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"skinspark-cluster: error: --conf expects KEY=VALUE, got {pair!r}")
        conf[key.strip()] = value.strip()
    return conf


def _raise_on_sigterm(signum, _frame) -> None:
    # Turn SIGTERM into an exception so the `finally` blocks stop the daemons and the running job.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    conf = _spark_conf(args)
    env_archive = str(Path(args.env_archive).resolve()) if args.env_archive else None
    if env_archive and not Path(env_archive).is_file():
        print(f"skinspark-cluster: error: no such archive: {env_archive}", file=sys.stderr)
        return 2
    properties = (
        args.properties_file if args.properties_file and Path(args.properties_file).is_file() else None
    )
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    job_args = dict(
        images=args.images,
        seed=args.seed,
        epochs=args.epochs,
        conf=conf,
        properties_file=properties,
        env_archive=env_archive,
    )
    try:
        if args.command == "demo":
            num_proc = args.num_proc or args.workers * max(1, args.worker_cores // args.executor_cores)
            with standalone_cluster(
                output, args.workers, args.worker_cores, args.worker_memory, args.register_timeout
            ) as (master, _):
                results = run_jobs(
                    master, output, num_proc=num_proc, extra_env={"SPARK_LOCAL_IP": LOCALHOST}, **job_args
                )
        else:
            master = args.master
            if args.master_ui and args.workers:
                wait_for_workers(args.master_ui, args.workers, args.register_timeout)
            num_proc = args.num_proc or max(1, args.workers) * args.executor_cores
            results = run_jobs(master, output, num_proc=num_proc, **job_args)
    except ClusterError as error:
        print(f"skinspark-cluster: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skinspark-cluster: interrupted; daemons stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return report(results, master, output)


if __name__ == "__main__":
    sys.exit(main())
