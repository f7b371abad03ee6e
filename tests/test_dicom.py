"""DICOM inputs: the image inside decodes exactly as the same JPEG or pixels would, a broken or
unsupported DICOM is a row with its reason, and scoring and ingest of DICOM files (in folders and in
zips) give what the JPEGs themselves give."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, features

from jobs import ingest as ingest_job
from jobs import score as score_job
from skinspark import schema
from skinspark.errors import ImageError
from skinspark.images import dicom
from skinspark.preprocess import decode_image, decode_many, decode_noted
from skinspark.score import ERROR_REASON, PATH
from skinspark.score.columns import NOTE
from tests.conftest import generated_dataset, tiny_model_dir

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import convert_color_space  # noqa: E402
from pydicom.uid import UID, generate_uid  # noqa: E402

DERMOSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
JPEG_LS = "1.2.840.10008.1.2.4.80"
PROBS = list(schema.PROB_COLUMNS)


def _dicom(
    pixel_data: bytes | None,
    *,
    syntax: str,
    photometric: str,
    shape: tuple[int, int],
    samples: int = 3,
    frames: int = 1,
    bits: tuple[int, int] = (8, 8),
    planar: int = 0,
) -> bytes:
    """A Dermoscopic Photography DICOM file (Part 10) holding `pixel_data` as given (None: none)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DERMOSCOPY)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "XC"
    dataset.Rows, dataset.Columns = shape
    dataset.SamplesPerPixel = samples
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored = bits
    dataset.HighBit = bits[1] - 1
    dataset.PixelRepresentation = 0
    if samples == 3:
        dataset.PlanarConfiguration = planar
    if frames > 1:
        dataset.NumberOfFrames = frames
    if pixel_data is not None:
        dataset.PixelData = pixel_data
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _jpeg_dicom(*jpegs: bytes) -> bytes:
    """JPEG baseline DICOM: each JPEG file one encapsulated frame."""
    width, height = Image.open(io.BytesIO(jpegs[0])).size
    return _dicom(
        encapsulate(list(jpegs)),
        syntax=JPEG_BASELINE,
        photometric="YBR_FULL_422",
        shape=(height, width),
        frames=len(jpegs),
    )


def _native_dicom(pixels: np.ndarray, syntax: str = EXPLICIT_LE, **options) -> bytes:
    """Uncompressed DICOM of a (rows, columns, 3) RGB or (rows, columns) MONOCHROME2 uint8 array."""
    rgb = pixels.ndim == 3
    options = {"photometric": "RGB" if rgb else "MONOCHROME2", "samples": 3 if rgb else 1, **options}
    return _dicom(pixels.tobytes(), syntax=syntax, shape=pixels.shape[:2], **options)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    generated_dataset(root, images=10, seed=29, workers=1)
    return root


def _jpegs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpg"), key=lambda path: path.name)


# --------------------------------------------------------------------------------------------------
# Decoding, no Spark


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_a_jpeg_baseline_dicom_decodes_exactly_as_its_jpeg(generated, decoder):
    for path in _jpegs(generated)[:3]:
        jpeg = path.read_bytes()
        wrapped = _jpeg_dicom(jpeg)
        assert dicom.is_dicom(wrapped) and not dicom.is_dicom(jpeg)
        image = dicom.unwrap(wrapped)
        # The frame is the JPEG file, padded to an even length as DICOM fragments are.
        assert image.jpeg in (jpeg, jpeg + b"\x00") and image.pixels is None and image.note is None
        expected = decode_image(jpeg, 75, 100, decoder)
        assert np.array_equal(decode_image(wrapped, 75, 100, decoder), expected)
        assert decode_noted(wrapped, 75, 100, decoder)[1] is None


@pytest.mark.parametrize(
    ("syntax", "planar"),
    [(EXPLICIT_LE, 0), (IMPLICIT_LE, 0), (EXPLICIT_LE, 1)],
    ids=["explicit", "implicit", "planar"],
)
def test_uncompressed_rgb_decodes_as_the_same_pixels_in_a_png(generated, syntax, planar):
    pixels = np.asarray(Image.open(_jpegs(generated)[0]).convert("RGB"))
    data = pixels.transpose(2, 0, 1).tobytes() if planar else pixels.tobytes()
    wrapped = _dicom(data, syntax=syntax, photometric="RGB", shape=pixels.shape[:2], planar=planar)
    assert np.array_equal(dicom.unwrap(wrapped).pixels, pixels)
    assert np.array_equal(decode_image(wrapped, 75, 100), decode_image(_png(pixels), 75, 100))


