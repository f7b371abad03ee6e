"""Tests of the generator's download forms: Dataverse's zips and .tab, and DICOM files wrapping the JPEGs.

Every form is held against a `folders` run of the same seed and size: the images must be the same bytes
and the metadata the same rows, only packaged differently.
"""

from __future__ import annotations

import csv
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinspark.schema import (
    AGE,
    DATAVERSE_IMAGE_ARCHIVES,
    DATAVERSE_METADATA_FILE,
    IMAGE_FOLDERS,
    METADATA_FILE,
)
from skinspark.tools import synthetic
from skinspark.tools.synthetic.dicom import jpeg_to_dicom, rgb_to_dicom
from skinspark.tools.synthetic.forms import write_tab

IMAGES = 20
SEED = 7
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def pydicom():
    reason = "the dicom extra (pydicom 3) is not installed"
    return pytest.importorskip("pydicom", minversion="3", reason=reason)


@pytest.fixture(scope="module")
def folders_run(tmp_path_factory) -> Path:
    """The reference: the default form, one worker."""
    output = tmp_path_factory.mktemp("folders")
    synthetic.generate(output, images=IMAGES, seed=SEED, workers=1)
    return output


@pytest.fixture(scope="module")
def dataverse_run(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("dataverse")
    summary = synthetic.generate(output, images=IMAGES, seed=SEED, workers=2, form="dataverse")
    return output, summary


@pytest.fixture(scope="module")
def dicom_run(pydicom, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("dicom")
    summary = synthetic.generate(output, images=IMAGES, seed=SEED, workers=1, form="dicom")
    return output, summary


def _folder_files(output: Path, folder: str, suffix: str) -> dict[str, bytes]:
    """File name -> bytes of every `*suffix` file in one part folder."""
    return {path.name: path.read_bytes() for path in sorted((output / folder).glob(f"*{suffix}"))}


def _zip_members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def _zip_methods(archive: Path) -> set[int]:
    with zipfile.ZipFile(archive) as bundle:
        return {member.compress_type for member in bundle.infolist()}


def _csv_rows(path: Path, delimiter: str) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter=delimiter))


# ------------------------------------------------------------------ dataverse


def test_dataverse_zips_hold_exactly_the_folders_images(folders_run, dataverse_run):
    output, summary = dataverse_run
    for folder, archive in zip(IMAGE_FOLDERS, DATAVERSE_IMAGE_ARCHIVES, strict=True):
        expected = _folder_files(folders_run, folder, ".jpg")
        assert expected  # 20 images fill both parts
        members = _zip_members(output / archive)
        assert list(members) == sorted(expected)  # at the zip's root, in name order
        assert members == expected
    # Nothing but the three files Dataverse serves: no loose JPEGs, part folders or staging folder.
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [*DATAVERSE_IMAGE_ARCHIVES, DATAVERSE_METADATA_FILE]
    )
    assert summary["form"] == "dataverse"
    assert summary["archives"] == [str(output / name) for name in DATAVERSE_IMAGE_ARCHIVES]
    assert summary["metadata_path"] == str(output / DATAVERSE_METADATA_FILE)
    assert summary["images"] == IMAGES


def test_dataverse_tab_has_the_rows_of_the_csv(folders_run, dataverse_run):
    output, _ = dataverse_run
    csv_rows = _csv_rows(folders_run / METADATA_FILE, ",")
    tab_rows = _csv_rows(output / DATAVERSE_METADATA_FILE, "\t")
    assert tab_rows[0] == csv_rows[0]
    age = csv_rows[0].index(AGE)
    assert len(tab_rows) == len(csv_rows) == IMAGES + 1
    for tab_row, csv_row in zip(tab_rows[1:], csv_rows[1:], strict=True):
        assert tab_row[:age] + tab_row[age + 1 :] == csv_row[:age] + csv_row[age + 1 :]
        tab_age, csv_age = tab_row[age], csv_row[age]
        assert (tab_age == csv_age == "") or float(tab_age) == float(csv_age)
    # Dataverse's layout on disk: the header bare, text quoted, the age a bare number.
    lines = (output / DATAVERSE_METADATA_FILE).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "\t".join(csv_rows[0])
    for line in lines[1:]:
        fields = line.split("\t")
        text = fields[:age] + fields[age + 1 :]
        assert all(field.startswith('"') and field.endswith('"') for field in text)
        assert fields[age] == "" or fields[age].isdigit()


