"""The archives benchmark: zip archives and DICOM files read in place, against the same images unpacked.

On the same generated images, side by side in one session and alternating, so the machine's drift
falls on every side alike:
  (a) ingest from the two part folders, from the two parts as stored zips and as deflated zips;
  (b) scoring of the same three forms;
  (c) scoring of the images as DICOM files (JPEG baseline inside) against the JPEGs;
and at scale, one zip of many small members (the section writes it): the time to plan it from its
central directory, its scoring rate against the same files unpacked in folders, and the scoring run's
peak memory (process tree) against a zip of 10,000 members.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import sys
import time
import zipfile
from pathlib import Path

from PIL import Image
from pyspark.sql import SparkSession

from skinspark import schema
from skinspark.config import IngestConfig, ScoreConfig, TrainConfig
from skinspark.images import IMAGE_SUFFIXES, archives
from skinspark.ingest import ingest
from skinspark.manifest import COUNTS_KEY, MANIFEST_FILE
from skinspark.tools.benchmark.inputs import cached_files, trained_model
from skinspark.tools.benchmark.timing import peak_tree_rss

FORMS = ("folders", "zip_stored", "zip_deflated")
SCALE_SMALL = 10_000
SMALL_SIDE = (200, 150)  # the small members' size: 200 x 150 JPEGs of a few kB


def bench_archives(
    spark: SparkSession,
    data_dir: Path,
    work_dir: Path,
    ingest_config: IngestConfig,
    train_config: TrainConfig,
    config: ScoreConfig,
    rounds: int = 3,
    scale_members: int = 200_000,
) -> dict:
    """The archives section: ingest and scoring from zips against folders, DICOM against JPEG, and the
    scale of one large zip. Ratios are zip (or DICOM) rate over folder (or JPEG) rate, pair by pair
    within a round, and their median over `rounds` rounds."""
    from skinspark.score import score

    files = cached_files(data_dir)
    inputs = {"folders": [str(data_dir / folder) for folder in schema.IMAGE_FOLDERS]}
    for method, name in ((zipfile.ZIP_STORED, "zip_stored"), (zipfile.ZIP_DEFLATED, "zip_deflated")):
        inputs[name] = write_part_zips(data_dir, work_dir / f"archives-{name}", method)
    inputs["dicom"] = [str(path) for path in write_dicom_folders(data_dir, work_dir / "archives-dicom")]
    metadata = str(data_dir / schema.METADATA_FILE)
    model_dir = trained_model(spark, data_dir, work_dir, ingest_config, train_config, "score-model", 1)
    for form in ("folders", "zip_deflated", "dicom"):  # warm the JVM, the workers and the page cache
        score(spark, str(model_dir), str(work_dir / "archives-warm-up"), config, inputs[form])

    ingest_runs = _alternating(
        FORMS,
        rounds,
        lambda form: ingest(
            spark, inputs[form], metadata, str(work_dir / f"archives-table-{form}"), ingest_config
        ),
        lambda result: result.manifest["counts"]["files"]["ingested"],
    )
    score_forms = (*FORMS, "dicom")
    score_runs = _alternating(
        score_forms,
        rounds,
        lambda form: score(
            spark, str(model_dir), str(work_dir / f"archives-score-{form}"), config, inputs[form]
        ),
        lambda result: result.manifest["counts"]["scored"],
    )
    return {
        "images": len(files),
        "master": spark.sparkContext.master,
        "rounds": rounds,
        "ingest": _summary(ingest_runs, len(files), "folders"),
        "score": _summary(score_runs, len(files), "folders"),
        "score_dicom_over_jpeg": _ratios(score_runs, len(files), "folders")["dicom"],
        "scale": bench_scale(data_dir, work_dir, model_dir, files, scale_members),
        "targets": {
            "zip_over_folders_min": 0.95,
            "dicom_over_jpeg_min": 0.9,
            "scale_memory_ratio_max": 1.2,
        },
    }


def _alternating(forms, rounds: int, run, count) -> dict[str, list[tuple[float, int]]]:
    """Each round runs every form once, in turn: {form: [(seconds, images counted), ...]}."""
    runs: dict[str, list[tuple[float, int]]] = {form: [] for form in forms}
    for _ in range(rounds):
        for form in forms:
            started = time.perf_counter()
            result = run(form)
            runs[form].append((time.perf_counter() - started, count(result)))
    return runs


def _ratios(runs: dict, images: int, base: str) -> dict:
    """Per form: its rate over `base`'s rate in each round, and the median of those ratios."""
    ratios = {}
    for form, timings in runs.items():
        pairs = [
            base_seconds / seconds
            for (seconds, _), (base_seconds, _) in zip(timings, runs[base], strict=True)
        ]
        ratios[form] = {
            "per_round": [round(ratio, 3) for ratio in pairs],
            "median": round(statistics.median(pairs), 3),
        }
    return ratios


