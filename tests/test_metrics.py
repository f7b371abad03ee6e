"""The clinician's metrics (AUC, melanoma operating points, calibration) and the ISIC 2018 Task 3 files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from skinspark import schema
from skinspark.metrics import (
    baselines,
    calibration,
    classification_metrics,
    operating_threshold,
    plot_reliability_diagram,
)
from skinspark.score import isic
from skinspark.score.columns import ERROR, ERROR_REASON

MEL = schema.LABEL_INDEX["mel"]


def _probabilities(rng, y_true, signal=2.0):
    logits = rng.normal(0.0, 1.0, (len(y_true), schema.NUM_CLASSES))
    logits[np.arange(len(y_true)), y_true] += signal
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_auc_and_average_precision_match_scikit_learn_one_vs_rest():
    rng = np.random.default_rng(0)
    y_true = rng.choice([0, 1, 2, 4, 5], 300)  # df (3) and vasc (6) never occur
    y_prob = _probabilities(rng, y_true)
    metrics = classification_metrics(y_true, y_prob)
    for index, label in enumerate(schema.LABELS):
        if index in (3, 6):
            assert metrics["roc_auc"][label] is None and metrics["average_precision"][label] is None
            continue
        assert metrics["roc_auc"][label] == pytest.approx(
            skm.roc_auc_score(y_true == index, y_prob[:, index])
        )
        assert metrics["average_precision"][label] == pytest.approx(
            skm.average_precision_score(y_true == index, y_prob[:, index])
        )
    defined = [value for value in metrics["roc_auc"].values() if value is not None]
    assert metrics["macro_auc"] == pytest.approx(np.mean(defined)) and 0.8 < metrics["macro_auc"] < 1.0


def test_melanoma_operating_points():
    y_true = np.array([MEL] * 5 + [5] * 5)
    y_prob = np.full((10, schema.NUM_CLASSES), 0.01)
    y_prob[:, MEL] = [0.9, 0.8, 0.7, 0.6, 0.2, 0.5, 0.3, 0.2, 0.1, 0.05]
    y_prob[:, 5] = 0.95 - y_prob[:, MEL]  # rows sum to 1; mel wins the arg-max where P(mel) > 0.475
    threshold = operating_threshold(y_true, y_prob)
    assert threshold == pytest.approx(0.6)  # the highest that flags 4 of the 5 melanomas (80 %)
    melanoma = classification_metrics(y_true, y_prob, threshold=threshold)["melanoma"]
    assert melanoma["at_argmax"] == {"sensitivity": 0.8, "specificity": 0.8}  # the nv row at 0.5 too
    assert melanoma["at_threshold"] == {"threshold": 0.6, "sensitivity": 0.8, "specificity": 1.0}
    assert operating_threshold(np.array([5, 5]), y_prob[:2]) is None  # no melanoma to fix it on


def test_calibration_error_by_hand():
    y_true = np.array([0, 0, 0, 1, 1])
    y_prob = np.zeros((5, schema.NUM_CLASSES))
    y_prob[:3, 0] = [0.95, 0.95, 0.95]  # right, right, wrong -> accuracy 2/3 at confidence 0.95
    y_prob[2, 0] = 0.95
    y_true[2] = 1
    y_prob[3:, 1] = 0.55  # both right at confidence 0.55
    y_prob[:3, 2] = 0.05
    y_prob[3:, 2] = 0.45
    figures = calibration(y_true, y_prob)
    expected = 3 / 5 * abs(0.95 - 2 / 3) + 2 / 5 * abs(0.55 - 1.0)
    assert figures["ece"] == pytest.approx(expected) and figures["bins"] == 15
    assert [(row["images"], row["accuracy"]) for row in figures["reliability"]] == [
        (2, 1.0),
        (3, pytest.approx(2 / 3)),
    ]
    perfect = np.eye(schema.NUM_CLASSES)[[0, 1, 2]]
    assert calibration(np.array([0, 1, 2]), perfect)["ece"] == pytest.approx(0.0)


def test_baselines_and_the_reliability_diagram(tmp_path):
    assert baselines([5, 5, 5, 4, 0]) == {
        "chance_balanced_accuracy": pytest.approx(1 / 3),
        "majority_accuracy": 0.6,
    }
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, schema.NUM_CLASSES, 200)
    plot_reliability_diagram(calibration(y_true, _probabilities(rng, y_true)), tmp_path / "r.png", "test")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# ISIC 2018 Task 3 files


def _scored_output(spark, tmp_path, rows):
    frame = pd.DataFrame(rows)
    columns = [schema.IMAGE_ID, *schema.PROB_COLUMNS, ERROR_REASON, ERROR]
    spark.createDataFrame(frame[columns]).write.parquet(str(tmp_path / "scored" / "chunk=000000"))
    return str(tmp_path / "scored")


def test_submission_and_truth_evaluation_count_every_mismatch(spark, tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, schema.NUM_CLASSES, 40)
    probabilities = _probabilities(rng, labels, signal=1.5)
    rows = []
    for number, row in enumerate(probabilities):
        failed = number == 7  # one image that could not be decoded
        rows.append(
            {
                schema.IMAGE_ID: f"ISIC_{number:07d}",
                **{
                    name: (None if failed else float(value))
                    for name, value in zip(schema.PROB_COLUMNS, row, strict=False)
                },
                ERROR_REASON: schema.REASON_UNDECODABLE if failed else None,
                ERROR: "undecodable: bad" if failed else None,
            }
        )
    output = _scored_output(spark, tmp_path, rows)

    submission = isic.write_submission(spark, output, str(tmp_path / "submission.csv"))
    written = pd.read_csv(tmp_path / "submission.csv")
    assert list(written.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert len(written) == 39 and submission["rows"] == 39 and submission["error_rows"] == 1
    first = written.set_index("image").loc["ISIC_0000000"]
    assert first["MEL"] == pytest.approx(probabilities[0, MEL]) and first["VASC"] == pytest.approx(
        probabilities[0, 6]
    )

    # Truth: images 0..34 (one-hot), one image no one scored, one row with two 1s; 35..39 have no truth.
    one_hot = pd.DataFrame(0, index=range(35), columns=list(isic.CLASS_COLUMNS))
    for number in range(35):
        one_hot.loc[number, schema.LABELS[labels[number]].upper()] = 1
    truth = pd.concat(
        [
            pd.DataFrame({"image": [f"ISIC_{n:07d}" for n in range(35)]}).join(one_hot),
            pd.DataFrame([{"image": "ISIC_9999999", **dict.fromkeys(isic.CLASS_COLUMNS, 0), "NV": 1}]),
            pd.DataFrame(
                [{"image": "ISIC_0000001", **dict.fromkeys(isic.CLASS_COLUMNS, 0), "NV": 1, "MEL": 1}]
            ),
        ]
    )
    truth.to_csv(tmp_path / "truth.csv", index=False)
    evaluated = isic.evaluate_against_truth(spark, output, str(tmp_path / "truth.csv"))
    assert evaluated["counts"] == {
        "truth_rows": 37,
        "invalid_truth_rows": 1,
        "truth_without_prediction": 1,
        "predictions_without_truth": 5,
        "matched_with_error": 1,
        "evaluated": 34,
    }
    matched = [n for n in range(35) if n != 7]
    expected = classification_metrics(labels[matched], probabilities[matched])
    assert evaluated["metrics"]["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert evaluated["metrics"]["macro_auc"] == pytest.approx(expected["macro_auc"])


def test_a_file_that_is_not_a_truth_csv_is_refused(spark, tmp_path):
    (tmp_path / "other.csv").write_text("image,dx\nISIC_0000000,nv\n")
    with pytest.raises(isic.ScoreError, match="lacks columns"):
        isic.read_truth(spark, str(tmp_path / "other.csv"))