def test_write_tab_quotes_text_leaves_numbers_bare_and_a_missing_age_empty(tmp_path):
    metadata = pd.DataFrame(
        {
            "lesion_id": ["HAM_0000118", "HAM_0000119", "HAM_0000120"],
            "image_id": ["ISIC_0027419", "ISIC_0027420", "ISIC_0027421"],
            "dx": ["bkl", "nv", "mel"],
            "age": [80.0, np.nan, 42.5],
            "sex": ["male", "female", "unknown"],
        }
    )
    path = tmp_path / DATAVERSE_METADATA_FILE
    write_tab(metadata, path)
    assert path.read_text(encoding="utf-8").splitlines() == [
        "lesion_id\timage_id\tdx\tage\tsex",
        '"HAM_0000118"\t"ISIC_0027419"\t"bkl"\t80\t"male"',
        '"HAM_0000119"\t"ISIC_0027420"\t"nv"\t\t"female"',
        '"HAM_0000120"\t"ISIC_0027421"\t"mel"\t42.5\t"unknown"',
    ]
    with pytest.raises(ValueError, match="tab"):
        write_tab(metadata.assign(sex=["male", "fe\tmale", "unknown"]), tmp_path / "bad.tab")


def test_stored_and_deflated_zips_use_their_method_and_hold_the_same_bytes(dataverse_run, tmp_path):
    deflated, _ = dataverse_run
    summary = synthetic.generate(
        tmp_path, images=IMAGES, seed=SEED, workers=1, form="dataverse", zip_compression="stored"
    )
    assert summary["zip_compression"] == "stored"
    for archive in DATAVERSE_IMAGE_ARCHIVES:
        assert _zip_methods(tmp_path / archive) == {zipfile.ZIP_STORED}
        assert _zip_methods(deflated / archive) == {zipfile.ZIP_DEFLATED}
        assert _zip_members(tmp_path / archive) == _zip_members(deflated / archive)


def test_dataverse_archives_are_byte_identical_whatever_the_workers(dataverse_run, tmp_path):
    first, _ = dataverse_run  # two workers
    synthetic.generate(tmp_path, images=IMAGES, seed=SEED, workers=1, form="dataverse")
    for name in (*DATAVERSE_IMAGE_ARCHIVES, DATAVERSE_METADATA_FILE):
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name


def test_zip_compression_is_checked_and_belongs_to_dataverse(tmp_path):
    with pytest.raises(ValueError, match="zip compression must be one of"):
        synthetic.generate(tmp_path / "out", images=IMAGES, form="dataverse", zip_compression="bzip2")
    with pytest.raises(ValueError, match="dataverse form only"):
        synthetic.generate(tmp_path / "out", images=IMAGES, form="folders", zip_compression="stored")
    with pytest.raises(ValueError, match="form must be one of"):
        synthetic.generate(tmp_path / "out", images=IMAGES, form="tarball")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--output", str(tmp_path / "out"), "--zip-compression", "stored"])
    assert exit_info.value.code == 2


def test_a_dataset_of_another_form_is_refused_then_replaced_on_overwrite(tmp_path):
    synthetic.generate(tmp_path, images=8, seed=1, workers=1)
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path, images=8, seed=1, workers=1, form="dataverse")
    synthetic.generate(tmp_path, images=8, seed=1, workers=1, form="dataverse", overwrite=True)
    # The folders run's JPEGs, CSV and (now empty) part folders are gone.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [*DATAVERSE_IMAGE_ARCHIVES, DATAVERSE_METADATA_FILE]
    )
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path, images=8, seed=1, workers=1)


