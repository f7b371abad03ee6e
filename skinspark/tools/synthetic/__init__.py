"""Synthetic HAM10000: a dataset shaped exactly like the real download, for the demo, tests and benchmarks.

The real HAM10000 archive cannot be fetched here, so this module writes a stand-in with the same layout:

    DIR/HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
    DIR/HAM10000_images_part_1/        ISIC_0024306.jpg ... (the first ~half of the image numbers)
    DIR/HAM10000_images_part_2/        ... the rest

Every image is a 600x450 RGB baseline JPEG. The metadata mimics the real release (class counts, about
1.34 images per lesion, per-class dx_type, ages in steps of 5 with a few missing, sex, localization and
source dataset), and the images carry a learnable but imperfect per-class signal: a skin-toned background
with a lesion whose colour, size, shape irregularity, border sharpness and internal texture depend on the
class, with per-lesion jitter wide enough that neighbouring classes (mel/nv/bkl, bcc/akiec) overlap, and
four lesions in ten borrowing a look-alike class's colours (half of them its structures too). Every
lesion also carries structures of its own, of no class. All images of one lesion share the lesion's
appearance and differ by what a new photograph changes (angle, zoom, lighting, position, noise, hairs),
so that a model can memorise lesions and an image-level split inflates accuracy as it does on the real
data.

Everything is deterministic for a seed: the metadata comes from one generator seeded with `seed`, each
lesion's appearance from (seed, lesion number) and each image's variation from (seed, image number), so
the CSV and every JPEG are byte-identical whatever the number of worker processes.

The same dataset can be written in the other forms it is downloaded in (`form`, `--form`): `dataverse`,
as Harvard Dataverse serves HAM10000 (the part folders as `HAM10000_images_part_1.zip` and
`HAM10000_images_part_2.zip`, the metadata as the tab-separated `HAM10000_metadata.tab`), or `dicom`
(each image as `<image_id>.dcm` wrapping its JPEG, in the part folders, beside the CSV). The JPEGs are
the same bytes in every form.

Usage:
    python -m skinspark.tools.synthetic --output DIR --images N --seed S [--workers W] [--legacy-columns]
        [--form folders|dataverse|dicom] [--zip-compression stored|deflated]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from skinspark.schema import (
    DATAVERSE_IMAGE_ARCHIVES,
    DATAVERSE_METADATA_FILE,
    HAM10000_IMAGES,
    IMAGE_FOLDERS,
    LABELS,
    METADATA_COLUMNS,
    METADATA_FILE,
)
from skinspark.tools.synthetic.dicom import SUFFIX as DICOM_SUFFIX
from skinspark.tools.synthetic.dicom import require_pydicom
from skinspark.tools.synthetic.forms import (
    DATAVERSE,
    DEFAULT_ZIP_COMPRESSION,
    DICOM,
    FOLDER_FORMS,
    FOLDERS,
    FORMS,
    ZIP_COMPRESSIONS,
    check_form,
    write_archives,
    write_dicoms,
    write_tab,
)
from skinspark.tools.synthetic.looks import CLASS_STYLES, LesionAppearance, lesion_appearance
from skinspark.tools.synthetic.metadata import (
    CURRENT_METADATA_COLUMNS,
    DATASET_COUNTS,
    JPEG_QUALITY,
    LOCALIZATION_COUNTS,
    MAX_IMAGES_PER_LESION,
    check_images,
    check_seed,
    id_number,
    make_metadata,
    part_folder,
    scaled_class_counts,
)
from skinspark.tools.synthetic.painter import render_image, save_images

__all__ = [
    "CLASS_STYLES",
    "CURRENT_METADATA_COLUMNS",
    "DATASET_COUNTS",
    "FORMS",
    "JPEG_QUALITY",
    "LOCALIZATION_COUNTS",
    "MAX_IMAGES_PER_LESION",
    "ZIP_COMPRESSIONS",
    "LesionAppearance",
    "args_parser",
    "format_summary",
    "generate",
    "id_number",
    "lesion_appearance",
    "main",
    "make_metadata",
    "part_folder",
    "render_image",
    "scaled_class_counts",
]

# ----------------------------------------------------------------------------------------------------
# Writing a dataset
# ----------------------------------------------------------------------------------------------------


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return int(workers)


def _dataset_files(output_dir: Path) -> list[Path]:
    """The files of a dataset of any form in `output_dir`: metadata, archives and images."""
    named = (METADATA_FILE, DATAVERSE_METADATA_FILE, *DATAVERSE_IMAGE_ARCHIVES)
    files = [output_dir / name for name in named if (output_dir / name).exists()]
    for folder in IMAGE_FOLDERS:
        if (output_dir / folder).is_dir():
            for suffix in (".jpg", DICOM_SUFFIX):
                files.extend((output_dir / folder).glob(f"ISIC_*{suffix}"))
    return files


def _prepare_output(output_dir: Path, overwrite: bool, form: str) -> None:
    """Create the folders; refuse to mix with a previous dataset unless told to replace it.

    Leftover images from a bigger earlier run, or from another form, would otherwise sit next to
    metadata that does not list them.
    """
    existing = _dataset_files(output_dir)
    if existing and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a dataset ({len(existing)} files); "
            "pass overwrite=True (--overwrite) to replace it"
        )
    for path in existing:
        path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    for folder in IMAGE_FOLDERS:
        if form in FOLDER_FORMS:
            (output_dir / folder).mkdir(exist_ok=True)
        elif (output_dir / folder).is_dir() and not any((output_dir / folder).iterdir()):
            (output_dir / folder).rmdir()  # emptied above: a zipped dataset has no part folders


def _chunks(tasks: list, size: int) -> Iterable[list]:
    return (tasks[start : start + size] for start in range(0, len(tasks), size))


def _render_all(seed: int, tasks: list[tuple[int, int, str, str]], workers: int) -> None:
    """Render every task, in this process or a pool; the output never depends on the split."""
    # Small chunks keep all workers busy to the end; big enough that task overhead stays negligible.
    chunk_size = max(1, min(64, math.ceil(len(tasks) / (workers * 8))))
    if workers == 1 or len(tasks) <= chunk_size:
        save_images(seed, tasks)
        return
    chunks = list(_chunks(tasks, chunk_size))
    # Spawned workers, not forked: the caller may hold threads (Spark, TensorFlow) that fork would copy
    # mid-lock; a fresh interpreter costs about a second.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
        written = sum(pool.map(save_images, [seed] * len(chunks), chunks))
    if written != len(tasks):
        raise RuntimeError(f"wrote {written} of {len(tasks)} images")


def _render_tasks(metadata: pd.DataFrame, root: Path) -> list[tuple[int, int, str, str]]:
    """(image number, lesion number, label, JPEG path under `root`'s part folders), by image number."""
    images = len(metadata)
    return sorted(
        (
            id_number(image_id),
            id_number(lesion_id),
            label,
            str(root / part_folder(id_number(image_id), images) / f"{image_id}.jpg"),
        )
        for lesion_id, label, image_id in zip(
            metadata["lesion_id"], metadata["dx"], metadata["image_id"], strict=True
        )
    )


def _write_images(
    metadata: pd.DataFrame, output_dir: Path, seed: int, workers: int, form: str, zip_compression: str | None
) -> dict:
    """Render every image and leave it in `form`; returns the summary's entries that say where."""
    if form == FOLDERS:
        _render_all(seed, _render_tasks(metadata, output_dir), workers)
        return {"image_folders": [str(output_dir / folder) for folder in IMAGE_FOLDERS]}
    # The other forms package the same JPEGs; a staging folder beside them (same file system) holds the
    # rendered files until then and goes, with whatever is in it, even when the run fails.
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=output_dir) as staging:
        staging = Path(staging)
        for folder in IMAGE_FOLDERS:
            (staging / folder).mkdir()
        _render_all(seed, _render_tasks(metadata, staging), workers)
        if form == DATAVERSE:
            archives = write_archives(staging, output_dir, zip_compression, workers)
            return {"archives": [str(path) for path in archives], "zip_compression": zip_compression}
        lesion_ids = dict(zip(metadata["image_id"], metadata["lesion_id"], strict=True))
        folders = write_dicoms(staging, output_dir, lesion_ids)
        return {"image_folders": [str(path) for path in folders]}


