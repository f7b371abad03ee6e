"""Benchmark skinspark's jobs against plain baselines in one run and write the figures as JSON.

    spark-submit --master 'local[2]' jobs/benchmark.py --work bench-output --images 10015

Generates a HAM10000-shaped dataset (or reuses `--data DIR`), then times each path and its baselines
side by side. Also `python jobs/benchmark.py ...` and the console script `skinspark-benchmark`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from skinspark import benchmark
from skinspark.cli import ConfigError, add_common_arguments, fail, job_session, resolve_config
from skinspark.config import IngestConfig
from skinspark.synthetic import generate
from skinspark.versions import package_versions


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-output", help="working directory for data and outputs")
    parser.add_argument("--data", default=None, help="an existing HAM10000-shaped dataset to reuse")
    parser.add_argument("--images", type=int, default=10015, help="images to generate (default 10,015)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=None, help="JSON file (default WORK/benchmark.json)")
    return add_common_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    try:
        loaded = resolve_config(args, IngestConfig, "ingest", {})
    except ConfigError as error:
        return fail("benchmark", str(error))
    work = Path(args.work).resolve()
    data = Path(args.data).resolve() if args.data else work / "data"
    if not args.data and not (data / "HAM10000_metadata.csv").exists():
        generate(data, images=args.images, seed=args.seed)
    results = {"versions": package_versions()}
    with job_session("skinspark-benchmark", args.master or "local[2]", loaded.spark) as spark:
        results["ingest"] = benchmark.bench_ingest(spark, data, work, loaded.job)
    output = Path(args.output) if args.output else work / "benchmark.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(json.dumps({key: value for key, value in results.items() if key != "versions"}, indent=2))
    print(f"figures: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