def _summary(runs: dict, images: int, base: str) -> dict:
    ratios = _ratios(runs, images, base)
    return {
        form: {
            "seconds": [round(seconds, 2) for seconds, _ in timings],
            "images_per_second_median": round(images / statistics.median(s for s, _ in timings), 1),
            "counted": [counted for _, counted in timings],
            f"ratio_over_{base}": ratios[form],
        }
        for form, timings in runs.items()
    }


def write_part_zips(data_dir: Path, target: Path, method: int) -> list[str]:
    """The two part folders as two zips (members at the root, as HAM10000's downloads hold them),
    written once and reused."""
    paths = []
    for folder in schema.IMAGE_FOLDERS:
        path = target / f"{folder}.zip"
        paths.append(str(path))
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", method) as archive:
            for image in sorted((data_dir / folder).glob("*.jpg")):
                archive.write(image, image.name)
        partial.rename(path)
    return paths


def write_dicom_folders(data_dir: Path, target: Path) -> list[Path]:
    """Every JPEG wrapped as a dermoscopy DICOM (JPEG baseline inside), in the same two folders."""
    from skinspark.tools.synthetic.dicom import jpeg_to_dicom

    folders = []
    for folder in schema.IMAGE_FOLDERS:
        out = target / folder
        folders.append(out)
        done = out / ".complete"
        if done.is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        for image in sorted((data_dir / folder).glob("*.jpg")):
            jpeg_to_dicom(image.read_bytes(), out / f"{image.stem}.dcm", image.stem, image.stem)
        done.touch()
    return folders


def bench_scale(data_dir: Path, work_dir: Path, model_dir: Path, files: list[Path], members: int) -> dict:
    """One zip of `members` small JPEGs against the same files in folders (hard links), and a zip of
    10,000 of them: plan time, scoring rate and peak memory, each scoring run its own process."""
    small = _small_jpegs(files[:999], work_dir / "archives-small-jpegs")
    big_zip = _member_zip(small, work_dir / f"archives-{members}.zip", members)
    base = min(SCALE_SMALL, members)
    small_zip = _member_zip(small, work_dir / f"archives-{base}.zip", base)
    folders = _linked_folders(small, work_dir / f"archives-{members}-folders", members)
    started = time.perf_counter()
    plan = archives.plan_archives([f"file:{big_zip}"], IMAGE_SUFFIXES)
    plan_seconds = time.perf_counter() - started
    runs = {}
    for name, inputs in (
        (f"zip_{base}", [str(small_zip)]),
        (f"zip_{members}", [str(big_zip)]),
        (f"folders_{members}", [str(folders)]),
    ):
        runs[name] = _score_process(model_dir, inputs, work_dir / f"archives-scale-{name}")
    big, alone, small_run = runs[f"zip_{members}"], runs[f"folders_{members}"], runs[f"zip_{base}"]
    return {
        "members": members,
        "plan_seconds": round(plan_seconds, 2),
        "planned_images": plan.totals()["images"],
        "runs": runs,
        "rate_zip_over_folders": round(big["images_per_second"] / alone["images_per_second"], 3),
        "memory_ratio_large_over_small_zip": round(big["peak_rss_mb"] / small_run["peak_rss_mb"], 3),
    }


def _score_process(model_dir: Path, inputs: list[str], output: Path) -> dict:
    import json

    command = [sys.executable, "-m", "skinspark.entry.score", "--model", str(model_dir), "--images", *inputs]
    command += ["--output", str(output), "--master", "local[2]"]
    started = time.perf_counter()
    peak = peak_tree_rss(command)
    manifest = json.loads((output / MANIFEST_FILE).read_text())
    return {
        "files": manifest["run"]["files_seen"],
        "scored": manifest[COUNTS_KEY]["scored"],
        "seconds": round(time.perf_counter() - started, 1),
        "images_per_second": manifest["run"]["images_per_second"],
        "peak_rss_mb": round(peak / 2**20, 1),
    }


def _small_jpegs(files: list[Path], target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    small = []
    for path in files:
        out = target / path.name
        if not out.is_file():
            buffer = io.BytesIO()
            Image.open(path).resize(SMALL_SIDE).save(buffer, "JPEG", quality=90)
            out.write_bytes(buffer.getvalue())
        small.append(out)
    return small


def _member_zip(small: list[Path], path: Path, members: int) -> Path:
    if path.is_file():
        return path
    contents = [file.read_bytes() for file in small]
    partial = path.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for index in range(members):
            source = small[index % len(small)]
            name = f"copy-{index // 1000:04d}/{source.stem}-{index}.jpg"
            archive.writestr(name, contents[index % len(small)])
    partial.rename(path)
    return path


def _linked_folders(small: list[Path], target: Path, files: int) -> Path:
    done = target / ".complete"
    if done.is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for index in range(files):
        source = small[index % len(small)]
        link = target / f"copy-{index // 1000:04d}" / f"{source.stem}-{index}.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, link)
    done.touch()
    return target