def test_main_prints_what_the_dataverse_form_wrote(tmp_path, capsys):
    status = synthetic.main(
        ["--output", str(tmp_path), "--images", "9", "--workers", "1", "--form", "dataverse"]
        + ["--zip-compression", "stored"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    for name in (*DATAVERSE_IMAGE_ARCHIVES, DATAVERSE_METADATA_FILE):
        assert str(tmp_path / name) in printed
    assert "stored" in printed and "dataverse" in printed


# ------------------------------------------------------------------ dicom


def test_dicom_files_wrap_the_folders_jpegs_unchanged(pydicom, folders_run, dicom_run):
    from pydicom.encaps import generate_frames

    output, summary = dicom_run
    lesions = pd.read_csv(folders_run / METADATA_FILE).set_index("image_id")["lesion_id"]
    instances = set()
    for folder in IMAGE_FOLDERS:
        jpegs = _folder_files(folders_run, folder, ".jpg")
        dicoms = _folder_files(output, folder, ".dcm")
        assert sorted(Path(name).stem for name in dicoms) == sorted(Path(name).stem for name in jpegs)
        assert not list((output / folder).glob("*.jpg"))
        for name, data in dicoms.items():
            image_id = Path(name).stem
            assert data[128:132] == b"DICM"  # Part 10: 128-byte preamble, then the magic
            dataset = pydicom.dcmread(io.BytesIO(data))
            assert dataset.file_meta.TransferSyntaxUID == JPEG_BASELINE
            assert dataset.SOPClassUID == dataset.file_meta.MediaStorageSOPClassUID == DERMOSCOPIC_PHOTOGRAPHY
            assert dataset.SOPInstanceUID == dataset.file_meta.MediaStorageSOPInstanceUID
            assert dataset.PatientID == lesions[image_id]
            assert (dataset.Rows, dataset.Columns, dataset.SamplesPerPixel) == (450, 600, 3)
            assert dataset.PhotometricInterpretation == "YBR_FULL_422"
            assert (dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit) == (8, 8, 7)
            assert dataset.PixelRepresentation == dataset.PlanarConfiguration == 0
            frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
            jpeg = jpegs[f"{image_id}.jpg"]
            # DICOM items have even lengths: an odd-length JPEG gets one zero byte after its end marker.
            assert frame == jpeg + b"\x00" * (len(jpeg) % 2)
            instances.add(dataset.SOPInstanceUID)
    assert len(instances) == IMAGES
    assert (output / METADATA_FILE).read_bytes() == (folders_run / METADATA_FILE).read_bytes()
    assert summary["form"] == "dicom"
    assert summary["image_folders"] == [str(output / folder) for folder in IMAGE_FOLDERS]
    assert not [path for path in output.iterdir() if path.name.startswith(".")]  # no staging left


def test_rgb_to_dicom_round_trips_rgb_and_grey_pixels(pydicom, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)
    for pixels, monochrome, photometric in ((rgb, False, "RGB"), (rgb[:, :, 1], True, "MONOCHROME2")):
        path = tmp_path / f"{photometric}.dcm"
        rgb_to_dicom(pixels, path, "ISIC_0000001", "HAM_0000001", monochrome=monochrome)
        dataset = pydicom.dcmread(path)
        assert dataset.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
        assert dataset.SOPClassUID == DERMOSCOPIC_PHOTOGRAPHY
        assert dataset.PhotometricInterpretation == photometric
        np.testing.assert_array_equal(dataset.pixel_array, pixels)
    with pytest.raises(ValueError, match="rows x columns x 3"):
        rgb_to_dicom(rgb[:, :, 0], tmp_path / "flat.dcm", "ISIC_0000001", "HAM_0000001")
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_dicom(rgb.astype(np.uint16), tmp_path / "wide.dcm", "ISIC_0000001", "HAM_0000001")


def test_jpeg_to_dicom_writes_to_a_buffer_and_refuses_what_is_not_a_baseline_colour_jpeg(pydicom):
    image = Image.new("RGB", (32, 24), (200, 120, 90))
    jpeg, progressive, png = io.BytesIO(), io.BytesIO(), io.BytesIO()
    image.save(jpeg, "JPEG", quality=90)
    image.save(progressive, "JPEG", quality=90, progressive=True)
    image.save(png, "PNG")
    buffer = io.BytesIO()
    jpeg_to_dicom(jpeg.getvalue(), buffer, "ISIC_0000002", "HAM_0000002")
    dataset = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert (dataset.Rows, dataset.Columns) == (24, 32)
    for data in (progressive.getvalue(), png.getvalue(), b"not an image"):
        with pytest.raises(ValueError):
            jpeg_to_dicom(data, io.BytesIO(), "ISIC_0000002", "HAM_0000002")


def test_dicom_form_without_pydicom_is_one_error_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--output", str(tmp_path / "out"), "--images", "5", "--form", "dicom"])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "pip install 'skinspark[dicom]'" in error_lines[0]
    assert not (tmp_path / "out").exists()
