"""Benchmark skinspark's jobs against plain baselines in one run and write the figures as JSON.

    spark-submit --master 'local[2]' jobs/benchmark.py --work bench-output --images 10015
    spark-submit --master 'local[2]' jobs/benchmark.py --work bench-output --sections learning

Generates a HAM10000-shaped dataset (or reuses `--data DIR`), then times each path and its baselines
side by side. Sections: `ingest`, `train` (an epoch of the training job on each
installed backend, horovod and tf_distribute, against Keras `fit` on in-memory arrays, in float32 and in
bfloat16), `score` (the scoring job against a thread-pool process
and Spark's `predict_batch_udf`, in both precisions, and how far their predictions agree), `export` (the
TensorFlow Lite exports of the score section's model and the scoring job run with each), `learning`
(the paper's 25 epochs split by lesion, by image, and after oversampling before the split; about an
hour on 2 cores, so not in the default set; `--protocols` runs some of them, and the by-image
protocols' test figures are taken apart by whether a photograph of the lesion was trained on) and
`learning_precision` (the lesion split's 25 epochs in float32 and in bfloat16), `archives` (ingest and
scoring from the two part zips, stored and deflated, against the part folders; scoring of the images as
DICOM against the JPEGs; planning, scoring rate and peak memory of one zip of `--archive-members`
small members). Figures of earlier
runs in the same JSON file are kept; a section run again replaces its own. Also `python
jobs/benchmark.py ...` and the console script `skinspark-benchmark`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from skinspark.cli import ConfigError, add_common_arguments, fail, job_session, parse_overrides
from skinspark.config import IngestConfig, ScoreConfig, TrainConfig, load_config
from skinspark.tools import benchmark, benchmark_archives, benchmark_export, learning
from skinspark.tools.synthetic import generate
from skinspark.versions import package_versions

SECTIONS = ("ingest", "train", "score", "export", "learning", "learning_precision", "archives")
DEFAULT_SECTIONS = "ingest,train,score"


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-output", help="working directory for data and outputs")
    parser.add_argument("--data", default=None, help="an existing HAM10000-shaped dataset to reuse")
    parser.add_argument("--images", type=int, default=10015, help="images to generate (default 10,015)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--sections", default=DEFAULT_SECTIONS, help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--epochs", type=int, default=None, help="learning: epochs (default: train.yaml's)")
    parser.add_argument(
        "--protocols",
        default=",".join(learning.LEARNING_PROTOCOLS),
        help=f"learning: comma-separated, of {', '.join(learning.LEARNING_PROTOCOLS)} (and split_by_lesion)",
    )
    parser.add_argument(
        "--archive-files", type=int, default=50000, help="score: the large archive for the memory check"
    )
    parser.add_argument(
        "--archive-members", type=int, default=200_000, help="archives: members of the large zip"
    )
    parser.add_argument("--rounds", type=int, default=3, help="archives: alternating rounds of each form")
    parser.add_argument("--output", default=None, help="JSON file (default WORK/benchmark.json)")
    return add_common_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        return fail("benchmark", f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.config:
        return fail("benchmark", "--config is per job; give settings with --conf key=value")
    protocols = {name.strip() for name in args.protocols.split(",") if name.strip()} | {"split_by_lesion"}
    if unknown := sorted(protocols - set(learning.LEARNING_PROTOCOLS)):
        known = ", ".join(learning.LEARNING_PROTOCOLS)
        return fail("benchmark", f"unknown protocol(s) {unknown}; choose from {known}")
    try:
        # --config/--conf apply to every job's config; a key must exist in at least one of them.
        overrides = parse_overrides(args.conf)
        configs = {
            name: load_config(cls, None, _known(cls, overrides), job=name)
            for name, cls in (("ingest", IngestConfig), ("train", TrainConfig), ("score", ScoreConfig))
        }
        _check_known(overrides)
    except ConfigError as error:
        return fail("benchmark", str(error))
    work = Path(args.work).resolve()
    data = Path(args.data).resolve() if args.data else work / "data"
    if not args.data and not (data / "HAM10000_metadata.csv").exists():
        generate(data, images=args.images, seed=args.seed, overwrite=True)
    output = Path(args.output) if args.output else work / "benchmark.json"
    results = json.loads(output.read_text()) if output.exists() else {}
    results["versions"] = package_versions()
    spark_conf = {key: value for loaded in configs.values() for key, value in loaded.spark.items()}
    with job_session("skinspark-benchmark", args.master or "local[2]", spark_conf) as spark:
        for section in sections:
            if section == "ingest":
                results["ingest"] = benchmark.bench_ingest(spark, data, work, configs["ingest"].job)
            elif section == "train":
                results["train"] = benchmark.bench_train_throughput(
                    spark, data, work, configs["ingest"].job, configs["train"].job
                )
            elif section == "export":
                results["export"] = benchmark_export.bench_export(
                    spark, data, work, configs["ingest"].job, configs["train"].job, configs["score"].job
                )
            elif section == "archives":
                results["archives"] = benchmark_archives.bench_archives(
                    spark,
                    data,
                    work,
                    configs["ingest"].job,
                    configs["train"].job,
                    configs["score"].job,
                    rounds=args.rounds,
                    scale_members=args.archive_members,
                )
            elif section == "score":
                results["score"] = benchmark.bench_score(
                    spark,
                    data,
                    work,
                    configs["ingest"].job,
                    configs["train"].job,
                    configs["score"].job,
                    archive_files=args.archive_files,
                )
            else:
                train_config = configs["train"].job
                if args.epochs:
                    train_config = dataclasses.replace(train_config, epochs=args.epochs)
                if section == "learning":
                    ordered = tuple(name for name in learning.LEARNING_PROTOCOLS if name in protocols)
                    results[section] = learning.bench_learning(
                        spark, data, work, configs["ingest"].job, train_config, ordered
                    )
                else:
                    results[section] = learning.bench_learning_precision(
                        spark, data, work, configs["ingest"].job, train_config
                    )
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, indent=2))
            print(json.dumps({section: results[section]}, indent=2), flush=True)
    print(f"figures: {output}")
    return 0


def _known(cls: type, overrides: dict) -> dict:
    names = {field.name for field in dataclasses.fields(cls)}
    return {key: value for key, value in overrides.items() if key.startswith("spark.") or key in names}


def _check_known(overrides: dict) -> None:
    names = {
        field.name for cls in (IngestConfig, TrainConfig, ScoreConfig) for field in dataclasses.fields(cls)
    }
    unknown = sorted(key for key in overrides if not key.startswith("spark.") and key not in names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}")


if __name__ == "__main__":
    sys.exit(main())
