"""Both readers end to end (the worker reads the path, or Spark ships the bytes): identical tables and
predictions, a file that vanishes after the listing as its own row, metadata text never rewritten, and
the prediction UDF in DataFrame code and in Spark SQL."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import ingest as ingest_job
from jobs import score as score_job
from skinspark import ingest as ingest_lib
from skinspark import schema
from skinspark import score as score_lib
from skinspark.preprocess import decode_image
from skinspark.score import chunks as score_chunks
from tests.conftest import generated_dataset, tiny_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    generated_dataset(root, images=24, seed=21, workers=2)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("reader-models") / "model", seed=4)


def _ingest(dataset: Path, output: Path, *extra: str) -> int:
    return ingest_job.main(
        [
            "--images",
            str(dataset),
            "--metadata",
            str(dataset / schema.METADATA_FILE),
            "--output",
            str(output),
            *extra,
        ]
    )


def _digest(table: Path) -> list[tuple]:
    frame = pq.read_table(table).to_pandas().sort_values(schema.IMAGE_ID)
    return [
        (row.image_id, row.split, row.dx, row.source_path, hashlib.sha1(row.image).hexdigest())
        for row in frame.itertuples()
    ]


def test_both_readers_give_identical_tables(spark, dataset, tmp_path):
    assert _ingest(dataset, tmp_path / "python", "--reader", "python") == 0
    assert _ingest(dataset, tmp_path / "spark", "--reader", "spark") == 0
    assert _digest(tmp_path / "python") == _digest(tmp_path / "spark")
    assert len(_digest(tmp_path / "python")) == 24
    manifests = [json.loads((tmp_path / name / "_manifest.json").read_text()) for name in ("python", "spark")]
    assert [manifest["reader"] for manifest in manifests] == ["python", "spark"]
    assert manifests[0]["counts"] == manifests[1]["counts"]
    # auto on local paths is the python reader
    assert _ingest(dataset, tmp_path / "auto") == 0
    assert json.loads((tmp_path / "auto" / "_manifest.json").read_text())["reader"] == "python"


@pytest.mark.parametrize("reader", ["python", "spark"])
def test_ingest_records_a_file_that_vanishes_after_the_listing(spark, dataset, tmp_path, monkeypatch, reader):
    images = tmp_path / "images"
    for source in sorted(dataset.rglob("*.jpg")):
        (images / source.parent.name).mkdir(parents=True, exist_ok=True)
        (images / source.parent.name / source.name).write_bytes(source.read_bytes())
    victim = sorted(images.rglob("*.jpg"))[3]
    real_write = ingest_lib.write_table

    def delete_then_write(*args, **kwargs):
        victim.unlink()  # listed and planned, gone before its bytes are read
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ingest_lib, "write_table", delete_then_write)
    output = tmp_path / "table"
    code = ingest_job.main(
        [
            "--images",
            str(images),
            "--metadata",
            str(dataset / schema.METADATA_FILE),
            "--output",
            str(output),
            "--reader",
            reader,
            "--max-bad-fraction",
            "0.2",
        ]
    )
    assert code == 0
    quarantine = pq.read_table(output / "_quarantine").to_pandas().set_index(["item", "image_id"])
    file_row = quarantine.loc[("file", victim.stem)]
    assert file_row["reason"] == schema.REASON_UNREADABLE and "cannot read the file" in file_row["message"]
    assert quarantine.loc[("row", victim.stem), "reason"] == schema.REASON_IMAGE_REJECTED
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["counts"]["files"]["by_reason"] == {schema.REASON_UNREADABLE: 1}
    assert manifest["counts"]["files"]["ingested"] == 23 == pq.read_table(output).num_rows


def test_both_readers_give_identical_predictions(spark, dataset, model_dir, tmp_path):
    outputs = {}
    for reader in ("python", "spark"):
        outputs[reader] = tmp_path / reader
        code = score_job.main(
            ["--model", str(model_dir), "--images", str(dataset), "--output", str(outputs[reader])]
            + ["--reader", reader]
        )
        assert code == 0
    python, spark_rows = (pd.read_parquet(outputs[name]).set_index("path").sort_index() for name in outputs)
    assert len(python) == 24 and list(python.index) == list(spark_rows.index)
    np.testing.assert_array_equal(
        python[list(schema.PROB_COLUMNS)].to_numpy(), spark_rows[list(schema.PROB_COLUMNS)].to_numpy()
    )
    assert [json.loads((outputs[name] / "_manifest.json").read_text())["reader"] for name in outputs] == [
        "python",
        "spark",
    ]


@pytest.mark.parametrize("reader", ["python", "spark"])
def test_scoring_records_a_file_that_vanishes_after_the_listing(
    spark, dataset, model_dir, tmp_path, monkeypatch, reader
):
    archive = tmp_path / "archive"
    archive.mkdir()
    for source in sorted(dataset.rglob("*.jpg"))[:8]:
        (archive / source.name).write_bytes(source.read_bytes())
    victim = sorted(archive.glob("*.jpg"))[2]
    real_chunks = score_chunks.score_chunks

    def delete_then_score(*args, **kwargs):
        victim.unlink()
        return real_chunks(*args, **kwargs)

    monkeypatch.setattr(score_chunks, "score_chunks", delete_then_score)
    output = tmp_path / "predictions"
    code = score_job.main(
        ["--model", str(model_dir), "--images", str(archive), "--output", str(output), "--reader", reader]
        + ["--conf", "max_bad_fraction=0.5"]
    )
    assert code == 0
    rows = pd.read_parquet(output).set_index("path")
    assert len(rows) == 8 and rows.index.is_unique
    gone = rows.loc[f"file:{victim}"]
    assert gone[score_lib.ERROR_REASON] == schema.REASON_UNREADABLE
    assert gone[score_lib.ERROR].startswith("unreadable_file: cannot read the file")
    assert gone[schema.IMAGE_ID] == victim.stem and pd.isna(gone[score_lib.PREDICTED_DX])
    assert rows[score_lib.ERROR_REASON].notna().sum() == 1


# --------------------------------------------------------------------------------------------------
# Metadata text


def _latin1_dataset(dataset: Path, tmp_path: Path) -> tuple[Path, str]:
    meta = pd.read_csv(dataset / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    target = meta["image_id"].iloc[5]
    meta.loc[5, "localization"] = "bras gauche é"
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(meta.to_csv(index=False).encode("latin-1"))
    return csv_path, target


def test_a_row_in_the_wrong_encoding_is_quarantined_not_rewritten(spark, dataset, tmp_path):
    csv_path, target = _latin1_dataset(dataset, tmp_path)
    output = tmp_path / "utf8"
    args = ["--images", str(dataset), "--metadata", str(csv_path), "--output", str(output)]
    assert ingest_job.main([*args, "--max-bad-fraction", "0.2"]) == 0
    quarantine = pq.read_table(output / "_quarantine").to_pandas().set_index(["item", "image_id"])
    row = quarantine.loc[("row", target)]
    assert row["reason"] == schema.REASON_INVALID_ENCODING
    assert row["message"].startswith("line 7: column localization is not valid utf-8 (byte 0xe9")
    assert "bras gauche \\xe9" in row["message"]
    assert quarantine.loc[("file", target), "reason"] == schema.REASON_ROW_REJECTED
    table = pq.read_table(output).to_pandas()
    assert target not in set(table["image_id"]) and not table["localization"].str.contains("\ufffd").any()

    latin1 = tmp_path / "latin1"
    assert (
        ingest_job.main(
            ["--images", str(dataset), "--metadata", str(csv_path), "--output", str(latin1)]
            + ["--metadata-encoding", "latin-1"]
        )
        == 0
    )
    table = pq.read_table(latin1).to_pandas().set_index("image_id")
    assert table.loc[target, "localization"] == "bras gauche é" and len(table) == 24


def test_a_utf8_bom_and_utf8_text_are_read_as_they_are(spark, dataset, tmp_path):
    meta = pd.read_csv(dataset / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    meta.loc[0, "localization"] = "Rücken"
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + meta.to_csv(index=False).encode("utf-8"))
    output = tmp_path / "bom"
    assert (
        ingest_job.main(["--images", str(dataset), "--metadata", str(csv_path), "--output", str(output)]) == 0
    )
    table = pq.read_table(output).to_pandas().set_index("image_id")
    assert table.loc[meta.loc[0, "image_id"], "localization"] == "Rücken" and len(table) == 24


def test_a_semicolon_separated_csv_fails_with_a_hint(spark, dataset, tmp_path, capsys):
    meta = pd.read_csv(dataset / schema.METADATA_FILE, dtype=str, keep_default_na=False)
    csv_path = tmp_path / "semicolons.csv"
    meta.to_csv(csv_path, index=False, sep=";")
    code = ingest_job.main(
        ["--images", str(dataset), "--metadata", str(csv_path), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "lacks required columns" in err and "looks ';'-separated" in err
    code = ingest_job.main(
        ["--images", str(dataset), "--metadata", str(csv_path), "--output", str(tmp_path / "o")]
        + ["--metadata-encoding", "utf-16"]
    )
    assert code == 2 and "not ASCII-compatible" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The UDF


def test_predict_udf_scores_paths_and_bytes_and_serves_spark_sql(spark, dataset, model_dir):
    import tensorflow as tf

    files = sorted(dataset.rglob("*.jpg"))[:6]
    model = tf.keras.models.load_model(model_dir / "model.keras", compile=False)
    expected = model.predict_on_batch(np.stack([decode_image(path.read_bytes(), 75, 100) for path in files]))

    predict = score_lib.predict_udf(str(model_dir), batch_size=4, precision="float32")  # as `model`
    listing = spark.read.format("binaryFile").load([str(path) for path in files])
    by_path = listing.select("path", predict("path").alias("p")).select("path", "p.*").toPandas()
    by_bytes = listing.select("path", predict("content").alias("p")).select("path", "p.*").toPandas()
    for frame in (by_path, by_bytes):
        frame = frame.set_index("path").loc[[f"file:{path}" for path in files]]
        np.testing.assert_allclose(frame[list(schema.PROB_COLUMNS)].to_numpy(), expected, atol=1e-5)
        assert list(frame[score_lib.PREDICTED_DX]) == [schema.LABELS[i] for i in expected.argmax(axis=1)]
        np.testing.assert_allclose(frame[score_lib.CONFIDENCE], expected.max(axis=1), atol=1e-5)
        assert frame[score_lib.ERROR].isna().all()

    score_lib.register_predict_udf(spark, str(model_dir), precision="float32")
    paths = [f"file:{path}" for path in files[:2]] + [f"file:{dataset}/gone.jpg", None]
    spark.createDataFrame([(path,) for path in paths], "path string").createOrReplaceTempView("files")
    rows = (
        spark.sql("SELECT path, skinspark_predict(path) AS p FROM files")
        .select("path", "p.predicted_dx", "p.prob_nv", "p.error_reason")
        .collect()
    )
    assert len(rows) == 4
    assert [row.predicted_dx for row in rows[:2]] == [schema.LABELS[i] for i in expected[:2].argmax(axis=1)]
    assert rows[0].prob_nv == pytest.approx(float(expected[0][schema.LABEL_INDEX["nv"]]), abs=1e-5)
    assert rows[2].error_reason == schema.REASON_UNREADABLE and rows[2].predicted_dx is None
    assert rows[3].error_reason == schema.REASON_EMPTY
