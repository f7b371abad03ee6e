"""Spark's own standalone cluster on this machine and the three jobs submitted to it: the daemons
(`daemons`), the job runner (`runner`) and the command line `skinspark-cluster` (`cli`; also
`python -m skinspark.tools.cluster`).
"""

from skinspark.tools.cluster.cli import args_parser, main
from skinspark.tools.cluster.daemons import (
    ARCHIVE_NAME,
    LOCALHOST,
    ClusterError,
    Daemons,
    alive_workers,
    free_port,
    master_command,
    master_status,
    remove_unpacked_archives,
    spark_home,
    standalone_cluster,
    wait_for_workers,
    worker_command,
)
from skinspark.tools.cluster.runner import (
    JOBS,
    SubmittedJob,
    job_script,
    pipeline,
    report,
    run_jobs,
    run_logged,
    submit_command,
)

__all__ = [
    "ARCHIVE_NAME",
    "JOBS",
    "LOCALHOST",
    "ClusterError",
    "Daemons",
    "SubmittedJob",
    "alive_workers",
    "args_parser",
    "free_port",
    "job_script",
    "main",
    "master_command",
    "master_status",
    "pipeline",
    "remove_unpacked_archives",
    "report",
    "run_jobs",
    "run_logged",
    "spark_home",
    "standalone_cluster",
    "submit_command",
    "wait_for_workers",
    "worker_command",
]