def test_monochrome_becomes_three_equal_channels():
    grey = np.random.default_rng(4).integers(0, 256, (90, 120), dtype=np.uint8)
    decoded = decode_image(_native_dicom(grey), 75, 100)
    assert decoded.shape == (75, 100, 3)
    assert np.array_equal(decoded[..., 0], decoded[..., 1]) and np.array_equal(
        decoded[..., 1], decoded[..., 2]
    )
    assert np.array_equal(decoded, decode_image(_png(grey), 75, 100))
    # MONOCHROME1 says 0 is white: the same stored values decode inverted.
    inverted = decode_image(_native_dicom(grey, photometric="MONOCHROME1"), 75, 100)
    assert np.array_equal(inverted, decode_image(_png(255 - grey), 75, 100))
    # 12 bits stored in 16: the top 8 of the 12 are kept.
    deep = grey.astype(np.uint16) << 4 | 0x9
    wide = _native_dicom(deep.astype("<u2"), bits=(16, 12))
    assert np.array_equal(decode_image(wide, 75, 100), decode_image(_png(grey), 75, 100))


@pytest.mark.parametrize("form", ["native YBR_FULL", "JPEG extended YBR_FULL_422"])
def test_ycbcr_pixels_are_made_rgb_once(generated, form):
    jpeg = _jpegs(generated)[0].read_bytes()
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    if form == "native YBR_FULL":  # uncompressed: the RGB pixels converted to YCbCr by pydicom itself
        ycbcr = convert_color_space(rgb, "RGB", "YBR_FULL")
        data = _dicom(ycbcr.tobytes(), syntax=EXPLICIT_LE, photometric="YBR_FULL", shape=rgb.shape[:2])
    else:  # a baseline JPEG is valid 8-bit JPEG Extended data, decoded through pydicom's own plugins
        data = _dicom(
            encapsulate([jpeg]), syntax=JPEG_EXTENDED, photometric="YBR_FULL_422", shape=rgb.shape[:2]
        )
    pixels = dicom.unwrap(data).pixels
    difference = int(np.abs(pixels.astype(np.int16) - rgb.astype(np.int16)).max())
    assert difference <= 2, f"{form}: decoded pixels differ from the RGB image by up to {difference}"
    assert np.abs(decode_image(data, 75, 100).astype(np.int16) - decode_image(_png(rgb), 75, 100)).max() <= 2


@pytest.mark.parametrize("photometric", ["RGB", "YBR_RCT"])
def test_a_lossless_jpeg_2000_dicom_decodes_to_its_pixels(generated, photometric):
    if not features.check("jpg_2000"):
        pytest.skip("Pillow is built without OpenJPEG")
    rgb = np.asarray(Image.open(_jpegs(generated)[0]).convert("RGB"))
    codestream = io.BytesIO()
    # Reversible wavelet and colour transform: DICOM labels such data YBR_RCT (PS3.5 8.2.4); RGB is seen too.
    Image.fromarray(rgb).save(codestream, "JPEG2000", irreversible=False, mct=1, no_jp2=True)
    data = _dicom(
        encapsulate([codestream.getvalue()]), syntax=JPEG_2000, photometric=photometric, shape=rgb.shape[:2]
    )
    (result,) = decode_many([data], 75, 100)
    assert result.reason is None, f"{photometric}: {result.reason}: {result.message}"
    assert np.array_equal(result.pixels, decode_image(_png(rgb), 75, 100))