def _write_metadata(metadata: pd.DataFrame, output_dir: Path, form: str) -> Path:
    """Write the metadata file of `form` (Dataverse's .tab or the CSV); returns its path."""
    if form == DATAVERSE:
        path = output_dir / DATAVERSE_METADATA_FILE
        write_tab(metadata, path)
    else:
        path = output_dir / METADATA_FILE
        metadata.to_csv(path, index=False, lineterminator="\n")
    return path


def generate(
    output_dir: str | os.PathLike,
    images: int = HAM10000_IMAGES,
    seed: int = 42,
    workers: int | None = None,
    legacy_columns: bool = False,
    overwrite: bool = False,
    form: str = FOLDERS,
    zip_compression: str | None = None,
) -> dict:
    """Write a synthetic HAM10000 dataset to `output_dir` and return a summary.

    Takes the output folder (created if missing), the number of images (>= 1; from 7 up every class has
    at least one image), a non-negative seed, the number of worker processes (default os.cpu_count()),
    whether to write the older 7-column metadata without `dataset`, whether to replace a dataset (of any
    form) already in the folder, the form (`folders`: JPEGs in the part folders and the CSV;
    `dataverse`: the two zips and the .tab; `dicom`: `.dcm` files in the part folders and the CSV) and,
    for `dataverse` only, the zip compression (`stored` or `deflated`, the default).

    Returns a dict with images, lesions, class_counts (label -> images), seconds, images_per_second,
    metadata_path (the CSV, or the .tab for dataverse), output_dir, seed, workers, form, and where the
    images are: archives (the zip paths) and zip_compression for dataverse, image_folders otherwise.

    Raises ValueError for bad arguments, FileExistsError if the folder already holds a dataset and
    overwrite is False, and ImportError (one line naming the extra) for the dicom form without pydicom 3;
    all before anything is written.
    """
    check_images(images)
    check_seed(seed)
    workers = _check_workers(workers)
    zip_compression = check_form(form, zip_compression)
    if form == DICOM:
        require_pydicom()
    started = time.perf_counter()
    output_dir = Path(output_dir)
    metadata = make_metadata(images, seed)
    _prepare_output(output_dir, overwrite, form)
    where = _write_images(metadata, output_dir, seed, workers, form, zip_compression)
    # The metadata goes last, so an interrupted run never leaves metadata that points at missing images.
    columns = list(METADATA_COLUMNS if legacy_columns else CURRENT_METADATA_COLUMNS)
    metadata_path = _write_metadata(metadata[columns], output_dir, form)
    seconds = time.perf_counter() - started
    class_counts = {label: int((metadata["dx"] == label).sum()) for label in LABELS}
    return {
        "images": int(len(metadata)),
        "lesions": int(metadata["lesion_id"].nunique()),
        "class_counts": class_counts,
        "seconds": seconds,
        "images_per_second": len(metadata) / seconds if seconds > 0 else float("inf"),
        "metadata_path": str(metadata_path),
        "output_dir": str(output_dir),
        "seed": int(seed),
        "workers": workers,
        "form": form,
        **where,
    }


