"""The main job on an embedded default: generate a HAM10000-shaped sample, ingest it, train the paper's
CNN on it with Horovod on Spark, score the sample's images with the trained model, and say where
everything is.

    make demo        (or: python -m skinspark.tools.demo --output demo-output --images 2000 --epochs 20)
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
from skinspark.manifest import MANIFEST_FILE
from skinspark.model_dir import HISTORY_FILE, METRICS_FILE, MODEL_FILE
from skinspark.tools.synthetic import format_summary, generate


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinspark-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo-output", help="where the sample and results go")
    parser.add_argument("--images", type=int, default=2000, help="sample size (default 2,000)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20: minutes)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--master", default="local[*]")
    return parser


def main(argv: list[str] | None = None) -> int:
    from skinspark.score import ScoreError
    from skinspark.train import TrainError

    args = args_parser().parse_args(argv)
    root = Path(args.output).resolve()
    paths = {name: root / name for name in ("data", "table", "model", "predictions")}
    print(f"[1/4] generating {args.images} HAM10000-shaped images into {paths['data']}", flush=True)
    print(
        format_summary(generate(paths["data"], images=args.images, seed=args.seed, overwrite=True)),
        flush=True,
    )
    configs = {
        name: load_config(cls, job=name)
        for name, cls in (("ingest", IngestConfig), ("train", TrainConfig), ("score", ScoreConfig))
    }
    spark_conf = {key: value for loaded in configs.values() for key, value in loaded.spark.items()}
    with job_session("skinspark-demo", args.master, spark_conf) as spark:
        try:
            if not _ingest(spark, paths, configs).ok:
                return 1
            _train(spark, paths, configs, args)
            scored = _score(spark, paths, configs, args)
        except (IngestError, ScoreError) as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 2
        except (TrainError, ValueError) as error:
            print(f"demo: error: {error}", file=sys.stderr)
            return 1
    _print_places(paths)
    return 0 if scored.ok else 1


def _image_dirs(paths: dict[str, Path]) -> list[str]:
    return [str(paths["data"] / folder) for folder in schema.IMAGE_FOLDERS]


def _ingest(spark, paths: dict[str, Path], configs: dict):
    from skinspark.ingest import ingest_summary

    print("\n[2/4] ingesting with Spark", flush=True)
    loaded = configs["ingest"]
    metadata = str(paths["data"] / schema.METADATA_FILE)
    ingested = ingest(spark, _image_dirs(paths), metadata, str(paths["table"]), loaded.job, loaded.to_yaml())
    print(ingest_summary(ingested.manifest), flush=True)
    return ingested


def _train(spark, paths: dict[str, Path], configs: dict, args: argparse.Namespace):
    from skinspark.train import train, train_summary

    print(f"\n[3/4] training the paper's CNN with Horovod on Spark ({args.epochs} epochs)", flush=True)
    config = dataclasses.replace(configs["train"].job, epochs=args.epochs, seed=args.seed)
    shutil.rmtree(paths["model"], ignore_errors=True)  # a fresh run: the demo does not resume
    trained = train(spark, str(paths["table"]), str(paths["model"]), config, configs["train"].to_yaml())
    print(train_summary(trained), flush=True)
    return trained


def _score(spark, paths: dict[str, Path], configs: dict, args: argparse.Namespace):
    from skinspark.score import score, score_summary

    print(f"\n[4/4] scoring the sample's {args.images} JPEGs with the trained model", flush=True)
    loaded = configs["score"]
    scored = score(
        spark,
        str(paths["model"]),
        str(paths["predictions"]),
        loaded.job,
        images=_image_dirs(paths),
        config_text=loaded.to_yaml(),
    )
    print(score_summary(scored.manifest), flush=True)
    return scored


def _print_places(paths: dict[str, Path]) -> None:
    table, model, predictions = paths["table"], paths["model"], paths["predictions"]
    print("\nresults:")
    print(f"  sample dataset : {paths['data']}")
    print(f"  tensor table   : {table}  (Parquet, split=train|val|test)")
    print(f"  quarantine     : {table / '_quarantine'}")
    print(f"  model          : {model}  ({MODEL_FILE}, {METRICS_FILE}, {HISTORY_FILE}, *.png)")
    print(f"  predictions    : {predictions}  (Parquet, one row per file)")
    print(
        f"  manifests      : {table / MANIFEST_FILE}, {model / MANIFEST_FILE}, {predictions / MANIFEST_FILE}"
    )


if __name__ == "__main__":
    sys.exit(main())
