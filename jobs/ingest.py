"""Ingest HAM10000 JPEGs and the metadata CSV into a Parquet tensor table split by lesion.

    spark-submit jobs/ingest.py \
        --images data/HAM10000_images_part_1 data/HAM10000_images_part_2 \
        --metadata data/HAM10000_metadata.csv --output out/ham10000

Also `python jobs/ingest.py ...` and the console script `skinspark-ingest ...`. Exit codes: 0 done,
1 too much bad input (table not published, quarantine in `<output>_rejected`), 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import sys

from skinspark.cli import ConfigError, add_common_arguments, fail, job_session, resolve_config
from skinspark.config import IngestConfig
from skinspark.ingest import IngestError, ingest, summary


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
        "--max-bad-fraction", type=float, help="fail above this share of bad input (default 0.05)"
    )
    parser.add_argument(
        "--decoder", choices=["simplejpeg", "pillow"], help="JPEG decoder (default simplejpeg)"
    )
    parser.add_argument(
        "--reader",
        choices=["auto", "python", "spark"],
        help="who reads each file: python (the worker) or spark (the JVM); default auto",
    )
    parser.add_argument("--metadata-encoding", help="the CSV's text encoding (default utf-8)")
    return add_common_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    flags = {
        "height": args.height,
        "width": args.width,
        "seed": args.seed,
        "split": args.split,
        "max_bad_fraction": args.max_bad_fraction,
        "decoder": args.decoder,
        "reader": args.reader,
        "metadata_encoding": args.metadata_encoding,
    }
    try:
        loaded = resolve_config(args, IngestConfig, "ingest", flags)
    except ConfigError as error:
        return fail("ingest", str(error))
    with job_session("skinspark-ingest", args.master, loaded.spark) as spark:
        try:
            result = ingest(spark, args.images, args.metadata, args.output, loaded.job, loaded.to_yaml())
        except (IngestError, ValueError) as error:
            return fail("ingest", str(error))
    print(summary(result.manifest))
    if not result.ok:
        return fail("ingest", result.manifest["error"], code=1)
    print(f"table: {result.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
