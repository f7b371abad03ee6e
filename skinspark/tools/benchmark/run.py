"""The benchmark's sections run in order in one session, each one's figures written to one JSON file as
soon as it ends."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pyspark.sql import SparkSession

from skinspark import schema
from skinspark.config import JOB_CONFIGS, ConfigError, Loaded, load_config
from skinspark.tools.benchmark import archives, export, learning
from skinspark.tools.benchmark import ingest as ingest_section
from skinspark.tools.benchmark import score as score_section
from skinspark.tools.benchmark import train as train_section
from skinspark.tools.synthetic import generate
from skinspark.versions import package_versions

SECTIONS = ("ingest", "train", "score", "export", "learning", "learning_precision", "archives")
DEFAULT_SECTIONS = "ingest,train,score"
# The master when none is given anywhere (docs/benchmarks.md's figures are taken on local[2]).
DEFAULT_MASTER = "local[2]"


@dataclasses.dataclass(frozen=True)
class Options:
    """What the sections take besides the configs: the `learning` sections' epochs (None: train.yaml's)
    and protocols, the score section's large archive, the archives section's rounds and large zip."""

    epochs: int | None = None
    protocols: tuple[str, ...] = learning.LEARNING_PROTOCOLS
    archive_files: int = 50000
    archive_members: int = 200_000
    rounds: int = 3


def parse_sections(text: str) -> list[str]:
    """`"ingest,train"` as a list of section names, in the order given.

    Raises:
        ValueError: a name that is not a section, or none at all.
    """
    sections = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise ValueError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return sections


def parse_protocols(text: str) -> tuple[str, ...]:
    """The learning protocols named in `text` (comma-separated) plus `split_by_lesion`, in the order of
    LEARNING_PROTOCOLS.

    Raises:
        ValueError: a name that is not a protocol.
    """
    protocols = {name.strip() for name in text.split(",") if name.strip()} | {"split_by_lesion"}
    if unknown := sorted(protocols - set(learning.LEARNING_PROTOCOLS)):
        known = ", ".join(learning.LEARNING_PROTOCOLS)
        raise ValueError(f"unknown protocol(s) {unknown}; choose from {known}")
    return tuple(name for name in learning.LEARNING_PROTOCOLS if name in protocols)


def load_configs(overrides: Mapping[str, str]) -> dict[str, Loaded]:
    """Each job's config (ingest, train, score) from its defaults and file, with the `overrides` that
    are its keys (and every `spark.` key) applied.

    Raises:
        ConfigError: a key that no job's config has, or a bad value.
    """
    configs = {
        name: load_config(cls, None, _known(cls, overrides), job=name) for name, cls in JOB_CONFIGS.items()
    }
    names = {field.name for cls in JOB_CONFIGS.values() for field in dataclasses.fields(cls)}
    unknown = sorted(key for key in overrides if not key.startswith("spark.") and key not in names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}")
    return configs


def _known(cls: type, overrides: Mapping[str, str]) -> dict:
    names = {field.name for field in dataclasses.fields(cls)}
    return {key: value for key, value in overrides.items() if key.startswith("spark.") or key in names}


def spark_settings(configs: Mapping[str, Loaded]) -> dict[str, str]:
    """The Spark settings of every job's config, in one dict for the benchmark's one session."""
    return {key: value for loaded in configs.values() for key, value in loaded.spark.items()}


def dataset(work: Path, data: Path | None, images: int, seed: int) -> Path:
    """`data` when given; else `work/data`, generated with `images` images unless already there."""
    if data:
        return data
    generated = work / "data"
    if not (generated / schema.METADATA_FILE).exists():
        generate(generated, images=images, seed=seed, overwrite=True)
    return generated


def run_benchmark(
    spark: SparkSession,
    sections: Iterable[str],
    data: Path,
    work: Path,
    configs: Mapping[str, Loaded],
    options: Options,
    output: Path,
) -> dict:
    """Run `sections` in order; after each, write every figure to `output` and print the section's.

    Figures of earlier runs in `output` are kept; a section run again replaces its own.

    Returns:
        Everything `output` holds at the end.
    """
    results = json.loads(output.read_text()) if output.exists() else {}
    results["versions"] = package_versions()
    for section in sections:
        results[section] = run_section(spark, section, data, work, configs, options)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        print(json.dumps({section: results[section]}, indent=2), flush=True)
    return results


def run_section(
    spark: SparkSession,
    section: str,
    data: Path,
    work: Path,
    configs: Mapping[str, Loaded],
    options: Options,
) -> dict:
    """One section's figures.

    Raises:
        ValueError: `section` is not one of SECTIONS.
    """
    ingest_config, train_config, config = (configs[name].job for name in ("ingest", "train", "score"))
    if section == "ingest":
        return ingest_section.bench_ingest(spark, data, work, ingest_config)
    if section == "train":
        return train_section.bench_train_throughput(spark, data, work, ingest_config, train_config)
    if section == "score":
        return score_section.bench_score(
            spark, data, work, ingest_config, train_config, config, archive_files=options.archive_files
        )
    if section == "export":
        return export.bench_export(spark, data, work, ingest_config, train_config, config)
    if section == "archives":
        return archives.bench_archives(
            spark,
            data,
            work,
            ingest_config,
            train_config,
            config,
            rounds=options.rounds,
            scale_members=options.archive_members,
        )
    if options.epochs:
        train_config = dataclasses.replace(train_config, epochs=options.epochs)
    if section == "learning":
        return learning.bench_learning(spark, data, work, ingest_config, train_config, options.protocols)
    if section == "learning_precision":
        return learning.bench_learning_precision(spark, data, work, ingest_config, train_config)
    raise ValueError(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
