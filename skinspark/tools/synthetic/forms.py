"""The public download forms a synthetic dataset can take, and the packaging of rendered JPEGs into
them: Harvard Dataverse's two zips and `.tab`, or one DICOM file per image.

The JPEGs are rendered first, the same bytes in every form, into the part folders of `folders` or into
a staging folder that these functions package and the caller then removes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd

from skinspark.schema import DATAVERSE_IMAGE_ARCHIVES, IMAGE_FOLDERS
from skinspark.tools.synthetic.dicom import SUFFIX as DICOM_SUFFIX
from skinspark.tools.synthetic.dicom import jpeg_to_dicom

# folders: the two part folders of JPEGs and the CSV, as the unzipped download lays them out.
# dataverse: HAM10000 as Harvard Dataverse serves it (two zips and a tab-separated `.tab`).
# dicom: each image as `<image_id>.dcm` wrapping its JPEG, in the part folders, and the CSV.
FOLDERS, DATAVERSE, DICOM = "folders", "dataverse", "dicom"
FORMS: tuple[str, ...] = (FOLDERS, DATAVERSE, DICOM)
# The forms whose images sit loose in the two part folders.
FOLDER_FORMS: tuple[str, ...] = (FOLDERS, DICOM)
ZIP_COMPRESSIONS: dict[str, int] = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}
DEFAULT_ZIP_COMPRESSION = "deflated"  # Dataverse's zips are deflated (JPEGs shrink by well under 1%)
# Zip's earliest date: every member gets it, so the same images always give the same archive bytes.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o644 << 16  # a plain file, rw-r--r--, in the member's Unix attributes


def check_form(form: str, zip_compression: str | None) -> str | None:
    """The zip compression a form is written with: `zip_compression` or the default for dataverse,
    None for the forms without zips.

    Raises:
        ValueError: an unknown form or compression, or a compression given for a form without zips.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if form != DATAVERSE:
        if zip_compression is not None:
            raise ValueError(f"zip compression applies to the {DATAVERSE} form only, not {form}")
        return None
    zip_compression = DEFAULT_ZIP_COMPRESSION if zip_compression is None else zip_compression
    if zip_compression not in ZIP_COMPRESSIONS:
        choices = ", ".join(ZIP_COMPRESSIONS)
        raise ValueError(f"zip compression must be one of {choices}, got {zip_compression!r}")
    return zip_compression


def write_archives(staging: Path, output_dir: Path, compression: str, workers: int) -> list[Path]:
    """Zip each staged part folder into its Dataverse archive in `output_dir`.

    Takes the folder holding the two rendered part folders, the output folder, a `ZIP_COMPRESSIONS` key
    and the most threads to use. Returns the archive paths, part 1 first.
    """
    archives = [output_dir / name for name in DATAVERSE_IMAGE_ARCHIVES]
    folders = [staging / folder for folder in IMAGE_FOLDERS]
    # zlib lets go of the GIL while it deflates, so one thread per archive zips the parts at once.
    with ThreadPoolExecutor(max_workers=min(workers, len(archives))) as pool:
        list(pool.map(partial(write_archive, compression=compression), folders, archives))
    return archives


def write_archive(folder: Path, archive: Path, compression: str) -> None:
    """Zip every file of `folder` at the root of `archive` (replaced if present), in name order.

    Takes a `ZIP_COMPRESSIONS` key. Members carry a fixed timestamp, so the archive's bytes depend on
    the files' names and bytes only.
    """
    method = ZIP_COMPRESSIONS[compression]
    with zipfile.ZipFile(archive, "w", compression=method) as bundle:
        for path in sorted(folder.iterdir()):
            member = zipfile.ZipInfo(path.name, date_time=ZIP_TIMESTAMP)
            member.compress_type = method
            member.external_attr = ZIP_FILE_MODE
            bundle.writestr(member, path.read_bytes())


def write_dicoms(staging: Path, output_dir: Path, lesion_ids: Mapping[str, str]) -> list[Path]:
    """Wrap each staged JPEG as `<image_id>.dcm` in the same part folder of `output_dir`.

    Takes the folder holding the two rendered part folders, the output folder (its part folders
    existing) and image id -> lesion id, the DICOM Patient ID. Returns the two part folders of
    `output_dir`. Raises ImportError without pydicom 3.
    """
    for folder in IMAGE_FOLDERS:
        for jpeg in sorted((staging / folder).iterdir()):
            image_id = jpeg.stem
            target = output_dir / folder / f"{image_id}{DICOM_SUFFIX}"
            jpeg_to_dicom(jpeg.read_bytes(), target, image_id, lesion_ids[image_id])
    return [output_dir / folder for folder in IMAGE_FOLDERS]


def write_tab(metadata: pd.DataFrame, path: Path) -> None:
    """Write `metadata` as Dataverse's tab-separated export of a table.

    A header line of the column names, then one line per row: text in double quotes, numbers bare (80,
    not 80.0, when whole), a missing value as an empty field, for example
    `"HAM_0000118"\\t"ISIC_0027419"\\t"bkl"\\t"histo"\\t80\\t"male"\\t"scalp"\\t"vidir_modern"`.

    Raises:
        ValueError: a text field holds a tab, a line break or a double quote, which this layout cannot
            carry unambiguously.
    """
    numeric = [pd.api.types.is_numeric_dtype(metadata[column]) for column in metadata.columns]
    lines = ["\t".join(metadata.columns)]
    for row in metadata.itertuples(index=False, name=None):
        fields = (_tab_field(value, is_number) for value, is_number in zip(row, numeric, strict=True))
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tab_field(value, is_number: bool) -> str:
    if pd.isna(value):
        return ""
    if is_number:
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value)
    if any(character in text for character in '\t\r\n"'):
        raise ValueError(f"cannot write {text!r} to a .tab file: it holds a tab, line break or double quote")
    return f'"{text}"'
