"""What a scoring run counts and reports: its result, the manifest, the labelled metrics, the verdict
and the one-screen summary."""

from __future__ import annotations

import dataclasses
from collections import Counter

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from skinspark import schema, storage
from skinspark.config import ScoreConfig
from skinspark.manifest import (
    COUNTS_KEY,
    ERROR_KEY,
    SCORING_METRICS_FILE,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_KEY,
    STATUS_RUNNING,
    JobResult,
    to_json,
)
from skinspark.score.columns import ERROR, ERROR_REASON, PATH, PREDICTED_DX, output_columns
from skinspark.score.keyspace import Source
from skinspark.tasks import DX7, Task
from skinspark.versions import package_versions


class ScoreResult(JobResult):
    """What `score` wrote (the predictions directory) and counted (its manifest)."""


def start_manifest(
    source: Source, inputs: dict, output: str, model: dict, config: ScoreConfig, run: dict
) -> dict:
    """The manifest written before the first chunk (status "running"); `model` records the model
    directory, its id and preprocessing, `run` this run's start, mode and plan."""
    kind = "table" if source.labelled else "images"
    return {
        "job": "score",
        STATUS_KEY: STATUS_RUNNING,
        "input_kind": kind,
        "inputs": inputs,
        "reader": source.reader,  # None for a table: its pixels are stored
        **source.record(),  # zip archives: members, images, skipped and ignored entries per archive
        "output": output,
        "model": model,
        "columns": output_columns(source.labelled, source.labels),
        "error_columns": {ERROR_REASON: "a reason code, or null", ERROR: "'reason: message', or null"},
        "config": dataclasses.asdict(config),
        "versions": package_versions(),
        "run": run,
    }


