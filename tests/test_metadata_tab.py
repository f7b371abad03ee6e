"""The metadata may be tab-separated with quoted text (Harvard Dataverse's `HAM10000_metadata.tab`): it
reads and validates exactly as the same rows written comma-separated, bad text and malformed lines
included, and the ingest job takes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import ingest as ingest_job
from skinspark import schema
from skinspark.ingest import CORRUPT_COLUMN, ROW_NUMBER, IngestError, read_metadata, validate_metadata
from skinspark.ingest.metadata import COMMA, TAB, detect_separator
from tests.conftest import generated_dataset

HEADER = [*schema.METADATA_COLUMNS, "dataset"]
# Rows as Dataverse exports them: text quoted, `age` a bare number or nothing at all.
ROWS = [
    ["HAM_0000118", "ISIC_0027419", "bkl", "histo", "80", "male", "scalp", "vidir_modern"],
    ["HAM_0002730", "ISIC_0025030", "bkl", "histo", "", "male", "scalp", "vidir_modern"],
    ["HAM_0002761", "ISIC_0029176", "nv", "follow_up", "45", "female", "back", "rosendahl"],
]
NUMERIC = {schema.AGE}


def _tab_line(values: list[str], names: list[str]) -> str:
    """One Dataverse `.tab` line: text fields in double quotes, numbers (and a missing number) bare."""
    return "\t".join(
        value if name in NUMERIC else f'"{value}"' for name, value in zip(names, values, strict=True)
    )


def _write_tab(path: Path, rows: list[list[str]], quoted_header: bool = False, prefix: bytes = b"") -> Path:
    header = "\t".join(f'"{name}"' if quoted_header else name for name in HEADER)
    lines = [header, *(_tab_line(row, HEADER) for row in rows)]
    path.write_bytes(prefix + ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    pd.DataFrame(rows, columns=HEADER).to_csv(path, index=False, lineterminator="\n")
    return path


def _validated(spark, path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    return validate_metadata(read_metadata(spark, str(path), encoding).toPandas(), encoding)


@pytest.mark.parametrize(
    ("name", "quoted_header", "prefix"),
    [
        ("meta.tab", False, b""),
        ("meta.tsv", True, b""),  # Dataverse may quote the header's names too
        ("meta.csv", True, b"\xef\xbb\xbf"),  # the extension says nothing; a UTF-8 BOM is dropped
    ],
)
def test_a_tab_file_validates_to_the_same_rows_as_the_csv(spark, tmp_path, name, quoted_header, prefix):
    expected = _validated(spark, _write_csv(tmp_path / "same.csv", ROWS))
    tab = _validated(spark, _write_tab(tmp_path / name, ROWS, quoted_header, prefix))
    pd.testing.assert_frame_equal(tab, expected)
    assert list(tab[schema.IMAGE_ID]) == [row[1] for row in ROWS]  # unquoted, in file order
    assert list(tab["dataset"]) == [row[7] for row in ROWS]  # the extra column is carried through
    assert tab["reason"].isna().all() and tab[CORRUPT_COLUMN].isna().all()


def test_an_empty_age_in_a_tab_file_is_a_missing_age(spark, tmp_path):
    rows = _validated(spark, _write_tab(tmp_path / "meta.tab", ROWS)).set_index(schema.IMAGE_ID)
    assert rows.loc["ISIC_0025030", "reason"] is None and np.isnan(rows.loc["ISIC_0025030", schema.AGE])
    assert rows.loc["ISIC_0027419", schema.AGE] == pytest.approx(80.0)
    assert rows[schema.AGE].dtype == np.float32


def test_a_byte_not_valid_in_the_encoding_names_its_line(spark, tmp_path):
    path = _write_tab(tmp_path / "meta.tab", ROWS)
    # ROWS[2] is on line 4; its localization gets a latin-1 é (0xe9), which is not valid UTF-8.
    path.write_bytes(path.read_bytes().replace(b'"back"', '"bras gauche é"'.encode("latin-1")))

    rows = _validated(spark, path).set_index(schema.IMAGE_ID)
    bad = rows.loc["ISIC_0029176"]
    assert bad["reason"] == schema.REASON_INVALID_ENCODING
    assert bad["message"].startswith("line 4: column localization is not valid utf-8 (byte 0xe9")
    assert rows.drop(index="ISIC_0029176")["reason"].isna().all()

    latin1 = _validated(spark, path, "latin-1").set_index(schema.IMAGE_ID)
    assert latin1.loc["ISIC_0029176", "localization"] == "bras gauche é"
    assert latin1["reason"].isna().all()


def test_a_tab_line_with_a_missing_field_is_malformed(spark, tmp_path):
    path = _write_tab(tmp_path / "meta.tab", ROWS)
    short = _tab_line(ROWS[2][:4] + ROWS[2][5:], [name for name in HEADER if name != schema.AGE])
    path.write_text(path.read_text().replace(_tab_line(ROWS[2], HEADER), short))

    raw = read_metadata(spark, str(path)).toPandas()
    assert list(raw[ROW_NUMBER]) == [0, 1, 2]  # line 4 is still the third row
    assert raw[CORRUPT_COLUMN].tolist()[:2] == [None, None] and raw[CORRUPT_COLUMN].iloc[2] == short
    rows = validate_metadata(raw)
    assert list(rows["reason"]) == [None, None, schema.REASON_INVALID_FIELD]
    assert "malformed CSV line (wrong number of fields)" in rows["message"].iloc[2]


def test_a_semicolon_separated_file_still_fails_with_the_hint(spark, tmp_path):
    path = tmp_path / "meta.csv"
    pd.DataFrame(ROWS, columns=HEADER).to_csv(path, index=False, sep=";")
    with pytest.raises(IngestError, match="lacks required columns.*looks ';'-separated"):
        read_metadata(spark, str(path))


@pytest.mark.parametrize(
    ("header", "separator"),
    [
        ("\t".join(HEADER), TAB),
        ("\t".join(f'"{name}"' for name in HEADER), TAB),
        ("\ufeff" + "\t".join(f'"{name}"' for name in schema.METADATA_COLUMNS), TAB),
        (",".join(HEADER), COMMA),
        (",".join(f'"{name}"' for name in HEADER), COMMA),
        (";".join(HEADER), COMMA),  # not read: `read_metadata` fails on it with the hint
        ("image_id\tdx", COMMA),  # tabs, but not the required columns
    ],
)
def test_detect_separator_reads_the_header(header, separator):
    assert detect_separator(header) == separator


@pytest.mark.slow
def test_the_ingest_job_takes_a_dataverse_tab_file(spark, tmp_path):
    source = tmp_path / "source"
    generated_dataset(source, images=20, seed=3, workers=1)
    meta = pd.read_csv(source / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    # The generator writes ages as "45.0" and a missing age as nothing, as Dataverse does (unquoted).
    tab_path = source / "HAM10000_metadata.tab"
    lines = ["\t".join(meta.columns), *(_tab_line(list(row), list(meta.columns)) for row in meta.values)]
    tab_path.write_text("\n".join(lines) + "\n")
    assert '"' in tab_path.read_text() and (meta[schema.AGE] == "").any()

    output = tmp_path / "table"
    args = ["--images", str(source), "--metadata", str(tab_path), "--output", str(output)]
    assert ingest_job.main(args) == 0
    counts = json.loads((output / "_manifest.json").read_text())["counts"]
    files, rows = counts["files"], counts["rows"]
    # What the CSV run gives on a clean generated dataset: every image and every row ingested.
    assert files["seen"] == files["ingested"] == 20 and files["quarantined"] == 0
    assert rows["read"] == rows["ingested"] == 20 and rows["quarantined"] == 0
    assert sum(split["images"] for split in counts["splits"].values()) == 20
    table = pq.read_table(output).to_pandas()
    assert set(table[schema.IMAGE_ID]) == set(meta[schema.IMAGE_ID])
    assert not table[schema.LESION_ID].str.contains('"').any()
