"""The scoring job: one row per file with its error, predictions equal to the in-memory model's,
the model loaded once per Python worker, resume after a kill, and metrics for a labelled table."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyspark
import pytest
from PIL import Image

from jobs import ingest as ingest_job
from jobs import score as score_job
from skinspark import model_cache, schema
from skinspark import model_dir as model_dir_lib
from skinspark import score as score_lib
from skinspark.manifest import SCORING_METRICS_FILE
from skinspark.preprocess import decode_image
from tests.conftest import Killed, generated_dataset, kill_on_commit, tiny_model_dir


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _rows(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    generated_dataset(root, images=30, seed=11, workers=2)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models") / "model")


# --------------------------------------------------------------------------------------------------
# No Spark: one batch, the model id, the per-process cache, the verdict and the summary


class _FakeModel:
    def __init__(self):
        self.calls = []

    def predict_on_batch(self, pixels):
        self.calls.append(pixels.shape)
        logits = pixels.reshape(len(pixels), -1)[:, : schema.NUM_CLASSES].astype(np.float64)
        return np.exp(logits / 50) / np.exp(logits / 50).sum(axis=1, keepdims=True)


def test_predict_frame_gives_one_row_per_input_and_errors_as_rows(generated):
    good = sorted(generated.rglob("*.jpg"))[0].read_bytes()
    batch = pd.DataFrame(
        {
            "path": ["good", "empty", "truncated", "noise"],
            "content": [good, b"", good[:3000], np.random.default_rng(1).bytes(4000)],
        }
    )
    model = _FakeModel()
    frame = score_lib.predict_frame(batch, lambda: model, 75, 100)
    assert model.calls == [(1, 75, 100, 3)]  # one call for the whole batch, decodable images only
    assert list(frame["path"]) == ["good", "empty", "truncated", "noise"]
    # A missing reason: None, or NaN in pandas 3's string columns.
    assert [None if pd.isna(reason) else reason for reason in frame[score_lib.ERROR_REASON]] == [
        None,
        schema.REASON_EMPTY,
        schema.REASON_TRUNCATED,
        schema.REASON_UNDECODABLE,
    ]
    assert frame[score_lib.ERROR].iloc[1].startswith("empty_file: ")
    expected = model.predict_on_batch(decode_image(good, 75, 100)[None])[0]
    probabilities = frame[list(schema.PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probabilities[0], expected, rtol=1e-6)
    assert np.isnan(probabilities[1:]).all()
    assert frame[score_lib.PREDICTED_LABEL].iloc[0] == expected.argmax()
    assert frame[score_lib.PREDICTED_LABEL].iloc[1:].isna().all()
    assert frame[score_lib.CONFIDENCE].iloc[0] == pytest.approx(expected.max())

    def must_not_load():
        raise AssertionError("the model must not load for a batch without a decodable image")

    assert len(score_lib.predict_frame(batch.iloc[1:], must_not_load, 75, 100)) == 3


def test_model_id_hashes_the_model_files_only(tmp_path, model_dir):
    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    first = model_dir_lib.model_id(str(copy))
    assert len(first) == 12 and first == model_dir_lib.model_id(str(model_dir))
    (copy / "training_curves.png").write_bytes(b"plot")
    assert model_dir_lib.model_id(str(copy)) == first
    (copy / "preprocessing.json").write_text(json.dumps({"height": 75, "width": 100, "decoder": "pillow"}))
    assert model_dir_lib.model_id(str(copy)) != first
    (copy / "labels.json").unlink()
    with pytest.raises(model_dir_lib.ModelDirError, match="labels.json"):
        model_dir_lib.model_id(str(copy))


def test_model_cache_loads_once_per_process_and_key(tmp_path, model_dir):
    model_cache.clear()
    try:
        first = model_cache.get_model(str(model_dir), "a")
        assert model_cache.get_model(str(model_dir), "a") is first
        assert model_cache.load_count(str(model_dir), "a") == 1
        assert model_cache.get_model(str(model_dir), "b") is not first  # a new model id is a new load
        assert model_cache.load_count(str(model_dir), "b") == 1
    finally:
        model_cache.clear()


def test_verdict_fails_on_too_many_errors_or_duplicates():
    config = score_lib.ScoreConfig(max_bad_fraction=0.1)
    ok = {"counts": {"rows": 10, "distinct_paths": 10, "errors": 1}}
    assert score_lib.verdict(ok, config) == {"status": "complete", "bad_fraction": 0.1}
    bad = score_lib.verdict({"counts": {"rows": 10, "distinct_paths": 10, "errors": 2}}, config)
    assert bad["status"] == "failed" and "20.0% of the rows are errors" in bad["error"]
    twice = {"counts": {"rows": 11, "distinct_paths": 10, "errors": 0}}
    duplicated = score_lib.verdict(twice, config)
    assert duplicated["status"] == "failed" and "1 duplicate rows" in duplicated["error"]


def test_bad_arguments_fail_before_any_work(capsys):
    with pytest.raises(SystemExit):
        score_job.args_parser().parse_args(["--model", "m", "--images", "a", "--table", "t", "--output", "o"])
    assert score_job.main(["--model", "m", "--images", "a", "--output", "o", "--conf", "chunk_filez=3"]) == 2
    assert "unknown config key 'chunk_filez'" in capsys.readouterr().err


def test_chunks_are_tight_key_ranges_that_skip_a_scored_prefix(spark):
    listing = spark.createDataFrame([(f"p{key:02d}", key) for key in range(20)], "path string, _key long")
    done = spark.createDataFrame([(f"p{key:02d}",) for key in [*range(10), 12]], "path string")
    seen, already, chunks = score_lib.plan_chunks(listing, done, chunk_files=5)
    assert (seen, already) == (20, 11)
    assert sum(chunk.files for chunk in chunks) == 9 and len(chunks) == 2
    assert chunks[0].low == 10 and chunks[-1].high == 19  # the scored prefix 0..9 lies outside every range
    assert all(a.high < b.low for a, b in zip(chunks, chunks[1:], strict=False))
    # Only the file scored earlier inside a range (12) makes its chunk skip scored files by a join.
    assert [chunk.done for chunk in chunks] == [int(c.low <= 12 <= c.high) for c in chunks]
    assert sum(chunk.done for chunk in chunks) == 1
    assert score_lib.plan_chunks(listing, listing.select("path"), chunk_files=5) == (20, 20, [])


def test_model_is_shipped_to_executors_when_they_may_not_share_the_disk(spark, model_dir):
    identifier = model_dir_lib.model_id(str(model_dir))
    assert model_dir_lib.ship(spark, str(model_dir), identifier) == str(model_dir)  # local master
    location = model_dir_lib.ship(spark, str(model_dir), identifier, to_executors=True)
    assert location == f"sparkfiles:skinspark-model-{identifier}.zip"

    def hashes(batches):
        for batch in batches:
            yield batch.assign(found=model_dir_lib.model_id(model_dir_lib.unpacked(location)))

    found = spark.range(2).repartition(2).mapInPandas(hashes, "id long, found string").collect()
    assert {row.found for row in found} == {identifier}
    (Path(tempfile.gettempdir()) / f"skinspark-model-{identifier}.zip").unlink()


# --------------------------------------------------------------------------------------------------
# End to end: an archive of nested folders, odd names and broken files


@pytest.fixture(scope="module")
def archive(generated, tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    sources = sorted(generated.rglob("*.jpg"))
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True)
    good = {}
    for source in sources[:6]:
        good[nested / source.name] = source
    good[root / "a" / f"{sources[6].stem}.JPG"] = sources[6]
    good[root / "a" / "b" / f"{sources[7].stem}.jpeg"] = sources[7]
    good[root / "a" / "odd name 100%.jpg"] = sources[8]  # a space and a bare '%' in the name
    for target, source in good.items():
        shutil.copy(source, target)
    png = root / "png" / f"{sources[9].stem}.png"
    png.parent.mkdir()
    Image.open(sources[9]).save(png, "PNG")
    good[png] = png
    broken = root / "broken"
    broken.mkdir()
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "truncated.jpg").write_bytes(sources[10].read_bytes()[:3000])
    (broken / "noise.jpg").write_bytes(np.random.default_rng(2).bytes(5000))
    noise = np.random.default_rng(3).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    (broken / "large.jpg").write_bytes(_jpeg(Image.fromarray(noise), quality=95))  # valid, but too big
    (root / "a" / "notes.txt").write_text("not an image")  # not *.jpg/*.jpeg/*.png: not listed
    errors = {
        broken / "empty.jpg": schema.REASON_EMPTY,
        broken / "truncated.jpg": schema.REASON_TRUNCATED,
        broken / "noise.jpg": schema.REASON_UNDECODABLE,
        broken / "large.jpg": schema.REASON_TOO_LARGE,
    }
    # A size limit that every good file passes and the large one does not.
    limit = max(path.stat().st_size for path in good) + 1
    assert (broken / "large.jpg").stat().st_size > limit
    return {"root": root, "good": sorted(good), "errors": errors, "limit": limit}


@pytest.fixture(scope="module")
def scored(spark, archive, model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("scored") / "predictions"
    roots = [str(archive["root"] / name) for name in ("a", "png", "broken")]
    code = score_job.main(
        [
            "--model",
            str(model_dir),
            "--images",
            *roots,
            "--output",
            str(output),
            "--batch-size",
            "4",
            "--conf",
            "chunk_files=5",
            "--conf",
            f"max_image_bytes={archive['limit']}",
            "--conf",
            "max_bad_fraction=0.5",
            "--precision",
            "float32",  # the tests below compare with the model in memory, which computes in float32
        ]
    )
    assert code == 0
    return output


def _file_uri(path: Path) -> str:
    return f"file:{path}"


@pytest.mark.slow
def test_every_file_is_one_row_with_its_error(scored, archive):
    rows = _rows(scored).set_index("path")
    expected = {_file_uri(path) for path in archive["good"]} | {_file_uri(path) for path in archive["errors"]}
    assert len(rows) == len(expected) == 14 and set(rows.index) == expected
    for path, reason in archive["errors"].items():
        row = rows.loc[_file_uri(path)]
        assert row[score_lib.ERROR_REASON] == reason
        assert row[score_lib.ERROR].startswith(f"{reason}: ")
        assert row[list(schema.PROB_COLUMNS)].isna().all() and pd.isna(row[score_lib.PREDICTED_DX])
    large = rows.loc[_file_uri(archive["root"] / "broken" / "large.jpg")]
    assert f"over the {archive['limit']:,}-byte limit" in large[score_lib.ERROR]
    good = rows.loc[[_file_uri(path) for path in archive["good"]]]
    assert good[score_lib.ERROR_REASON].isna().all()
    assert list(good[schema.IMAGE_ID]) == [Path(path).stem for path in archive["good"]]
    odd = rows.loc[_file_uri(archive["root"] / "a" / "odd name 100%.jpg")]
    assert odd[schema.IMAGE_ID] == "odd name 100%"
    assert rows[score_lib.MODEL_ID].nunique() == 1
    assert rows[score_lib.SCORED_AT].notna().all()


@pytest.mark.slow
def test_bfloat16_scoring_agrees_with_float32(scored, archive, model_dir, tmp_path, capsys):
    output = tmp_path / "bfloat16"
    roots = [str(archive["root"] / name) for name in ("a", "png", "broken")]
    limits = ["--conf", f"max_image_bytes={archive['limit']}", "--conf", "max_bad_fraction=0.5"]
    args = ["--model", str(model_dir), "--images", *roots, "--output", str(output), *limits]
    assert score_job.main([*args, "--precision", "bfloat16"]) == 0
    manifest = json.loads((output / "_manifest.json").read_text())
    workers = manifest["run"]["workers"]
    assert workers["precision"] == {"bfloat16": workers["python_processes"]}
    assert all(entry["precision"] == "bfloat16" for entry in workers["per_process"].values())
    assert "precision bfloat16 on" in capsys.readouterr().out
    plain, mixed = (_rows(path).set_index("path").sort_index() for path in (scored, output))
    assert list(plain.index) == list(mixed.index)
    assert (plain[score_lib.PREDICTED_DX].fillna("") == mixed[score_lib.PREDICTED_DX].fillna("")).all()
    columns = list(schema.PROB_COLUMNS)
    difference = np.abs(plain[columns].to_numpy(np.float64) - mixed[columns].to_numpy(np.float64))
    assert np.nanmax(difference) < 0.01
    assert manifest["config"]["precision"] == "bfloat16"


@pytest.mark.slow
def test_predictions_equal_the_in_memory_model(scored, archive, model_dir):
    import tensorflow as tf

    rows = _rows(scored).set_index("path")
    good = rows.loc[[_file_uri(path) for path in archive["good"]]]
    probabilities = good[list(schema.PROB_COLUMNS)].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    model = tf.keras.models.load_model(model_dir / "model.keras", compile=False)
    pixels = np.stack([decode_image(Path(path).read_bytes(), 75, 100) for path in archive["good"]])
    expected = model.predict_on_batch(pixels)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert list(good[score_lib.PREDICTED_LABEL]) == list(expected.argmax(axis=1))
    assert list(good[score_lib.PREDICTED_DX]) == [schema.LABELS[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(good[score_lib.CONFIDENCE], expected.max(axis=1), atol=1e-5)
    assert (good[score_lib.MODEL_ID] == model_dir_lib.model_id(str(model_dir))).all()


@pytest.mark.slow
def test_model_loads_once_per_python_worker(scored):
    workers = json.loads((scored / "_manifest.json").read_text())["run"]["workers"]
    # Several chunks (14 files, chunk_files=5) and several tasks each, on at most a few processes.
    assert workers["tasks"] > workers["python_processes"] >= 1
    assert all(entry["model_loads"] == 1 for entry in workers["per_process"].values()), workers
    assert workers["model_loads"] == workers["python_processes"]


@pytest.mark.slow
def test_manifest_and_summary_count_the_output(scored, model_dir):
    manifest = json.loads((scored / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["status"] == "complete"
    assert manifest["model"]["model_id"] == model_dir_lib.model_id(str(model_dir))
    assert counts["rows"] == counts["distinct_paths"] == 14
    assert counts["scored"] == 10 and counts["errors"] == 4
    assert counts["errors_by_reason"] == {
        schema.REASON_EMPTY: 1,
        schema.REASON_TOO_LARGE: 1,
        schema.REASON_TRUNCATED: 1,
        schema.REASON_UNDECODABLE: 1,
    }
    predicted = _rows(scored)[score_lib.PREDICTED_DX].value_counts().to_dict()
    assert {k: v for k, v in counts["predicted"].items() if v} == predicted
    assert manifest["run"]["files_seen"] == manifest["run"]["files_scored"] == 14
    assert counts["chunks"] == manifest["run"]["chunks_committed"] >= 3
    assert manifest["versions"]["pyspark"] == pyspark.__version__ and manifest["config"]["chunk_files"] == 5
    assert (scored / "_config.yaml").read_text().count("chunk_files: 5") == 1
    text = score_lib.score_summary(manifest)
    assert "score complete" in text and "14 files seen" in text and "error image_too_large: 1" in text
    assert len(text.splitlines()) < 25


# --------------------------------------------------------------------------------------------------
# Resume


@pytest.mark.slow
def test_resume_after_a_kill_gives_one_row_per_file(spark, generated, model_dir, tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    sources = sorted(generated.rglob("*.jpg"))
    for source in sources[:12]:
        (archive / source.stem[-1]).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, archive / source.stem[-1] / source.name)
    output = tmp_path / "predictions"
    args = [
        "--model",
        str(model_dir),
        "--images",
        str(archive),
        "--output",
        str(output),
        "--conf",
        "chunk_files=3",
    ]
    kill_on_commit(monkeypatch, output)
    with pytest.raises(Killed):
        score_job.main(args)
    monkeypatch.undo()
    before = _rows(output)
    assert sorted(before["chunk"].astype(int).unique()) == [0, 1]  # the staging copy is not read
    assert 4 <= len(before) <= 8 and before["path"].is_unique
    assert json.loads((output / "_manifest.json").read_text())["status"] == "running"

    assert score_job.main([*args, "--mode", "resume"]) == 0
    after = _rows(output)
    all_paths = {_file_uri(path) for path in archive.rglob("*.jpg")}
    assert len(after) == 12 and set(after["path"]) == all_paths  # no duplicates, no gaps
    kept = after[after["chunk"].astype(int) <= 1].set_index("path").sort_index()
    pd.testing.assert_frame_equal(
        kept.drop(columns="chunk"), before.set_index("path").sort_index().drop(columns="chunk")
    )
    assert not (output / ".chunk=000002.staging-killed").exists()
    run = json.loads((output / "_manifest.json").read_text())["run"]
    assert run["already_scored"] == len(before) and run["files_scored"] == 12 - len(before)

    # Files added to the archive later land between scored ones; resume scores only them.
    for source in sources[12:15]:
        shutil.copy(source, archive / "0" / source.name)
    assert score_job.main([*args, "--mode", "resume"]) == 0
    grown = _rows(output)
    assert len(grown) == 15 and grown["path"].is_unique
    assert set(grown["path"]) == {_file_uri(path) for path in archive.rglob("*.jpg")}
    run = json.loads((output / "_manifest.json").read_text())["run"]
    assert run["already_scored"] == 12 and run["files_scored"] == 3


@pytest.mark.slow
def test_resume_refuses_another_model_and_overwrite_refuses_a_foreign_directory(
    spark, scored, archive, tmp_path, capsys
):
    other = tiny_model_dir(tmp_path / "other", seed=1)
    images = str(archive["root"] / "a")
    code = score_job.main(
        ["--model", str(other), "--images", images, "--output", str(scored), "--mode", "resume"]
    )
    assert code == 2 and "holds predictions of model" in capsys.readouterr().err
    foreign = tmp_path / "home"
    (foreign / "documents").mkdir(parents=True)
    code = score_job.main(["--model", str(other), "--images", images, "--output", str(foreign)])
    assert code == 2 and "is not a scoring output" in capsys.readouterr().err
    assert (foreign / "documents").is_dir()


# --------------------------------------------------------------------------------------------------
# A labelled table


@pytest.mark.slow
def test_table_mode_carries_labels_and_writes_metrics(spark, generated, model_dir, tmp_path):
    table = tmp_path / "table"
    assert (
        ingest_job.main(
            [
                "--images",
                str(generated),
                "--metadata",
                str(generated / schema.METADATA_FILE),
                "--output",
                str(table),
            ]
        )
        == 0
    )
    output = tmp_path / "table-scores"
    assert (
        score_job.main(
            [
                "--model",
                str(model_dir),
                "--table",
                str(table),
                "--output",
                str(output),
                "--conf",
                "chunk_files=12",
            ]
        )
        == 0
    )
    rows = _rows(output)
    ingested = pd.read_parquet(table, columns=[schema.SOURCE_PATH, schema.LABEL, schema.DX, schema.SPLIT])
    assert len(rows) == len(ingested) == 30
    merged = rows.merge(ingested, left_on="path", right_on=schema.SOURCE_PATH, suffixes=("", "_table"))
    assert len(merged) == 30
    assert (merged[schema.LABEL] == merged[f"{schema.LABEL}_table"]).all()
    assert (merged[schema.SPLIT].astype(str) == merged[f"{schema.SPLIT}_table"].astype(str)).all()
    metrics = json.loads((output / SCORING_METRICS_FILE).read_text())
    assert metrics["all"]["images"] == 30
    accuracy = (rows[score_lib.PREDICTED_LABEL] == rows[schema.LABEL]).mean()
    assert metrics["all"]["accuracy"] == pytest.approx(accuracy)
    assert np.asarray(metrics["all"]["confusion_matrix"]).sum() == 30
    for split, group in rows.groupby(rows[schema.SPLIT].astype(str)):
        assert metrics[split]["images"] == len(group)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["input_kind"] == "table" and manifest["metrics"]["all"]["images"] == 30
    assert manifest["counts"]["chunks"] >= 2
    assert "balanced accuracy" in score_lib.score_summary(manifest)


@pytest.mark.slow
def test_isic_submission_and_ground_truth_from_generated_data(generated, model_dir, tmp_path, capsys):
    metadata = pd.read_csv(generated / schema.METADATA_FILE)
    truth = pd.DataFrame({"image": metadata["image_id"]})
    for column in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"):
        truth[column] = (metadata["dx"] == column.lower()).astype(int)
    # One image the truth does not know, and a truth row for an image nobody scored.
    truth = pd.concat([truth.iloc[1:], truth.iloc[[0]].assign(image="ISIC_9999999")])
    truth.to_csv(tmp_path / "truth.csv", index=False)
    output, submission = tmp_path / "predictions", tmp_path / "submission.csv"
    images = [str(generated / folder) for folder in schema.IMAGE_FOLDERS]
    code = score_job.main(
        ["--model", str(model_dir), "--images", *images, "--output", str(output)]
        + ["--isic-csv", str(submission), "--truth", str(tmp_path / "truth.csv")]
    )
    assert code == 0
    written = pd.read_csv(submission)
    assert list(written.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert sorted(written["image"]) == sorted(metadata["image_id"])  # every generated image, once
    rows = _rows(output).set_index(schema.IMAGE_ID)
    first = written.set_index("image").iloc[0]
    assert first["MEL"] == pytest.approx(rows.loc[first.name, "prob_mel"])
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["truth"]["counts"] == {
        "truth_rows": len(metadata),
        "invalid_truth_rows": 0,
        "truth_without_prediction": 1,
        "predictions_without_truth": 1,
        "matched_with_error": 0,
        "evaluated": len(metadata) - 1,
    }
    metrics = json.loads((output / SCORING_METRICS_FILE).read_text())["truth"]
    assert metrics["images"] == len(metadata) - 1 and 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert manifest["isic_csv"]["rows"] == len(metadata) and manifest["isic_csv"]["error_rows"] == 0
    out = capsys.readouterr().out
    assert "1 truth rows without a scored image, 1 scored images without a truth row" in out


@pytest.mark.slow
def test_an_ensemble_averages_its_models_probabilities(generated, model_dir, tmp_path, capsys):
    second = tiny_model_dir(tmp_path / "second-model", seed=1)

    def run(*models, name):
        output = tmp_path / name
        arguments = [part for model in models for part in ("--model", str(model))]
        arguments += ["--images", str(generated), "--output", str(output), "--precision", "float32"]
        assert score_job.main(arguments) == 0, capsys.readouterr().err
        return pd.read_parquet(output).set_index(score_lib.PATH).sort_index(), output

    (first, _), (other, _) = run(model_dir, name="first"), run(second, name="second")
    both, output = run(model_dir, second, name="both")
    columns = list(schema.PROB_COLUMNS)
    assert len(both) == len(first) == 30
    np.testing.assert_allclose(both[columns], (first[columns] + other[columns]) / 2, atol=1e-6)
    averaged = ((first[columns].to_numpy() + other[columns].to_numpy()) / 2).argmax(axis=1)
    assert list(both[score_lib.PREDICTED_DX]) == [schema.LABELS[index] for index in averaged]
    model = json.loads((output / "_manifest.json").read_text())["model"]
    assert [member["model_id"] for member in model["ensemble"]] == [
        first[score_lib.MODEL_ID].iloc[0],
        other[score_lib.MODEL_ID].iloc[0],
    ]
    assert model["model_id"].startswith("ensemble-")
    assert set(both[score_lib.MODEL_ID]) == {model["model_id"]}


def test_ensemble_members_must_take_one_input(generated, model_dir, tmp_path, capsys):
    other = tiny_model_dir(tmp_path / "other", seed=2)
    (other / "preprocessing.json").write_text(
        json.dumps(model_dir_lib.preprocessing_spec(96, 128, "simplejpeg"))
    )
    arguments = ["--model", str(model_dir), "--model", str(other), "--images", str(generated)]
    assert score_job.main([*arguments, "--output", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "ensemble members must take the same input" in message and "128x96 pixels" in message
    arguments = ["--model", str(model_dir), "--model", str(model_dir), "--images", str(generated)]
    assert score_job.main([*arguments, "--output", str(tmp_path / "out")]) == 2
    assert "lists the same model directory twice" in capsys.readouterr().err
