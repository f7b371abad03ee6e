"""The paper's CNN (Table 6.1) and the self-describing model directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skinspark import schema
from skinspark.model import MODELS, build_model
from skinspark.model_dir import (
    ModelDirError,
    labels_spec,
    load_model,
    local_path,
    preprocessing_spec,
    read_labels,
    read_preprocessing,
    save_model_dir,
)

# Output shape and parameter count of each layer after the input, in order.
PAPER_TABLE = [
    ("Rescaling", (75, 100, 3), 0),
    ("Conv2D", (73, 98, 64), 1_792),
    ("MaxPooling2D", (36, 49, 64), 0),
    ("Conv2D", (34, 47, 64), 36_928),
    ("MaxPooling2D", (17, 23, 64), 0),
    ("Conv2D", (15, 21, 128), 73_856),
    ("MaxPooling2D", (7, 10, 128), 0),
    ("Conv2D", (5, 8, 128), 147_584),
    ("MaxPooling2D", (2, 4, 128), 0),
    ("Flatten", (1_024,), 0),
    ("Dropout", (1_024,), 0),
    ("Dense", (512,), 524_800),
    ("Dense", (7,), 3_591),
]


@pytest.fixture(scope="module")
def paper_model():
    return build_model()


def test_paper_cnn_matches_table_6_1(paper_model):
    assert paper_model.count_params() == 788_551
    layers = paper_model.layers[1:]  # after the input layer
    found = [(type(layer).__name__, tuple(layer.output_shape[1:]), layer.count_params()) for layer in layers]
    assert found == PAPER_TABLE
    assert paper_model.input.dtype.name == "uint8"
    assert all(layer.padding == "valid" for layer in layers if type(layer).__name__ == "Conv2D")
    assert layers[-1].activation.__name__ == "softmax"
    assert layers[-3].rate == 0.5


def test_scaling_lives_in_the_model(paper_model):
    rescaling = paper_model.layers[1]
    assert type(rescaling).__name__ == "Rescaling" and rescaling.scale == pytest.approx(1 / 255)
    pixels = np.full((1, 75, 100, 3), 255, dtype=np.uint8)
    assert np.allclose(rescaling(pixels).numpy(), 1.0)
    probabilities = paper_model.predict(pixels, verbose=0)
    assert probabilities.shape == (1, schema.NUM_CLASSES)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_registry_and_bad_arguments():
    assert "paper_cnn" in MODELS
    assert build_model(input_shape=(80, 100, 3), num_classes=3, dropout=0.2).output_shape == (None, 3)
    with pytest.raises(ValueError, match="unknown model 'mobilenet'"):
        build_model("mobilenet")
    with pytest.raises(ValueError, match="dropout"):
        build_model(dropout=1.0)


def test_model_dir_round_trip(tmp_path, paper_model):
    manifest = {"image_shape": [75, 100, 3], "config": {"decoder": "pillow"}, "counts": {"splits": {}}}
    save_model_dir(paper_model, str(tmp_path / "model"), manifest, "epochs: 3\n")
    model_dir = tmp_path / "model"
    assert sorted(path.name for path in model_dir.iterdir()) == [
        "_config.yaml",
        "ingest_manifest.json",
        "labels.json",
        "model.keras",
        "preprocessing.json",
    ]
    spec = read_preprocessing(f"file://{model_dir}")
    assert spec == {
        "height": 75,
        "width": 100,
        "channels": 3,
        "input_dtype": "uint8",
        "pixel_scaling": "model: Rescaling(1/255)",
        "decoder": "pillow",
    }
    assert spec == preprocessing_spec(75, 100, "pillow")
    assert json.loads((model_dir / "labels.json").read_text()) == labels_spec()
    assert read_labels(str(model_dir)) == list(schema.LABELS)
    assert json.loads((model_dir / "ingest_manifest.json").read_text()) == manifest
    assert (model_dir / "_config.yaml").read_text() == "epochs: 3\n"
    pixels = np.random.default_rng(0).integers(0, 256, (4, 75, 100, 3), dtype=np.uint8)
    reloaded = load_model(str(model_dir))
    assert np.allclose(reloaded.predict(pixels, verbose=0), paper_model.predict(pixels, verbose=0), atol=1e-6)
    assert not list(model_dir.glob(".*"))  # no temporary files left behind


def test_local_path_accepts_file_uris_only(tmp_path):
    assert local_path("file:///tmp/model") == "/tmp/model"
    assert local_path("file:/tmp/model") == "/tmp/model"
    assert local_path("relative/model") == str(Path("relative/model").resolve())  # one absolute form
    with pytest.raises(ModelDirError, match="local or shared"):
        local_path("hdfs://namenode/models/m")
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path))
