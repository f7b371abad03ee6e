"""The benign/malignant task (`--task malignant`): the label mapping, the binary metrics, a whole
training run on each backend, and scoring with such a model (files, a labelled table, ground truth,
the UDF, and the clear errors of an ISIC submission and a mixed ensemble)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from jobs import score as score_job
from jobs import train as train_job
from skinspark import schema
from skinspark import score as score_lib
from skinspark.manifest import SCORING_METRICS_FILE
from skinspark.metrics import classification_metrics, headline, operating_threshold
from skinspark.model_dir import read_model_spec, threshold_of
from skinspark.tasks import DX7, MALIGNANT, get_task, task_of_labels
from skinspark.train.pipeline import Pipeline, pixel_batches
from tests.conftest import BACKENDS, generated_dataset, tiny_model_dir

# --------------------------------------------------------------------------------------------------
# No Spark: the mapping, the metrics, the training pipeline's labels


def test_malignant_groups_mel_bcc_akiec_against_the_rest():
    mapped = {dx: MALIGNANT.labels[MALIGNANT.label_map[index]] for index, dx in enumerate(schema.LABELS)}
    assert mapped == {
        "akiec": "malignant",
        "bcc": "malignant",
        "bkl": "benign",
        "df": "benign",
        "mel": "malignant",
        "nv": "benign",
        "vasc": "benign",
    }
    assert MALIGNANT.prob_columns == ("prob_benign", "prob_malignant")
    assert DX7.map_labels([0, 4, 6]).tolist() == [0, 4, 6]
    assert MALIGNANT.map_labels([0, 4, 5, 6]).tolist() == [1, 1, 0, 0]
    counts = {"akiec": 3, "bcc": 5, "bkl": 11, "df": 1, "mel": 11, "nv": 67, "vasc": 2}
    assert MALIGNANT.class_counts(counts) == {"benign": 81, "malignant": 19}
    assert task_of_labels(["benign", "malignant"]) is MALIGNANT and get_task("dx7") is DX7
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("binary")
    with pytest.raises(ValueError, match="order matters"):
        task_of_labels(["malignant", "benign"])


def test_binary_metrics_equal_scikit_learn():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, 200)
    malignant = np.clip(0.35 * y_true + rng.uniform(0, 0.65, 200), 0, 1)
    y_prob = np.stack([1 - malignant, malignant], axis=1)
    threshold = operating_threshold(y_true, y_prob, MALIGNANT.labels)
    metrics = classification_metrics(y_true, y_prob, MALIGNANT.labels, threshold)
    assert metrics["melanoma"] is None and metrics["labels"] == ["benign", "malignant"]
    section = metrics["malignant"]
    predicted = y_prob.argmax(axis=1)
    assert section["at_argmax"]["sensitivity"] == pytest.approx(skm.recall_score(y_true, predicted))
    assert section["at_argmax"]["specificity"] == pytest.approx(skm.recall_score(1 - y_true, 1 - predicted))
    assert section["f1"] == pytest.approx(skm.f1_score(y_true, predicted))
    assert section["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, malignant))
    assert section["average_precision"] == pytest.approx(skm.average_precision_score(y_true, malignant))
    # The threshold flags at least 80 % of the malignant images, and is the highest that does.
    assert section["at_threshold"]["sensitivity"] >= 0.8
    assert (malignant[y_true == 1] >= np.nextafter(threshold, 2)).mean() < 0.8
    assert "malignant sensitivity" in headline(metrics) and "malignant F1" in headline(metrics)


def test_training_pipeline_maps_the_tables_labels_to_the_tasks_units():
    labels = np.arange(7, dtype=np.int32)
    pixels = np.zeros((7, 2 * 3 * 3), np.uint8)
    rows = tf.data.Dataset.from_tensors((tf.constant([row.tobytes() for row in pixels]), labels))
    batch = next(iter(pixel_batches(rows, Pipeline(2, 3, 7, 7, False, 0, label_map=MALIGNANT.label_map))))
    assert sorted(batch[1].numpy().tolist()) == sorted(MALIGNANT.map_labels(labels).tolist())
    # Oversampling counts by the task's units: malignant images twice, benign once.
    batch = next(
        iter(
            pixel_batches(
                rows, Pipeline(2, 3, 10, 10, False, 0, repeats={0: 1, 1: 2}, label_map=MALIGNANT.label_map)
            )
        )
    )
    assert sorted(batch[1].numpy().tolist()) == [0] * 4 + [1] * 6


# --------------------------------------------------------------------------------------------------
# A whole training run


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_malignant_training_run(backend, ingested, tmp_path, capsys):
    model_dir = tmp_path / "model"
    arguments = ["--data", str(ingested), "--output", str(model_dir), "--epochs", "1", "--backend", backend]
    code = train_job.main([*arguments, "--num-proc", "2", "--batch-size", "16", "--task", "malignant"])
    out = capsys.readouterr().out
    assert code == 0

    manifest = json.loads((model_dir / "_manifest.json").read_text())
    assert manifest["task"] == "malignant" and manifest["labels"] == ["benign", "malignant"]
    table = pd.read_parquet(ingested, columns=[schema.DX, schema.LABEL, schema.SPLIT])
    table[schema.SPLIT] = table[schema.SPLIT].astype(str)
    train_labels = MALIGNANT.map_labels(table.loc[table[schema.SPLIT] == "train", schema.LABEL])
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=train_labels)
    assert manifest["class_weight"] == pytest.approx({"benign": expected[0], "malignant": expected[1]})
    assert manifest["steps_per_epoch"] == math.ceil(len(train_labels) / 32)

    labels = json.loads((model_dir / "labels.json").read_text())
    assert labels["task"] == "malignant" and labels["labels"] == ["benign", "malignant"]
    spec = read_model_spec(str(model_dir))
    assert spec["task"] == "malignant" and spec["labels"] == ["benign", "malignant"]
    model = tf.keras.models.load_model(model_dir / "model.keras", compile=False)
    assert model.output_shape == (None, 2)

    test = table[table[schema.SPLIT] == "test"]
    truth = MALIGNANT.map_labels(test[schema.LABEL])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["task"] == "malignant" and metrics["labels"] == ["benign", "malignant"]
    assert metrics["per_class"]["malignant"]["support"] == int(
        test[schema.DX].isin(schema.MALIGNANT_DX).sum()
    )
    assert metrics["per_class"]["benign"]["support"] == int((truth == 0).sum())
    assert np.asarray(metrics["confusion_matrix"]).shape == (2, 2) and metrics["melanoma"] is None
    predictions = pd.read_csv(model_dir / "test_predictions.csv")
    assert sorted(predictions[schema.LABEL]) == sorted(truth)
    probability = predictions["prob_malignant"].to_numpy()
    assert metrics["malignant"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(predictions[schema.LABEL], probability)
    )
    flagged = predictions["predicted"] == 1
    positive = predictions[schema.LABEL] == 1
    assert metrics["malignant"]["at_argmax"]["sensitivity"] == pytest.approx(
        (flagged & positive).sum() / positive.sum()
    )
    assert "malignant sensitivity" in out and "against chance 0.500 (1/2)" in out


# --------------------------------------------------------------------------------------------------
# Scoring with a benign/malignant model


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated-tasks")
    generated_dataset(root, images=30, seed=11, workers=2)
    return root


@pytest.fixture(scope="module")
def malignant_model(tmp_path_factory) -> Path:
    directory = tiny_model_dir(tmp_path_factory.mktemp("models") / "malignant", labels=MALIGNANT.labels)
    metrics = {"malignant": {"at_threshold": {"threshold": 0.4, "sensitivity": 0.8, "specificity": 0.5}}}
    (directory / "metrics.json").write_text(json.dumps(metrics))  # as training writes it
    return directory


@pytest.mark.slow
def test_scoring_files_with_a_malignant_model(spark, generated, malignant_model, tmp_path):
    from skinspark.model_dir import load_model
    from skinspark.preprocess import decode_image

    output = tmp_path / "scores"
    arguments = ["--model", str(malignant_model), "--images", str(generated), "--output", str(output)]
    assert score_job.main([*arguments, "--precision", "float32"]) == 0
    rows = pd.read_parquet(output).sort_values(score_lib.PATH)
    assert {"prob_benign", "prob_malignant"} <= set(rows.columns) and "prob_mel" not in rows.columns
    assert len(rows) == 30 and set(rows[score_lib.PREDICTED_DX]) <= {"benign", "malignant"}
    paths = [path[len("file:") :] for path in rows[score_lib.PATH][:4]]
    pixels = np.stack([decode_image(Path(path).read_bytes(), 75, 100, "simplejpeg") for path in paths])
    expected = load_model(str(malignant_model)).predict(pixels, verbose=0)
    np.testing.assert_allclose(rows[["prob_benign", "prob_malignant"]].to_numpy()[:4], expected, atol=1e-5)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert set(manifest["counts"]["predicted"]) == {"benign", "malignant"}
    assert sum(manifest["counts"]["predicted"].values()) == 30
    assert "prob_malignant" in manifest["columns"] and threshold_of(str(malignant_model)) == 0.4

    # The UDF returns the model's own columns too.
    predict = score_lib.predict_udf(str(malignant_model), precision="float32")
    frame = spark.createDataFrame([(f"file:{path}",) for path in paths], "path string")
    scored = frame.select(predict("path").alias("p")).select("p.*").toPandas()
    np.testing.assert_allclose(scored[["prob_benign", "prob_malignant"]].to_numpy(), expected, atol=1e-5)
    assert list(scored[score_lib.PREDICTED_DX]) == [MALIGNANT.labels[i] for i in expected.argmax(axis=1)]


@pytest.mark.slow
def test_a_labelled_table_and_ground_truth_are_grouped_as_the_task(generated, malignant_model, tmp_path):
    from jobs import ingest as ingest_job

    table = tmp_path / "table"
    metadata = generated / schema.METADATA_FILE
    assert (
        ingest_job.main(["--images", str(generated), "--metadata", str(metadata), "--output", str(table)])
        == 0
    )
    output = tmp_path / "table-scores"
    arguments = ["--model", str(malignant_model), "--table", str(table), "--output", str(output)]
    assert score_job.main(arguments) == 0
    rows = pd.read_parquet(output)
    metrics = json.loads((output / SCORING_METRICS_FILE).read_text())["all"]
    truth = MALIGNANT.map_labels(rows[schema.LABEL])
    assert metrics["labels"] == ["benign", "malignant"] and metrics["images"] == 30
    assert metrics["accuracy"] == pytest.approx((rows[score_lib.PREDICTED_LABEL].to_numpy() == truth).mean())
    assert metrics["malignant"]["at_threshold"]["threshold"] == 0.4  # the model's own operating point
    flagged = rows["prob_malignant"].to_numpy() >= 0.4
    assert 0 < truth.sum() < len(truth)
    assert metrics["malignant"]["at_threshold"]["sensitivity"] == pytest.approx(flagged[truth == 1].mean())

    # The ISIC ground truth (seven one-hot columns) is grouped the same way.
    frame = pd.read_csv(metadata)
    ground = pd.DataFrame({"image": frame["image_id"]})
    for column in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"):
        ground[column] = (frame["dx"] == column.lower()).astype(int)
    ground.to_csv(tmp_path / "truth.csv", index=False)
    images = [str(generated / folder) for folder in schema.IMAGE_FOLDERS]
    output = tmp_path / "truth-scores"
    arguments = ["--model", str(malignant_model), "--images", *images, "--output", str(output)]
    assert score_job.main([*arguments, "--truth", str(tmp_path / "truth.csv")]) == 0
    evaluated = json.loads((output / SCORING_METRICS_FILE).read_text())["truth"]
    assert evaluated["labels"] == ["benign", "malignant"] and evaluated["images"] == 30
    malignant = int(frame["dx"].isin(schema.MALIGNANT_DX).sum())
    assert evaluated["per_class"]["malignant"]["support"] == malignant


def test_isic_submission_and_mixed_ensembles_are_clear_errors(generated, malignant_model, tmp_path, capsys):
    arguments = ["--model", str(malignant_model), "--images", str(generated), "--output", str(tmp_path / "o")]
    assert score_job.main([*arguments, "--isic-csv", str(tmp_path / "submission.csv")]) == 2
    assert "submission holds the seven diagnoses' probabilities" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any image was scored
    seven = tiny_model_dir(tmp_path / "seven")
    arguments = ["--model", str(seven), "--model", str(malignant_model), "--images", str(generated)]
    assert score_job.main([*arguments, "--output", str(tmp_path / "both")]) == 2
    assert "ensemble members must predict the same labels" in capsys.readouterr().err
