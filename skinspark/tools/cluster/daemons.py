"""Spark's own standalone master and workers on this machine, each daemon in its own process group, started,
waited for until every worker has registered, and stopped (with what they started)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from skinspark.session import child_environment

LOCALHOST = "127.0.0.1"
# The packed environment's name inside each executor's working directory (the `#environment` suffix).
ARCHIVE_NAME = "environment"
STOP_GRACE_S = 10.0


class ClusterError(RuntimeError):
    """A daemon exited early, or the workers did not register in time."""


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
            signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process, _ in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process, _ in self._processes.values():
            # Executors and Python workers share the group and may outlive the worker's JVM.
            signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._processes.clear()


def signal_group(process: subprocess.Popen, sig: int) -> None:
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
