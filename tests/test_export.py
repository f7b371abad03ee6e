"""Edge export: a trained model as TensorFlow Lite, checked by the interpreter against Keras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import jobs.export as export_job
import jobs.score as score_job
from skinspark import schema
from skinspark import score as score_lib
from skinspark.model import build_model
from skinspark.model_dir import EXPORT_FILE, TFLITE_FILE, save_model_dir
from skinspark.table import petastorm_url, read_split
from tests.conftest import generated_dataset, ingested_table


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """A small table and the paper's CNN fitted on its train split for a few epochs in memory, saved as a
    model directory whose _manifest.json names the table (as the training job writes it)."""
    source = tmp_path_factory.mktemp("export-source")
    generated_dataset(source, images=150, seed=4, workers=2)
    table = ingested_table(source, tmp_path_factory.mktemp("export-table") / "ham")
    url = petastorm_url(table.absolute().as_uri())
    split = read_split(f"{url}/split=train", 75, 100)
    tf.keras.utils.set_random_seed(0)
    model = build_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(split["image"], split["label"], epochs=4, batch_size=32, verbose=0)
    model_dir = tmp_path_factory.mktemp("export-model") / "model"
    ingest_manifest = json.loads((table / "_manifest.json").read_text())
    save_model_dir(model, str(model_dir), ingest_manifest, "model: paper_cnn\n")
    (model_dir / "_manifest.json").write_text(json.dumps({"data": table.absolute().as_uri()}))
    return model_dir, url, source


def _interpret(path: Path, images: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(sink["index"])[0])
    return np.asarray(outputs)


@pytest.mark.slow
def test_float_export_agrees_with_keras_and_checks_itself(trained, capsys):
    model_dir, url, _ = trained
    assert export_job.main(["--model", str(model_dir), "--format", "tflite", "--strict"]) == 0
    out = model_dir / "tflite-none"
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [TFLITE_FILE, "labels.json", "preprocessing.json", EXPORT_FILE]
    )
    assert (out / "labels.json").read_text() == (model_dir / "labels.json").read_text()
    report = json.loads((out / EXPORT_FILE).read_text())
    test = read_split(f"{url}/split=test", 75, 100)
    assert report["test_images"] == len(test["label"]) > 0
    assert report["argmax_agreement"] == 1.0 and report["meets_target"]
    assert report["max_probability_difference"] < 1e-4
    assert report["milliseconds_per_image"] > 0 and report["input_dtype"] == "uint8"
    assert report["tflite_bytes"] == (out / TFLITE_FILE).stat().st_size
    # The file stands alone: the interpreter gives the Keras model's probabilities.
    keras = tf.keras.models.load_model(model_dir / "model.keras", compile=False)
    np.testing.assert_allclose(
        _interpret(out / TFLITE_FILE, test["image"]), keras.predict(test["image"]), atol=1e-4
    )
    printed = capsys.readouterr().out
    assert "argmax agreement with Keras 100.00% (meets the 99% target)" in printed


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_exports_are_smaller_and_record_their_agreement(trained, quantize, tmp_path):
    model_dir, _, _ = trained
    out = tmp_path / quantize
    code = export_job.main(["--model", str(model_dir), "--quantize", quantize, "--output", str(out)])
    assert code == 0
    report = json.loads((out / EXPORT_FILE).read_text())
    float_out = tmp_path / "none"
    assert export_job.main(["--model", str(model_dir), "--output", str(float_out)]) == 0
    float_size = json.loads((float_out / EXPORT_FILE).read_text())["tflite_bytes"]
    # float16 halves the weights; int8 quarters them (the model is almost all weights).
    assert report["tflite_bytes"] < (0.6 if quantize == "float16" else 0.35) * float_size
    assert report["quantize"] == quantize and report["agreement_target"] == (
        0.99 if quantize == "float16" else 0.97
    )
    assert 0.0 <= report["argmax_agreement"] <= 1.0
    assert report["meets_target"] == (report["argmax_agreement"] >= report["agreement_target"])
    if quantize == "float16":  # float16 weights move probabilities by far less than int8 activations
        assert report["max_probability_difference"] < 0.02
    else:
        assert report["calibration_images"] > 0


def test_bad_exports_are_one_line_errors(trained, tmp_path, capsys):
    model_dir, _, _ = trained
    assert export_job.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert "export: error: cannot export" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.keras", "labels.json", "preprocessing.json"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    assert export_job.main(["--model", str(bare)]) == 2
    assert "does not say which table the model was trained on: pass --data TABLE" in capsys.readouterr().err
    assert export_job.main(["--model", str(model_dir), "--calibration-images", "0"]) == 2
    assert "--calibration-images must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_scoring_runs_an_exported_model_as_it_runs_keras(trained, tmp_path, capsys):
    model_dir, _, source = trained
    images = [str(source / folder) for folder in schema.IMAGE_FOLDERS]

    def scored(model, name):
        output = tmp_path / name
        arguments = [
            "--model",
            str(model),
            "--images",
            *images,
            "--output",
            str(output),
            "--precision",
            "float32",
        ]
        assert score_job.main(arguments) == 0, capsys.readouterr().err
        manifest = json.loads((output / "_manifest.json").read_text())
        return pd.read_parquet(output).set_index(score_lib.PATH).sort_index(), manifest

    for quantize in ("none", "int8"):
        assert (
            export_job.main(
                ["--model", str(model_dir), "--quantize", quantize, "--output", str(tmp_path / quantize)]
            )
            == 0
        )
        assert not (tmp_path / quantize / "model.keras").exists()
    keras, _ = scored(model_dir, "keras")
    lite, manifest = scored(tmp_path / "none", "lite")
    columns = list(schema.PROB_COLUMNS)
    assert len(lite) == len(keras) == 150 and lite[score_lib.ERROR_REASON].isna().all()
    np.testing.assert_allclose(lite[columns], keras[columns], atol=1e-4)
    assert set(lite[score_lib.MODEL_ID]) == {manifest["model"]["model_id"]} != set(keras[score_lib.MODEL_ID])
    assert set(manifest["run"]["workers"]["precision"]) == {"tflite"}
    quantized, _ = scored(tmp_path / "int8", "int8-scored")
    np.testing.assert_allclose(quantized[columns].sum(axis=1), 1.0, atol=0.02)
    agreement = (quantized[score_lib.PREDICTED_DX] == keras[score_lib.PREDICTED_DX]).mean()
    assert agreement >= 0.9
