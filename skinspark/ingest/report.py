"""What the ingest job counts and reports: its error, result, counts, manifest and summary."""

from __future__ import annotations

import dataclasses

import pandas as pd

from skinspark import schema
from skinspark.config import IngestConfig
from skinspark.errors import JobError
from skinspark.manifest import (
    COUNTS_KEY,
    ERROR_KEY,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_KEY,
    STATUS_RUNNING,
    JobResult,
    split_counts,
)
from skinspark.versions import package_versions


class IngestError(JobError):
    """A problem that stops the whole ingest job (missing CSV, no images, a bad setting)."""


class IngestResult(JobResult):
    """What `ingest` wrote (the table, or the quarantine beside it) and counted (its manifest)."""


def count(files: pd.DataFrame, rows: pd.DataFrame, plan: pd.DataFrame, rows_read: int) -> dict:
    file_reasons = files["reason"].value_counts().to_dict()
    row_reasons = rows["reason"].value_counts().to_dict()
    files_ingested = int(files["reason"].isna().sum())
    rows_ingested = int(rows["reason"].isna().sum())
    splits = split_counts(plan)
    counts = {
        "files": {
            "seen": len(files),
            "ingested": files_ingested,
            "quarantined": int(sum(file_reasons.values())),
            "by_reason": {k: int(v) for k, v in sorted(file_reasons.items())},
        },
        "rows": {
            "read": rows_read,
            "ingested": rows_ingested,
            "quarantined": int(sum(row_reasons.values())),
            "by_reason": {k: int(v) for k, v in sorted(row_reasons.items())},
        },
        "splits": splits,
    }
    # Nothing may disappear: every file and every CSV row is ingested or quarantined, exactly once,
    # and every ingested row is paired with exactly one ingested file.
    if counts["files"]["seen"] != files_ingested + counts["files"]["quarantined"]:
        raise IngestError(f"file accounting mismatch: {counts['files']}")
    if rows_read != len(rows) or rows_read != rows_ingested + counts["rows"]["quarantined"]:
        raise IngestError(f"CSV accounting mismatch: {rows_read} rows read, {counts['rows']}")
    if not rows_ingested == files_ingested == len(plan) == sum(split["images"] for split in splits.values()):
        raise IngestError(f"pairing mismatch: {rows_ingested} rows vs {files_ingested} files ingested")
    return counts


def fold_counts(plan: pd.DataFrame, folds: int) -> dict:
    """Images, lesions and images per class of each cross-validation fold of the final plan, keyed by
    the fold's number as text (JSON keys): {"0": {"images", "lesions", "by_class"}, ...}."""
    pool = plan[plan[schema.FOLD].notna()]
    by_class = pool.groupby([schema.FOLD, schema.DX]).size()
    lesions = pool.groupby(schema.FOLD)[schema.LESION_ID].nunique()
    counts = {}
    for fold in range(folds):
        classes = {label: int(by_class.get((fold, label), 0)) for label in schema.LABELS}
        counts[str(fold)] = {
            "images": sum(classes.values()),
            "lesions": int(lesions.get(fold, 0)),
            "by_class": classes,
        }
    return counts


def bad_fraction(counts: dict) -> float:
    def bad(section):
        return sum(n for reason, n in section["by_reason"].items() if reason not in schema.BENIGN_REASONS)

    files, rows = counts["files"], counts["rows"]
    return max(bad(files) / max(files["seen"], 1), bad(rows) / max(rows["read"], 1))


def manifest_for(config: IngestConfig, reader: str, image_paths, metadata_path: str, counts: dict) -> dict:
    return {
        "job": "ingest",
        STATUS_KEY: STATUS_RUNNING,
        "reader": reader,
        "inputs": {"images": list(image_paths), "metadata": metadata_path},
        "image_shape": [config.height, config.width, 3],
        "columns": [
            *schema.INGESTED_SCHEMA.fieldNames(),
            *([schema.FOLD] if config.folds else []),
            schema.SPLIT,
        ],
        COUNTS_KEY: counts,
        "quarantine": {
            **{f"file:{k}": v for k, v in counts["files"]["by_reason"].items()},
            **{f"row:{k}": v for k, v in counts["rows"]["by_reason"].items()},
        },
        "config": dataclasses.asdict(config),
        "versions": package_versions(),
        **({"folds": config.folds} if config.folds else {}),
    }


def judge(manifest: dict, bad: float, limit: float, output: str) -> str:
    """Set the manifest's status; returns where it goes: `output`, or `<output>_rejected` when the
    share of bad input is over `limit`."""
    if bad <= limit:
        manifest[STATUS_KEY] = STATUS_COMPLETE
        return output
    target = output + "_rejected"
    manifest[STATUS_KEY] = STATUS_FAILED
    manifest[ERROR_KEY] = (
        f"{bad:.1%} of the input is bad, over --max-bad-fraction {limit:.1%}; "
        f"the table was not written, see {target}/_quarantine"
    )
    return target


def ingest_summary(manifest: dict) -> str:
    """A one-screen, human-readable summary of an ingest manifest."""
    counts = manifest[COUNTS_KEY]
    lines = [
        f"ingest {manifest[STATUS_KEY]}: {counts['files']['seen']} files, {counts['rows']['read']} CSV rows "
        f"in {manifest.get('seconds', 0):.1f} s ({manifest.get('images_per_second', 0):.0f} images/s)",
        f"  ingested {counts['files']['ingested']} images; "
        f"quarantined {counts['files']['quarantined']} files and {counts['rows']['quarantined']} rows "
        f"(bad fraction {manifest.get('bad_fraction', 0):.2%})",
    ]
    header = "  split   images lesions  " + " ".join(f"{label:>6}" for label in schema.LABELS)
    lines.append(header)
    for split in schema.SPLITS:
        entry = counts["splits"][split]
        by_class = " ".join(f"{entry['by_class'][label]:>6}" for label in schema.LABELS)
        lines.append(f"  {split:<6} {entry['images']:>7} {entry['lesions']:>7}  {by_class}")
    if manifest.get("folds"):
        lines.append(fold_line(manifest))
    for warning in manifest.get("fold_warnings", []):
        lines.append(f"  warning: {warning}")
    for key, value in manifest["quarantine"].items():
        lines.append(f"  quarantine {key}: {value}")
    if manifest.get(ERROR_KEY):
        lines.append(f"  ERROR: {manifest[ERROR_KEY]}")
    return "\n".join(lines)


def fold_line(manifest: dict) -> str:
    """The fold sizes on one line: `  folds (K of train+val): 0: N images (L lesions), 1: ...`."""
    folds = manifest[COUNTS_KEY]["folds"]
    sizes = ", ".join(
        f"{fold}: {entry['images']} images ({entry['lesions']} lesions)" for fold, entry in folds.items()
    )
    return f"  folds ({manifest['folds']} of train+val): {sizes}"