HEADLINE_KEYS = ("images", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc")


def write_metrics(spark: SparkSession, output: str, metrics: dict) -> dict:
    """Write `_metrics.json` ({name: classification_metrics}); returns the manifest's headline figures."""
    if not metrics:
        return {}
    storage.write_text(spark, f"{output}/{SCORING_METRICS_FILE}", to_json(metrics))
    return {"metrics": {name: headline_figures(m) for name, m in metrics.items()}}


def headline_figures(metrics: dict) -> dict:
    """The figures of one `classification_metrics` result that the manifest and summary show."""
    from skinspark.metrics import operating_point

    figures = {key: metrics[key] for key in HEADLINE_KEYS}
    # melanoma's for a seven-diagnosis model, malignant's for a benign/malignant one
    label, key, point = operating_point(metrics)
    figures[key] = point
    figures["ece"] = metrics["calibration"]["ece"]
    return figures


def labelled_metrics(
    spark: SparkSession, output: str, threshold: float | None = None, task: Task = DX7
) -> dict:
    """classification_metrics per split and over all rows with a label and a prediction.

    Brings `split`, `label` and the probabilities of each labelled row to the driver (about 40 bytes a
    row: a million rows is 40 MB); a labelled set is an evaluation set, not a whole archive. The table's
    seven-class labels are mapped to `task`'s units (benign/malignant for such a model).
    """
    from skinspark.metrics import classification_metrics

    probabilities = list(task.prob_columns)
    rows = (
        spark.read.parquet(output)
        .where(F.col(ERROR_REASON).isNull() & F.col(schema.LABEL).isNotNull())
        .select(schema.SPLIT, schema.LABEL, *probabilities)
        .toPandas()
    )
    if rows.empty:
        return {}
    metrics = {}
    splits = sorted(rows[schema.SPLIT].dropna().unique())
    groups = [("all", rows), *[(split, rows[rows[schema.SPLIT] == split]) for split in splits]]
    for name, group in groups:
        if not group.empty:
            metrics[name] = classification_metrics(
                task.map_labels(group[schema.LABEL].to_numpy()),
                group[probabilities].to_numpy(),
                task.labels,
                threshold,
            )
    return metrics


def count_output(
    spark: SparkSession, output: str, chunks: int, first_new_chunk: int, labels=schema.LABELS
) -> dict:
    """Counts over the whole output (aggregates only): rows, errors by reason, predictions per class
    (per label of `labels`, the model's output units)."""
    table = spark.read.parquet(output)
    grouped = table.groupBy(ERROR_REASON, PREDICTED_DX).count().collect()
    rows, paths = table.agg(F.count("*"), F.count_distinct(PATH)).first()
    errors = {row[ERROR_REASON]: 0 for row in grouped if row[ERROR_REASON] is not None}
    predicted = dict.fromkeys(labels, 0)
    for row in grouped:
        if row[ERROR_REASON] is not None:
            errors[row[ERROR_REASON]] += row["count"]
        elif row[PREDICTED_DX] is not None:
            predicted[row[PREDICTED_DX]] += row["count"]
    return {
        COUNTS_KEY: {
            "rows": int(rows),
            "distinct_paths": int(paths),
            "scored": sum(predicted.values()),
            "errors": sum(errors.values()),
            "errors_by_reason": dict(sorted(errors.items())),
            "predicted": predicted,
            "chunks": chunks,
            "first_chunk_of_this_run": first_new_chunk,
        }
    }


def verdict(manifest: dict, config: ScoreConfig) -> dict:
    counts = manifest[COUNTS_KEY]
    bad = counts["errors"] / max(counts["rows"], 1)
    verdict = {STATUS_KEY: STATUS_COMPLETE, "bad_fraction": round(bad, 6)}
    if counts["rows"] != counts["distinct_paths"]:
        error = f"{counts['rows'] - counts['distinct_paths']} duplicate rows"
        verdict.update({STATUS_KEY: STATUS_FAILED, ERROR_KEY: error})
    elif bad > config.max_bad_fraction:
        error = (
            f"{bad:.1%} of the rows are errors, over max_bad_fraction {config.max_bad_fraction:.1%} "
            f"(the rows are written; see the {ERROR_REASON} column)"
        )
        verdict.update({STATUS_KEY: STATUS_FAILED, ERROR_KEY: error})
    return verdict


def worker_summary(stats: dict) -> dict:
    """The workers' accumulated (tasks, loads, precision) per process, summed for the manifest."""
    precisions = Counter(precision for _, _, precision in stats.values())
    return {
        "python_processes": len(stats),
        "tasks": sum(tasks for tasks, _, _ in stats.values()),
        "model_loads": sum(loads for _, loads, _ in stats.values()),
        "precision": dict(sorted(precisions.items())),  # processes that predicted in each precision
        "per_process": {
            worker: {"tasks": tasks, "model_loads": loads, "precision": precision}
            for worker, (tasks, loads, precision) in stats.items()
        },
    }


def _headline_line(figures: dict) -> str:
    def value(number):
        return "n/a" if number is None else f"{number:.3f}"

    key = "malignant" if "malignant" in figures else "melanoma"
    point = figures.get(key) or {"sensitivity": None, "specificity": None}
    label = "malignant" if key == "malignant" else "mel"
    where = f"P({label}) >= {point['threshold']:.3f}" if "threshold" in point else "arg-max"
    return (
        f"macro AUC {value(figures['macro_auc'])}; {key} sensitivity {value(point['sensitivity'])}, "
        f"specificity {value(point['specificity'])} ({where}); ECE {figures['ece']:.3f}"
    )


def score_summary(manifest: dict) -> str:
    """A one-screen, human-readable summary of a scoring manifest."""
    run, counts = manifest["run"], manifest.get(COUNTS_KEY, {})
    lines = [
        f"score {manifest[STATUS_KEY]}: model {manifest['model']['model_id']} -> {manifest['output']}",
        f"  this run ({run['mode']}): {run['files_seen']} files seen, {run['already_scored']} already done, "
        f"{run.get('files_scored', 0)} scored in {run.get('seconds', 0):.1f} s "
        f"({run.get('images_per_second', 0):.0f} images/s)",
    ]
    if counts:
        lines.append(
            f"  output: {counts['rows']} rows in {counts['chunks']} chunks, "
            f"{counts['scored']} predicted, {counts['errors']} errors "
            f"({manifest.get('bad_fraction', 0):.2%})"
        )
        for reason, number in counts["errors_by_reason"].items():
            lines.append(f"    error {reason}: {number}")
        predicted = counts["predicted"]
        width = max(6, *(len(label) for label in predicted))
        lines.append("  predicted " + " ".join(f"{label:>{width}}" for label in predicted))
        lines.append("            " + " ".join(f"{number:>{width}}" for number in predicted.values()))
    workers = run.get("workers")
    if workers:
        lines.append(
            f"  {workers['tasks']} tasks on {workers['python_processes']} Python workers, "
            f"{workers['model_loads']} model loads; precision "
            + ", ".join(f"{name} on {count}" for name, count in workers.get("precision", {}).items())
            + f" (requested {manifest['config'].get('precision', 'auto')})"
        )
    for split, metrics in manifest.get("metrics", {}).items():
        lines.append(
            f"  {split:<5} {metrics['images']:>6} images: accuracy {metrics['accuracy']:.4f}, "
            f"balanced accuracy {metrics['balanced_accuracy']:.4f}, "
            f"macro F1 {metrics['macro_f1']:.4f}"
        )
        lines.append("        " + _headline_line(metrics))
    truth = manifest.get("truth")
    if truth:
        counts = truth["counts"]
        lines.append(
            f"  against {truth['truth']}: {counts['evaluated']} evaluated; "
            f"{counts['truth_without_prediction']} truth rows without a scored image, "
            f"{counts['predictions_without_truth']} scored images without a truth row, "
            f"{counts['matched_with_error']} matched but unscorable, "
            f"{counts['invalid_truth_rows']} invalid truth rows"
        )
    if manifest.get("isic_csv"):
        isic = manifest["isic_csv"]
        lines.append(
            f"  ISIC submission: {isic['path']} ({isic['rows']} rows; "
            f"{isic['error_rows']} error rows not written)"
        )
    if manifest.get(ERROR_KEY):
        lines.append(f"  ERROR: {manifest[ERROR_KEY]}")
    return "\n".join(lines)
