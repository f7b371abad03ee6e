"""The main job on an embedded default: generate a HAM10000-shaped sample, ingest it, and say where
everything is.

    make demo        (or: python -m skinspark.demo --output demo-output --images 1000)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skinspark import schema
from skinspark.cli import job_session
from skinspark.config import IngestConfig, load_config
from skinspark.ingest import IngestError, ingest
from skinspark.ingest import summary as ingest_summary
from skinspark.synthetic import format_summary, generate


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinspark-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo-output", help="where the sample and results go")
    parser.add_argument("--images", type=int, default=1000, help="sample size (default 1,000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--master", default="local[*]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    root = Path(args.output).resolve()
    data = root / "data"
    print(f"[1/2] generating {args.images} HAM10000-shaped images into {data}", flush=True)
    print(format_summary(generate(data, images=args.images, seed=args.seed, overwrite=True)), flush=True)
    ingest_config = load_config(IngestConfig, job="ingest")
    with job_session("skinspark-demo", args.master, ingest_config.spark) as spark:
        print("[2/2] ingesting with Spark", flush=True)
        try:
            result = ingest(
                spark,
                [str(data / folder) for folder in schema.IMAGE_FOLDERS],
                str(data / schema.METADATA_FILE),
                str(root / "table"),
                ingest_config.job,
                ingest_config.to_yaml(),
            )
        except IngestError as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 2
        print(ingest_summary(result.manifest))
    print("\nresults:")
    print(f"  sample dataset : {data}")
    print(f"  tensor table   : {root / 'table'}  (Parquet, split=train|val|test)")
    print(f"  quarantine     : {root / 'table' / '_quarantine'}")
    print(f"  manifest       : {root / 'table' / '_manifest.json'}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
