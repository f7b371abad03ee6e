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
import signal
import sys
from pathlib import Path

from skinspark.session import CONF_DIR
from skinspark.tools.cluster.daemons import LOCALHOST, ClusterError, standalone_cluster, wait_for_workers
from skinspark.tools.cluster.runner import report, run_jobs


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
