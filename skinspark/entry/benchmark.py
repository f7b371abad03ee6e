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
import sys
from pathlib import Path

from skinspark.cli import ConfigError, add_common_arguments, fail, job_session, parse_overrides
from skinspark.session import master_or_default
from skinspark.tools.benchmark.learning import LEARNING_PROTOCOLS
from skinspark.tools.benchmark.run import (
    DEFAULT_MASTER,
    DEFAULT_SECTIONS,
    SECTIONS,
    Options,
    dataset,
    load_configs,
    parse_protocols,
    parse_sections,
    run_benchmark,
    spark_settings,
)


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
        default=",".join(LEARNING_PROTOCOLS),
        help=f"learning: comma-separated, of {', '.join(LEARNING_PROTOCOLS)} (and split_by_lesion)",
    )
    parser.add_argument(
        "--archive-files", type=int, default=50000, help="score: the large archive for the memory check"
    )
    parser.add_argument(
        "--archive-members", type=int, default=200_000, help="archives: members of the large zip"
    )
    parser.add_argument("--rounds", type=int, default=3, help="archives: alternating rounds of each form")
    parser.add_argument("--output", default=None, help="JSON file (default WORK/benchmark.json)")
    return add_common_arguments(parser, default_master=DEFAULT_MASTER)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    try:
        sections = parse_sections(args.sections)
        if args.config:
            raise ValueError("--config is per job; give settings with --conf key=value")
        options = Options(
            epochs=args.epochs,
            protocols=parse_protocols(args.protocols),
            archive_files=args.archive_files,
            archive_members=args.archive_members,
            rounds=args.rounds,
        )
        # --conf applies to every job's config; a key must exist in at least one of them.
        configs = load_configs(parse_overrides(args.conf))
    except (ValueError, ConfigError) as error:
        return fail("benchmark", str(error))
    work = Path(args.work).resolve()
    data = dataset(work, Path(args.data).resolve() if args.data else None, args.images, args.seed)
    output = Path(args.output) if args.output else work / "benchmark.json"
    master = master_or_default(args.master, DEFAULT_MASTER)  # spark-submit's --master wins
    with job_session("skinspark-benchmark", master, spark_settings(configs)) as spark:
        run_benchmark(spark, sections, data, work, configs, options, output)
    print(f"figures: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