def _images_line(summary: dict) -> str:
    """Where a generate() summary's images were written: the zips, or the part folders and file type."""
    if summary["form"] == DATAVERSE:
        return f"images: {', '.join(summary['archives'])} ({summary['zip_compression']} zips)"
    kind = "DICOM" if summary["form"] == DICOM else "JPEG"
    return f"images: {', '.join(summary['image_folders'])} ({kind} files)"


def format_summary(summary: dict) -> str:
    """A short human-readable report of a generate() summary."""
    classes = ", ".join(f"{label} {count}" for label, count in summary["class_counts"].items())
    return (
        f"wrote {summary['images']} images of {summary['lesions']} lesions to {summary['output_dir']} "
        f"({summary['form']} form)\n"
        f"classes: {classes}\n"
        f"{summary['seconds']:.1f} s, {summary['images_per_second']:.0f} images/s "
        f"({summary['workers']} workers)\n"
        f"{_images_line(summary)}\n"
        f"metadata: {summary['metadata_path']}"
    )


def args_parser() -> argparse.ArgumentParser:
    """The command-line parser of `python -m skinspark.tools.synthetic`."""
    parser = argparse.ArgumentParser(
        prog="skinspark-synthetic",
        description="Write a synthetic dataset laid out exactly like the HAM10000 download.",
    )
    parser.add_argument("--output", required=True, help="folder to write into (created if missing)")
    parser.add_argument(
        "--images",
        type=int,
        default=HAM10000_IMAGES,
        help="number of images (default: %(default)s, the real count; >= 7 for all classes)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: the number of CPUs)"
    )
    parser.add_argument(
        "--legacy-columns",
        action="store_true",
        help="write the older 7-column metadata CSV without `dataset`",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in the output folder"
    )
    parser.add_argument(
        "--form",
        choices=FORMS,
        default=FOLDERS,
        help="folders: JPEGs in the two part folders and the CSV; dataverse: the two part zips and "
        "HAM10000_metadata.tab, as Harvard Dataverse serves them; dicom: <image_id>.dcm files wrapping "
        "the JPEGs in the part folders and the CSV, needs skinspark[dicom] (default: %(default)s)",
    )
    parser.add_argument(
        "--zip-compression",
        choices=tuple(ZIP_COMPRESSIONS),
        default=None,
        help=f"how the dataverse form's zips hold the JPEGs (default: {DEFAULT_ZIP_COMPRESSION}, as "
        "Dataverse's are)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 for bad arguments)."""
    parser = args_parser()
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.output,
            images=args.images,
            seed=args.seed,
            workers=args.workers,
            legacy_columns=args.legacy_columns,
            overwrite=args.overwrite,
            form=args.form,
            zip_compression=args.zip_compression,
        )
    except (ValueError, FileExistsError, ImportError) as error:
        parser.error(str(error))  # exits with status 2 and the usage line
    print(format_summary(summary))
    return 0
