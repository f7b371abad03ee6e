"""The ingest job: CSV validation, fates of every file and row, and an end-to-end run on bad input."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import ingest as ingest_job
from skinspark import schema
from skinspark.ingest import CORRUPT_COLUMN, ROW_NUMBER, resolve_fates, validate_metadata
from skinspark.preprocess import decode_image
from skinspark.table import read_split
from tests.conftest import generated_dataset

# --------------------------------------------------------------------------------------------------
# Validation and fates on small frames (no Spark, no files)


def _csv_rows(records: list[dict]) -> pd.DataFrame:
    base = {
        "lesion_id": "HAM_0000001",
        "image_id": "ISIC_0000001",
        "dx": "nv",
        "dx_type": "histo",
        "age": "45.0",
        "sex": "male",
        "localization": "back",
    }
    frame = pd.DataFrame([{**base, **record} for record in records])
    frame[CORRUPT_COLUMN] = None
    frame[ROW_NUMBER] = range(len(frame))
    return frame


def test_validation_flags_each_bad_field_and_keeps_good_rows():
    rows = validate_metadata(
        _csv_rows(
            [
                {"image_id": "ISIC_1"},
                {"image_id": "ISIC_2", "dx": "melanoma"},
                {"image_id": "ISIC_3", "age": "130"},
                {"image_id": "ISIC_4", "age": "old"},
                {"image_id": "ISIC_5", "age": ""},
                {"image_id": "ISIC_6", "sex": "x"},
                {"image_id": "", "lesion_id": "HAM_9"},
                {"image_id": "ISIC_8", "sex": "Unknown", "age": None},
            ]
        )
    )
    by_id = rows.set_index("image_id")
    assert by_id.loc["ISIC_1", "reason"] is None
    assert "dx 'melanoma'" in by_id.loc["ISIC_2", "message"]
    assert "age '130'" in by_id.loc["ISIC_3", "message"]
    assert "age 'old'" in by_id.loc["ISIC_4", "message"]
    assert by_id.loc["ISIC_5", "reason"] is None and np.isnan(by_id.loc["ISIC_5", "age"])
    assert "sex 'x'" in by_id.loc["ISIC_6", "message"]
    assert by_id.loc["", "message"] == "image_id is empty"
    assert by_id.loc["ISIC_8", "reason"] is None and by_id.loc["ISIC_8", "sex"] == "unknown"
    assert set(rows["reason"].dropna()) == {schema.REASON_INVALID_FIELD}
    assert rows["age"].dtype == np.float32 and by_id.loc["ISIC_1", "age"] == pytest.approx(45.0)


def test_identical_rows_are_kept_once_and_disagreeing_rows_all_rejected():
    rows = validate_metadata(
        _csv_rows(
            [
                {"image_id": "ISIC_1"},
                {"image_id": "ISIC_1"},
                {"image_id": "ISIC_2", "dx": "nv"},
                {"image_id": "ISIC_2", "dx": "mel"},
            ]
        )
    )
    assert list(rows["reason"]) == [
        None,
        schema.REASON_DUPLICATE_ROW,
        schema.REASON_DUPLICATE_ID,
        schema.REASON_DUPLICATE_ID,
    ]


def test_fates_cover_duplicates_conflicts_and_orphans():
    files = pd.DataFrame(
        [
            ("a/ISIC_1.jpg", "ISIC_1", "h1", None, None),
            ("b/ISIC_1.jpg", "ISIC_1", "h1", None, None),  # identical copy
            ("a/ISIC_2.jpg", "ISIC_2", "h2", None, None),
            ("b/ISIC_2.jpg", "ISIC_2", "h3", None, None),  # a different file under the same id
            ("a/ISIC_3.jpg", "ISIC_3", "h4", schema.REASON_TRUNCATED, "truncated"),
            ("a/ISIC_4.jpg", "ISIC_4", "h5", None, None),  # no row at all
            ("a/ISIC_6.jpg", "ISIC_6", "h6", None, None),  # its row is invalid
        ],
        columns=["source_path", "image_id", "sha1", "reason", "message"],
    )
    rows = validate_metadata(
        _csv_rows(
            [
                {"image_id": "ISIC_1"},
                {"image_id": "ISIC_2"},
                {"image_id": "ISIC_3"},
                {"image_id": "ISIC_5"},
                {"image_id": "ISIC_6", "dx": "?"},
            ]
        )
    )
    files, rows = resolve_fates(files, rows)
    # A missing reason: None, or NaN in pandas 3's string columns.
    assert [None if pd.isna(reason) else reason for reason in files["reason"]] == [
        None,
        schema.REASON_DUPLICATE_FILE,
        schema.REASON_CONFLICT,
        schema.REASON_CONFLICT,
        schema.REASON_TRUNCATED,
        schema.REASON_NO_METADATA,
        schema.REASON_ROW_REJECTED,
    ]
    assert list(rows["reason"]) == [
        None,
        schema.REASON_IMAGE_REJECTED,
        schema.REASON_IMAGE_REJECTED,
        schema.REASON_NO_IMAGE,
        schema.REASON_INVALID_FIELD,
    ]
    assert files["message"].iloc[1] == "identical copy of a/ISIC_1.jpg; ingested once"


# --------------------------------------------------------------------------------------------------
# End to end


def _save(image: Image.Image, path: Path, fmt: str = "JPEG", **options) -> None:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory):
    """~100 generated images, then every kind of bad or odd input a real archive has."""
    root = tmp_path_factory.mktemp("messy")
    generated_dataset(root, images=100, seed=5, workers=2)
    csv_path = root / schema.METADATA_FILE
    meta = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    files = {path.stem: path for path in root.rglob("*.jpg")}
    ids = sorted(meta["image_id"])
    a, b, c, d, e, f, g, h, i, j, k, known = ids[:12]
    files[a].write_bytes(files[a].read_bytes()[:4000])  # truncated
    files[b].write_bytes(b"")  # empty
    files[c].write_bytes(np.random.default_rng(0).bytes(5000))  # random bytes
    _save(Image.open(files[d]), files[d], "PNG")  # PNG content under a .jpg name
    _save(Image.open(files[e]).convert("L"), files[e])  # greyscale JPEG
    _save(Image.open(files[f]).convert("CMYK"), files[f])  # CMYK JPEG
    files[g].unlink()  # a CSV row with no image
    extra = root / "extra"
    (extra / "copy").mkdir(parents=True)
    shutil.copy(files[h], extra / "copy" / files[h].name)  # the same image unpacked twice
    _save(Image.open(files[i]), extra / files[i].name, quality=40)  # a different file, same image_id
    shutil.copy(files[known], extra / "ISIC_9999999.jpg")  # an image with no CSV row
    shutil.copy(files[known], extra / "ISIC_9999998.jpg")  # an image whose row is invalid
    files[k].rename(files[k].with_suffix(".JPG"))  # upper-case extension
    (extra / "notes.txt").write_text("not an image")  # ignored: not *.jpg/*.jpeg
    shutil.copy(files[known], extra / "odd name 100%.jpg")  # a bare '%' must not break the job
    bad_row = {**meta.iloc[0].to_dict(), "image_id": "ISIC_9999998", "lesion_id": "HAM_9999998", "dx": "xyz"}
    repeat = meta[meta["image_id"] == j]
    meta = pd.concat([meta, pd.DataFrame([bad_row]), repeat], ignore_index=True)
    meta.to_csv(csv_path, index=False)
    return {
        "root": root,
        "csv": csv_path,
        "ids": dict(a=a, b=b, c=c, d=d, e=e, f=f, g=g, h=h, i=i, j=j, k=k),
        "known": files[known],
        "paths": [str(root / schema.IMAGE_FOLDERS[0]), str(root / schema.IMAGE_FOLDERS[1]), str(extra)],
    }


@pytest.fixture(scope="module")
def ingested(spark, messy_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "table"
    code = ingest_job.main(
        [
            "--images",
            *messy_dataset["paths"],
            "--metadata",
            str(messy_dataset["csv"]),
            "--output",
            str(output),
            "--max-bad-fraction",
            "0.2",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    return output


@pytest.mark.slow
def test_manifest_accounts_for_every_file_and_row(ingested):
    manifest = json.loads((ingested / "_manifest.json").read_text())
    files, rows = manifest["counts"]["files"], manifest["counts"]["rows"]
    assert files["seen"] == 104 and files["ingested"] == 95 and files["quarantined"] == 9
    assert rows["read"] == 102 and rows["ingested"] == 95 and rows["quarantined"] == 7
    assert files["by_reason"] == {
        schema.REASON_CONFLICT: 2,
        schema.REASON_DUPLICATE_FILE: 1,
        schema.REASON_EMPTY: 1,
        schema.REASON_NO_METADATA: 2,
        schema.REASON_ROW_REJECTED: 1,
        schema.REASON_TRUNCATED: 1,
        schema.REASON_UNDECODABLE: 1,
    }
    assert rows["by_reason"] == {
        schema.REASON_DUPLICATE_ROW: 1,
        schema.REASON_IMAGE_REJECTED: 4,
        schema.REASON_INVALID_FIELD: 1,
        schema.REASON_NO_IMAGE: 1,
    }
    assert sum(split["images"] for split in manifest["counts"]["splits"].values()) == 95
    assert manifest["status"] == "complete" and manifest["images_per_second"] > 0
    assert manifest["versions"]["pyarrow"] == pa.__version__  # the installed one, on either stack
    assert (ingested / "_config.yaml").read_text().startswith("height: 75")


@pytest.mark.slow
def test_quarantine_names_each_bad_item(ingested, messy_dataset):
    quarantine = pq.read_table(ingested / "_quarantine").to_pandas()
    ids = messy_dataset["ids"]
    files = quarantine[quarantine["item"] == "file"].set_index("image_id")
    assert files.loc[ids["a"], "reason"] == schema.REASON_TRUNCATED
    assert files.loc[ids["b"], "reason"] == schema.REASON_EMPTY
    assert files.loc[ids["c"], "reason"] == schema.REASON_UNDECODABLE
    assert files.loc[ids["h"], "reason"] == schema.REASON_DUPLICATE_FILE
    assert files.loc["ISIC_9999999", "reason"] == schema.REASON_NO_METADATA
    assert files.loc["odd name 100%", "reason"] == schema.REASON_NO_METADATA
    assert files.loc["ISIC_9999998", "reason"] == schema.REASON_ROW_REJECTED
    assert (quarantine.loc[quarantine["image_id"] == ids["i"], "reason"] == schema.REASON_CONFLICT).sum() == 2
    rows = quarantine[quarantine["item"] == "row"].set_index("image_id")
    assert rows.loc[ids["g"], "reason"] == schema.REASON_NO_IMAGE
    assert rows.loc[ids["j"], "reason"] == schema.REASON_DUPLICATE_ROW
    assert "dx 'xyz'" in rows.loc["ISIC_9999998", "message"]
    assert quarantine["message"].notna().all() and (quarantine["message"] != "").all()


@pytest.mark.slow
def test_table_columns_types_pixels_and_lesion_split(ingested, messy_dataset):
    table = pq.read_table(ingested).to_pandas()
    assert len(table) == 95 and table["image_id"].is_unique
    written = pq.read_schema(next((ingested / "split=train").glob("*.parquet")))
    assert str(written.field("label").type) == "int32" and str(written.field("image").type) == "binary"
    assert str(written.field("age").type) == "float"
    assert set(table["split"]) == set(schema.SPLITS)
    assert table.groupby("lesion_id")["split"].nunique().max() == 1  # no lesion crosses splits
    assert (table["label"] == table["dx"].map(schema.LABEL_INDEX)).all()
    assert (table["height"] == 75).all() and (table["width"] == 100).all()
    assert table["image"].map(len).eq(75 * 100 * 3).all()
    ids = messy_dataset["ids"]
    for image_id in (ids["d"], ids["e"], ids["f"], ids["h"], ids["k"]):  # PNG, grey, CMYK, copied, .JPG
        assert image_id in set(table["image_id"])
    known = messy_dataset["known"]
    row = table.set_index("image_id").loc[known.stem]
    expected = decode_image(known.read_bytes(), 75, 100)
    assert np.array_equal(np.frombuffer(row["image"], np.uint8).reshape(75, 100, 3), expected)
    grey = np.frombuffer(table.set_index("image_id").loc[ids["e"], "image"], np.uint8).reshape(75, 100, 3)
    assert np.array_equal(grey[..., 0], grey[..., 1])


@pytest.mark.slow
def test_petastorm_reads_the_train_split(ingested):
    # The reader training validates and tests with: every row of the split, bytes intact.
    split = read_split(f"file://{ingested}/split=train", 75, 100)
    stored = pq.read_table(ingested / "split=train").to_pandas().sort_values("image_id")
    assert len(split["image_id"]) == len(stored) > 0
    assert list(split["image_id"]) == list(stored["image_id"])
    assert np.array_equal(split["label"], stored["label"].to_numpy())
    first = np.frombuffer(stored["image"].iloc[0], np.uint8).reshape(75, 100, 3)
    assert np.array_equal(split["image"][0], first)


@pytest.mark.slow
def test_rerun_with_the_same_seed_gives_the_same_table(spark, ingested, messy_dataset, tmp_path):
    output = tmp_path / "again"
    assert (
        ingest_job.main(
            [
                "--images",
                *messy_dataset["paths"],
                "--metadata",
                str(messy_dataset["csv"]),
                "--output",
                str(output),
                "--max-bad-fraction",
                "0.2",
                "--seed",
                "3",
            ]
        )
        == 0
    )

    def digest(path):
        table = pq.read_table(path).to_pandas().sort_values("image_id")
        return list(
            zip(
                table["image_id"],
                table["split"],
                table["image"].map(lambda raw: hashlib.sha1(raw).hexdigest()),
                strict=True,
            )
        )

    assert digest(output) == digest(ingested)


@pytest.mark.slow
def test_too_much_bad_input_fails_without_publishing(spark, messy_dataset, tmp_path, capsys):
    output = tmp_path / "strict"
    code = ingest_job.main(
        [
            "--images",
            *messy_dataset["paths"],
            "--metadata",
            str(messy_dataset["csv"]),
            "--output",
            str(output),
        ]
    )
    assert code == 1
    assert not output.exists()
    rejected = Path(f"{output}_rejected")
    assert json.loads((rejected / "_manifest.json").read_text())["status"] == "failed"
    assert pq.read_table(rejected / "_quarantine").num_rows == 16
    assert "over --max-bad-fraction 5.0%" in capsys.readouterr().err


def test_missing_csv_or_images_fail_with_one_clear_line(spark, messy_dataset, tmp_path, capsys):
    code = ingest_job.main(
        [
            "--images",
            messy_dataset["paths"][0],
            "--metadata",
            str(tmp_path / "nope.csv"),
            "--output",
            str(tmp_path / "o1"),
        ]
    )
    assert code == 2
    assert "metadata CSV not found" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image,label\nISIC_1,nv\n")
    assert (
        ingest_job.main(
            [
                "--images",
                messy_dataset["paths"][0],
                "--metadata",
                str(bad_csv),
                "--output",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "lacks required columns" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        ingest_job.main(
            [
                "--images",
                str(empty),
                "--metadata",
                str(messy_dataset["csv"]),
                "--output",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    assert "no .jpg/.jpeg/.png/.dcm images found" in capsys.readouterr().err
    assert (
        ingest_job.main(
            [
                "--images",
                str(tmp_path / "missing"),
                "--metadata",
                str(messy_dataset["csv"]),
                "--output",
                str(tmp_path / "o4"),
            ]
        )
        == 2
    )
    assert "image path not found" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))
