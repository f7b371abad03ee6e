"""The main job on an embedded default: generate a HAM10000-shaped sample, ingest it, train the paper's
CNN on it with Horovod on Spark, score the sample's images with the trained model, and say where
everything is.

    make demo        (or: python -m skinspark.demo --output demo-output --images 1000 --epochs 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from skinspark import schema
from skinspark.cli import job_session
from skinspark.config import IngestConfig, ScoreConfig, TrainConfig, load_config
from skinspark.ingest import IngestError, ingest
from skinspark.ingest import summary as ingest_summary
from skinspark.synthetic import format_summary, generate


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinspark-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo-output", help="where the sample and results go")
    parser.add_argument("--images", type=int, default=1000, help="sample size (default 1,000)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3: minutes)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--master", default="local[*]")
    return parser


def main(argv: list[str] | None = None) -> int:
    from skinspark.score import ScoreError, score
    from skinspark.score import summary as score_summary
    from skinspark.train import TrainError, train
    from skinspark.train import summary as train_summary

    args = args_parser().parse_args(argv)
    root = Path(args.output).resolve()
    data, table, model, predictions = root / "data", root / "table", root / "model", root / "predictions"
    print(f"[1/4] generating {args.images} HAM10000-shaped images into {data}", flush=True)
    print(format_summary(generate(data, images=args.images, seed=args.seed, overwrite=True)), flush=True)
    configs = {
        name: load_config(cls, job=name)
        for name, cls in (("ingest", IngestConfig), ("train", TrainConfig), ("score", ScoreConfig))
    }
    spark_conf = {key: value for loaded in configs.values() for key, value in loaded.spark.items()}
    image_dirs = [str(data / folder) for folder in schema.IMAGE_FOLDERS]
    with job_session("skinspark-demo", args.master, spark_conf) as spark:
        print("\n[2/4] ingesting with Spark", flush=True)
        try:
            ingested = ingest(
                spark,
                image_dirs,
                str(data / schema.METADATA_FILE),
                str(table),
                configs["ingest"].job,
                configs["ingest"].to_yaml(),
            )
        except IngestError as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 2
        print(ingest_summary(ingested.manifest), flush=True)
        if not ingested.ok:
            return 1

        print(f"\n[3/4] training the paper's CNN with Horovod on Spark ({args.epochs} epochs)", flush=True)
        train_config = dataclasses.replace(configs["train"].job, epochs=args.epochs, seed=args.seed)
        shutil.rmtree(model, ignore_errors=True)  # a fresh run: the demo does not resume
        try:
            trained = train(spark, str(table), str(model), train_config, configs["train"].to_yaml())
        except (TrainError, ValueError) as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 1
        print(train_summary(trained), flush=True)

        print(f"\n[4/4] scoring the sample's {args.images} JPEGs with the trained model", flush=True)
        try:
            scored = score(
                spark,
                str(model),
                str(predictions),
                configs["score"].job,
                images=image_dirs,
                config_text=configs["score"].to_yaml(),
            )
        except ScoreError as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 2
        print(score_summary(scored.manifest), flush=True)

    print("\nresults:")
    print(f"  sample dataset : {data}")
    print(f"  tensor table   : {table}  (Parquet, split=train|val|test)")
    print(f"  quarantine     : {table / '_quarantine'}")
    print(f"  model          : {model}  (model.keras, metrics.json, history.csv, *.png)")
    print(f"  predictions    : {predictions}  (Parquet, one row per file)")
    print(
        f"  manifests      : {table / '_manifest.json'}, {model / '_manifest.json'}, "
        f"{predictions / '_manifest.json'}"
    )
    return 0 if scored.ok else 1


if __name__ == "__main__":
    sys.exit(main())
