"""skinspark.tools.cluster and the Spark profiles in conf/: spark-submit command lines, the jobs' arguments,
worker registration, and (marked `cluster`) a real standalone master and workers that are always
stopped."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil
import pytest

from skinspark.entry import ingest as ingest_job
from skinspark.entry import score as score_job
from skinspark.entry import train as train_job
from skinspark.session import CONF_DIR
from skinspark.tools import cluster

PARSERS = {"ingest": ingest_job.args_parser, "train": train_job.args_parser, "score": score_job.args_parser}


def _properties(path: Path) -> dict[str, str]:
    """spark-submit's properties format: `key value` lines; `#` starts a comment."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split(None, 1)
            pairs[key] = value.strip()
    return pairs


def _options(command: list[str]) -> dict[str, str]:
    """The `--conf key=value` pairs of a spark-submit command line."""
    return dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "--conf")


# --------------------------------------------------------------------------------------------------
# conf/ profiles


@pytest.mark.parametrize("name", ["spark-defaults.conf", "spark-cluster.conf"])
def test_every_profile_setting_is_a_spark_key_with_a_comment_above(name):
    lines = (CONF_DIR / name).read_text().splitlines()
    settings = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    assert settings
    for index in settings:
        assert lines[index].split()[0].startswith("spark."), lines[index]
        assert len(lines[index].split(None, 1)) == 2, f"{lines[index]!r} has no value"
        # A comment says what each setting is for: the nearest line above that is not a setting.
        above = next(line for line in reversed(lines[:index]) if not line.startswith("spark."))
        assert above.lstrip().startswith("#"), lines[index]


def test_cluster_profile_keeps_horovods_ranks_together():
    profile = _properties(CONF_DIR / "spark-cluster.conf")
    assert profile["spark.dynamicAllocation.enabled"] == "false"
    assert profile["spark.speculation"] == "false"
    assert profile["spark.python.worker.reuse"] == "true"
    assert int(profile["spark.task.cpus"]) <= int(profile["spark.executor.cores"])
    assert int(profile["spark.sql.execution.arrow.maxRecordsPerBatch"]) > 0
    for key in ("spark.executor.memory", "spark.executor.memoryOverhead"):
        assert profile[key][-1] in "gm" and profile[key][:-1].isdigit()


def test_local_profile_sets_no_master_so_spark_submit_decides():
    profile = _properties(CONF_DIR / "spark-defaults.conf")
    assert "spark.master" not in profile
    assert profile["spark.python.worker.reuse"] == "true"


# --------------------------------------------------------------------------------------------------
# Command lines


def test_pipeline_arguments_are_accepted_by_each_jobs_own_parser(tmp_path):
    steps = cluster.pipeline(tmp_path, num_proc=2, epochs=1)
    assert [name for name, _ in steps] == list(cluster.JOBS)
    parsed = {name: PARSERS[name]().parse_args(arguments) for name, arguments in steps}
    assert parsed["train"].num_proc == 2 and parsed["train"].epochs == 1
    # Each job reads what the one before wrote.
    assert parsed["train"].data == parsed["ingest"].output
    assert parsed["score"].model == [parsed["train"].output]
    assert all(Path(path).is_relative_to(tmp_path / "data") for path in parsed["score"].images)


def test_job_scripts_are_the_jobs_modules_files():
    root = Path(ingest_job.__file__).resolve().parent
    assert [cluster.job_script(name) for name in cluster.JOBS] == [
        str(root / f"{n}.py") for n in cluster.JOBS
    ]


def test_submit_without_an_archive_runs_executors_on_the_drivers_python():
    command = cluster.submit_command(
        "/jobs/ingest.py",
        ["--x", "1"],
        "spark://127.0.0.1:7077",
        {"spark.task.cpus": "1"},
        driver_python="/v/py",
    )
    assert command[1:3] == ["--master", "spark://127.0.0.1:7077"]
    assert command[-3:] == ["/jobs/ingest.py", "--x", "1"]
    options = _options(command)
    assert options["spark.pyspark.python"] == options["spark.pyspark.driver.python"] == "/v/py"
    assert "--archives" not in command


def test_submit_with_an_archive_ships_it_and_keeps_the_driver_on_its_own_python():
    command = cluster.submit_command(
        "/jobs/train.py",
        [],
        "spark://h:1",
        {"spark.executor.memory": "1g"},
        properties_file="/conf/spark-cluster.conf",
        env_archive="/dist/skinspark-env.tar.gz",
        driver_python="/v/py",
    )
    assert command[command.index("--archives") + 1] == "/dist/skinspark-env.tar.gz#environment"
    assert command[command.index("--properties-file") + 1] == "/conf/spark-cluster.conf"
    options = _options(command)
    assert options["spark.pyspark.python"] == "./environment/bin/python"
    assert options["spark.pyspark.driver.python"] == "/v/py"
    assert options["spark.executor.memory"] == "1g"
    # spark-submit's own options come before the script; everything after it goes to the job.
    assert command.index("--archives") < command.index("/jobs/train.py")