def test_a_multi_frame_dicom_gives_frame_one_and_says_so(generated):
    first, second = (path.read_bytes() for path in _jpegs(generated)[:2])
    pixels, note = decode_noted(_jpeg_dicom(first, second), 75, 100)
    assert np.array_equal(pixels, decode_image(first, 75, 100))
    assert not np.array_equal(pixels, decode_image(second, 75, 100))
    assert "2 frames" in note and "frame 1" in note
    (result,) = decode_many([_jpeg_dicom(first, second)], 75, 100)
    assert result.note == note and np.array_equal(result.pixels, pixels)
    # Uncompressed frames too.
    frames = np.random.default_rng(5).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    native = _dicom(frames.tobytes(), syntax=EXPLICIT_LE, photometric="RGB", shape=(60, 80), frames=2)
    pixels, note = decode_noted(native, 75, 100)
    assert np.array_equal(pixels, decode_image(_png(frames[0]), 75, 100))
    assert "2 frames" in note and "frame 1" in note


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_broken_and_unsupported_dicoms_are_rows_with_a_reason(generated):
    jpeg = _jpegs(generated)[0].read_bytes()
    whole = _jpeg_dicom(jpeg)
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    native = _native_dicom(pixels)
    no_pixels = _dicom(None, syntax=EXPLICIT_LE, photometric="RGB", shape=pixels.shape[:2])
    cut_frame = _jpeg_dicom(jpeg[: len(jpeg) // 2])  # a whole DICOM around half a JPEG
    junk = encapsulate([b"\x00\x01junk" * 64])
    jpeg_2000 = _dicom(junk, syntax=JPEG_2000, photometric="RGB", shape=pixels.shape[:2])
    jpeg_ls = _dicom(junk, syntax=JPEG_LS, photometric="RGB", shape=pixels.shape[:2])
    inputs = {
        "good": whole,
        "no pixels": no_pixels,
        "cut in half": whole[: len(whole) // 2],
        "native cut in half": native[: len(native) // 2],
        "preamble only": whole[:132],
        "cut frame": cut_frame,
        "not dicom": b"a .dcm file that holds text, not DICOM\n" * 20,
        "jpeg 2000": jpeg_2000,
        "jpeg-ls": jpeg_ls,
    }
    results = dict(zip(inputs, decode_many(list(inputs.values()), 75, 100), strict=True))
    assert results["good"].reason is None and results["good"].pixels is not None
    for name, result in results.items():
        if name != "good":
            assert result.pixels is None and result.reason and result.message, name
    assert results["no pixels"].reason == schema.REASON_INVALID_DICOM
    assert "Pixel Data" in results["no pixels"].message
    for name in ("cut in half", "native cut in half", "preamble only"):
        assert results[name].reason in {schema.REASON_INVALID_DICOM, schema.REASON_TRUNCATED}, name
    assert results["cut frame"].reason == schema.REASON_TRUNCATED
    assert results["not dicom"].reason == schema.REASON_UNDECODABLE
    for name, syntax in (("jpeg 2000", JPEG_2000), ("jpeg-ls", JPEG_LS)):
        assert results[name].reason == schema.REASON_UNSUPPORTED_DICOM, name
        assert syntax in results[name].message
    with pytest.raises(ImageError) as raised:
        dicom.unwrap(no_pixels)
    assert raised.value.reason == schema.REASON_INVALID_DICOM


# --------------------------------------------------------------------------------------------------
# Scoring and ingest


@pytest.fixture(scope="module")
def dicoms(generated, tmp_path_factory) -> dict:
    """Each generated JPEG as `<image_id>.dcm` in a folder (the first with a second frame), the same
    files as members of a zip, and a folder of two broken .dcm files."""
    root = tmp_path_factory.mktemp("dicoms")
    folder, broken = root / "dicoms", root / "broken"
    folder.mkdir()
    broken.mkdir()
    jpegs = _jpegs(generated)
    for index, path in enumerate(jpegs):
        frames = [path.read_bytes(), jpegs[-1].read_bytes()] if index == 0 else [path.read_bytes()]
        (folder / f"{path.stem}.dcm").write_bytes(_jpeg_dicom(*frames))
    zipped = root / "dicoms.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.glob("*.dcm")):
            archive.write(path, f"study/{path.name}")
    (broken / "ISIC_broken.dcm").write_bytes(b"not DICOM at all" * 50)
    shape = (450, 600)
    (broken / "ISIC_nopixels.dcm").write_bytes(
        _dicom(None, syntax=EXPLICIT_LE, photometric="RGB", shape=shape)
    )
    return {"folder": folder, "zip": zipped, "broken": broken, "multi_frame": jpegs[0].stem, "jpegs": jpegs}


@pytest.mark.slow
def test_scoring_dicoms_in_a_folder_and_a_zip_gives_the_jpegs_probabilities(
    spark, generated, dicoms, tmp_path
):
    model = tiny_model_dir(tmp_path / "model")
    output = tmp_path / "predictions"
    jpeg_folders = [str(generated / folder) for folder in schema.IMAGE_FOLDERS]
    images = [*jpeg_folders, str(dicoms["folder"]), str(dicoms["zip"]), str(dicoms["broken"])]
    arguments = ["--model", str(model), "--images", *images, "--output", str(output)]
    assert score_job.main([*arguments, "--precision", "float32", "--conf", "max_bad_fraction=0.5"]) == 0
    rows = pd.read_parquet(output)
    count = len(dicoms["jpegs"])
    assert len(rows) == 3 * count + 2 and rows[PATH].is_unique  # one row per file and member

    def kind(path: str) -> str:
        if "!/" in path:
            return "zip"
        return "jpeg" if path.endswith(".jpg") else "folder" if "/dicoms/" in path else "broken"

    rows["kind"] = rows[PATH].map(kind)
    by_kind = {name: group.set_index(schema.IMAGE_ID).sort_index() for name, group in rows.groupby("kind")}
    ids = sorted(path.stem for path in dicoms["jpegs"])
    jpegs = by_kind["jpeg"]
    for name in ("folder", "zip"):
        dicom_rows = by_kind[name]
        assert list(dicom_rows.index) == list(jpegs.index) == ids, name
        assert dicom_rows[ERROR_REASON].isna().all(), dicom_rows[ERROR_REASON].dropna().to_dict()
        np.testing.assert_allclose(
            dicom_rows[PROBS].to_numpy(np.float64), jpegs[PROBS].to_numpy(np.float64), rtol=0, atol=1e-6
        )
        notes = dicom_rows[NOTE].dropna().to_dict()
        assert list(notes) == [dicoms["multi_frame"]] and "frame 1" in notes[dicoms["multi_frame"]], name
    assert jpegs[NOTE].isna().all()
    zip_paths = set(by_kind["zip"][PATH])
    assert zip_paths == {f"file:{dicoms['zip']}!/study/{image_id}.dcm" for image_id in ids}
    broken = by_kind["broken"][ERROR_REASON].to_dict()
    assert broken == {"ISIC_broken": schema.REASON_UNDECODABLE, "ISIC_nopixels": schema.REASON_INVALID_DICOM}
    counts = json.loads((output / "_manifest.json").read_text())["counts"]
    assert counts["rows"] == counts["distinct_paths"] == 3 * count + 2 and counts["errors"] == 2


@pytest.mark.slow
def test_ingest_of_dicoms_stores_the_jpegs_pixels(spark, generated, dicoms, tmp_path):
    metadata = generated / schema.METADATA_FILE

    def ingest(images: list[str], output: Path) -> pd.DataFrame:
        arguments = ["--images", *images, "--metadata", str(metadata), "--output", str(output), "--seed", "3"]
        assert ingest_job.main(arguments) == 0
        return pd.read_parquet(output).set_index(schema.IMAGE_ID).sort_index()

    from_jpegs = ingest([str(generated / folder) for folder in schema.IMAGE_FOLDERS], tmp_path / "jpegs")
    from_dicoms = ingest([str(dicoms["folder"])], tmp_path / "dicoms")
    from_zip = ingest([str(dicoms["zip"])], tmp_path / "zip")
    ids = sorted(path.stem for path in dicoms["jpegs"])
    for table in (from_jpegs, from_dicoms, from_zip):
        assert list(table.index) == ids
    assert (from_dicoms[schema.IMAGE] == from_jpegs[schema.IMAGE]).all()
    assert (from_zip[schema.IMAGE] == from_jpegs[schema.IMAGE]).all()
    assert (
        from_dicoms[schema.SOURCE_PATH] == [f"file:{dicoms['folder']}/{image_id}.dcm" for image_id in ids]
    ).all()
    assert (from_dicoms[schema.SPLIT].astype(str) == from_jpegs[schema.SPLIT].astype(str)).all()
    manifest = json.loads((tmp_path / "dicoms" / "_manifest.json").read_text())
    assert (
        manifest["counts"]["files"]["ingested"] == len(ids)
        and manifest["counts"]["files"]["quarantined"] == 0
    )
    # The multi-frame object was ingested from its first frame, and the manifest says so.
    multi = f"file:{dicoms['folder']}/{dicoms['multi_frame']}.dcm"
    assert manifest["notes"] == {"count": 1, "first": {multi: "DICOM with 2 frames: frame 1 used"}}
