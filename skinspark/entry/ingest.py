"""Ingest HAM10000 JPEGs and the metadata CSV into a Parquet tensor table split by lesion.

    spark-submit jobs/ingest.py \
        --images data/HAM10000_images_part_1 data/HAM10000_images_part_2 \
        --metadata data/HAM10000_metadata.csv --output out/ham10000

Also `python jobs/ingest.py ...` and the console script `skinspark-ingest ...`. Exit codes: 0 done,
1 too much bad input (table not published, quarantine in `<output>_rejected`), 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import functools
import sys

from pyspark.sql import SparkSession

from skinspark.cli import add_common_arguments, add_reader_argument, finish, flag_values, run_job
from skinspark.config import IngestConfig, Loaded
from skinspark.ingest import IngestError, ingest, ingest_summary

# The flags that set the config keys of the same name.
FLAGS = (
    "height",
    "width",
    "seed",
    "split",
    "folds",
    "max_bad_fraction",
    "decoder",
    "reader",
    "metadata_encoding",
)


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="PATH",
        help="directories (searched recursively for *.jpg/*.jpeg/*.png, any case) or globs; any Hadoop URI",
    )
    parser.add_argument("--metadata", required=True, metavar="CSV", help="HAM10000_metadata.csv")
    parser.add_argument("--output", required=True, metavar="DIR", help="output table directory (replaced)")
    parser.add_argument("--height", type=int, help="image height in pixels (default 75)")
    parser.add_argument("--width", type=int, help="image width in pixels (default 100)")
    parser.add_argument("--seed", type=int, help="split seed (default 42)")
    parser.add_argument("--split", help="train,val,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="add a fold column 0..K-1 over the train and val rows, by lesion and stratified by class, "
        "for train --fold and --cross-validate (default 0: none)",
    )
    parser.add_argument(
        "--max-bad-fraction", type=float, help="fail above this share of bad input (default 0.05)"
    )
    parser.add_argument(
        "--decoder", choices=["simplejpeg", "pillow"], help="JPEG decoder (default simplejpeg)"
    )
    add_reader_argument(parser)
    parser.add_argument("--metadata-encoding", help="the CSV's text encoding (default utf-8)")
    return add_common_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    work = functools.partial(ingest_table, images=args.images, metadata=args.metadata, output=args.output)
    return run_job(args, "ingest", IngestConfig, flag_values(args, FLAGS), work, (IngestError, ValueError))


def ingest_table(
    spark: SparkSession, loaded: Loaded[IngestConfig], images: list[str], metadata: str, output: str
) -> int:
    """Ingest `images` and `metadata` into the table `output` with the resolved config and print the
    summary; the exit code (0 published, 1 too much bad input).

    Raises:
        IngestError, ValueError: bad input (exit 2).
    """
    result = ingest(spark, images, metadata, output, loaded.job, loaded.to_yaml())
    return finish("ingest", result, ingest_summary(result.manifest), "table")


if __name__ == "__main__":
    sys.exit(main())