def test_submit_conf_overrides_the_python_defaults():
    command = cluster.submit_command("/j.py", [], "spark://h:1", {"spark.pyspark.python": "/other"})
    assert _options(command)["spark.pyspark.python"] == "/other"
    assert command.count("--conf") == len(_options(command))


def test_daemon_commands_use_spark_class_and_the_given_addresses(tmp_path):
    home = Path("/spark")
    master = cluster.master_command(home, "127.0.0.1", 7077, 8080)
    assert master[:2] == ["/spark/bin/spark-class", "org.apache.spark.deploy.master.Master"]
    assert master[master.index("--host") + 1] == "127.0.0.1"
    worker = cluster.worker_command(home, "spark://127.0.0.1:7077", "127.0.0.1", 1, "2g", tmp_path, 8081)
    assert worker[1] == "org.apache.spark.deploy.worker.Worker"
    assert worker[-1] == "spark://127.0.0.1:7077"
    assert worker[worker.index("--cores") + 1] == "1" and worker[worker.index("--memory") + 1] == "2g"
    assert worker[worker.index("--work-dir") + 1] == str(tmp_path)


def test_unpacked_environments_are_removed_but_executor_logs_kept(tmp_path):
    executor = tmp_path / "worker-1" / "app-20260101000000-0000" / "0"
    (executor / "environment" / "bin").mkdir(parents=True)
    (executor / "stderr").write_text("log")
    assert "removed 1" in cluster.remove_unpacked_archives(tmp_path)
    assert not (executor / "environment").exists() and (executor / "stderr").read_text() == "log"
    assert cluster.remove_unpacked_archives(tmp_path) == ""


# --------------------------------------------------------------------------------------------------
# Waiting for workers (a fake master UI on 127.0.0.1)


class _FakeMaster(BaseHTTPRequestHandler):
    states: list[list[str]] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        states = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        body = json.dumps({"status": "ALIVE", "workers": [{"state": state} for state in states]}).encode()
        self.send_response(200 if self.path == "/json/" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_master():
    server = HTTPServer(("127.0.0.1", 0), _FakeMaster)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_for_workers_returns_once_enough_are_alive(fake_master):
    _FakeMaster.states = [[], ["ALIVE"], ["ALIVE", "DEAD"], ["ALIVE", "ALIVE"]]
    status = cluster.wait_for_workers(fake_master, 2, timeout_s=10, interval_s=0.01)
    assert cluster.alive_workers(status) == 2


def test_wait_for_workers_times_out_naming_the_count(fake_master):
    _FakeMaster.states = [["ALIVE", "DEAD"]]
    with pytest.raises(cluster.ClusterError, match="1 of 2 workers"):
        cluster.wait_for_workers(fake_master, 2, timeout_s=0.2, interval_s=0.01)


def test_a_daemon_that_exits_is_reported_with_its_log(tmp_path):
    daemons = cluster.Daemons()
    daemons.start("broken", ["sh", "-c", "echo cannot bind; exit 3"], tmp_path / "broken.log", os.environ)
    try:
        with pytest.raises(cluster.ClusterError, match="(?s)broken exited with code 3.*cannot bind"):
            for _ in range(200):
                daemons.check_running()
                threading.Event().wait(0.05)
    finally:
        daemons.stop_all()


def test_stop_all_kills_the_whole_process_group(tmp_path):
    daemons = cluster.Daemons()
    pid_file = tmp_path / "child.pid"
    # A daemon whose child ignores SIGTERM, like an executor that outlives its worker.
    script = f"sh -c 'trap \"\" TERM; echo $$ > {pid_file}; while true; do sleep 1; done' & wait"
    daemons.start("parent", ["sh", "-c", script], tmp_path / "parent.log", os.environ)
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        threading.Event().wait(0.05)
    child = psutil.Process(int(pid_file.read_text()))
    daemons.stop_all()
    gone, _ = psutil.wait_procs([child], timeout=5)
    assert gone or child.status() == psutil.STATUS_ZOMBIE  # dead; a zombie until something reaps it


# --------------------------------------------------------------------------------------------------
# A real standalone cluster (Java; about 15 s)


@pytest.mark.cluster
def test_standalone_master_and_workers_register_and_are_stopped(tmp_path):
    with cluster.standalone_cluster(tmp_path, workers=2, cores=1, memory="512m", timeout_s=120) as (
        master,
        ui,
    ):
        status = cluster.master_status(ui)
        assert master.startswith("spark://127.0.0.1:")
        assert cluster.alive_workers(status) == 2
        assert status["cores"] == 2
        assert ui.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):
        cluster.master_status(ui, timeout_s=2)
    assert (tmp_path / "logs" / "master.log").is_file()
    assert sorted(path.name for path in (tmp_path / "work").iterdir()) == ["worker-1", "worker-2"]
