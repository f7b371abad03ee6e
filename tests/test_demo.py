"""The demo (what `make demo` runs): generate, ingest, train, score, on a tiny sample."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from skinspark import schema
from skinspark.tools import demo


@pytest.mark.slow
def test_demo_generates_ingests_trains_and_scores(spark, tmp_path, capsys):
    assert (
        demo.main(["--output", str(tmp_path), "--images", "120", "--epochs", "1", "--master", "local[2]"])
        == 0
    )
    printed = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "results:"):
        assert step in printed
    assert "against chance" in printed and "always predicting the majority class" in printed
    table = json.loads((tmp_path / "table" / "_manifest.json").read_text())
    assert table["counts"]["files"]["ingested"] == 120
    model = json.loads((tmp_path / "model" / "_manifest.json").read_text())
    assert model["epochs_trained"] == 1 and (tmp_path / "model" / "model.keras").is_file()
    assert set(json.loads((tmp_path / "model" / "metrics.json").read_text())) >= {
        "accuracy",
        "balanced_accuracy",
    }
    predictions = pd.read_parquet(tmp_path / "predictions")
    assert len(predictions) == 120 and predictions["path"].is_unique
    assert predictions["error"].isna().all()
    assert set(predictions["predicted_dx"]) <= set(schema.LABELS)
