"""The ImageNet backbones behind `--model`: their preprocessing, their weights files, their sizes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import jobs.score as score_job
import jobs.train as train_job
from skinspark import schema
from skinspark import score as score_lib
from skinspark.model import (
    BACKBONE_LAYER,
    BACKBONES,
    MODELS,
    WeightsError,
    _preprocessing,
    build_model,
    min_input_size,
    set_trainable_layers,
)
from skinspark.model_dir import load_model, read_preprocessing, save_model_dir
from skinspark.train import rank
from skinspark.train.rank import Phase, restore_into, training_phases
from tests.conftest import BACKENDS, generated_dataset, ingested_table

SMALL = (32, 32, 3)  # MobileNetV2's smallest input: the cheapest backbone to build in a test


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A no-top MobileNetV2 weights file as Keras writes one (random weights: nothing is downloaded)."""
    tf.keras.utils.set_random_seed(7)
    network = tf.keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=SMALL)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_no_top.h5"
    network.save_weights(str(path))
    return path, network.get_weights()


def test_every_backbone_is_a_model_choice():
    assert set(MODELS) == {"paper_cnn", "mobilenet_v2", "resnet50", "inception_v3", "densenet201"}
    assert min_input_size("inception_v3") == 75 and min_input_size("mobilenet_v2") == 32


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("tf", tf.keras.applications.mobilenet_v2.preprocess_input),
        ("caffe", tf.keras.applications.resnet50.preprocess_input),
        ("torch", tf.keras.applications.densenet.preprocess_input),
    ],
)
def test_preprocessing_layers_match_keras_preprocess_input(kind, reference):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    inputs = tf.keras.Input(shape=(8, 8, 3), dtype="uint8")
    layers_model = tf.keras.Model(inputs, _preprocessing(kind, inputs))
    expected = reference(pixels.astype(np.float32))
    np.testing.assert_allclose(layers_model.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-4)


def test_a_weights_file_is_loaded_into_the_backbone(weights_file):
    path, saved = weights_file
    model = build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights=str(path))
    loaded = model.get_layer(BACKBONE_LAYER).get_weights()
    assert len(loaded) == len(saved)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True))
    random = build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights="none")
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(random.get_layer(BACKBONE_LAYER).get_weights(), saved, strict=True)
    )
    probabilities = model.predict(np.zeros((2, *SMALL), dtype=np.uint8), verbose=0)
    assert probabilities.shape == (2, schema.NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_backbone_model_saves_and_loads_with_its_preprocessing(weights_file, tmp_path):
    path, _ = weights_file
    model = build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights=str(path))
    manifest = {"image_shape": list(SMALL), "config": {"decoder": "simplejpeg"}}
    save_model_dir(model, str(tmp_path / "model"), manifest, "model: mobilenet_v2\n")
    reloaded = load_model(str(tmp_path / "model"))
    pixels = np.random.default_rng(1).integers(0, 256, (3, *SMALL), dtype=np.uint8)
    np.testing.assert_allclose(
        reloaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6
    )


def test_freezing_and_unfreezing_the_backbone(weights_file):
    path, _ = weights_file
    model = build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights=str(path))
    head = model.get_layer("probabilities").trainable_weights
    set_trainable_layers(model, 0)
    assert model.trainable_weights == head
    set_trainable_layers(model, 10)
    network = model.get_layer(BACKBONE_LAYER)
    assert [layer.trainable for layer in network.layers[-10:]] == [True] * 10
    assert not any(layer.trainable for layer in network.layers[:-10])
    assert len(model.trainable_weights) > len(head)
    set_trainable_layers(model, None)
    assert all(layer.trainable for layer in network.layers)


def test_imagenet_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as error:
        build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights="imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert BACKBONES["mobilenet_v2"].weights_file in message
    assert str(tmp_path / "models") in message and "--weights PATH" in message


def test_the_imagenet_file_in_keras_cache_is_used(weights_file, tmp_path, monkeypatch):
    path, saved = weights_file
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / BACKBONES["mobilenet_v2"].weights_file).write_bytes(path.read_bytes())
    model = build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights="imagenet")
    assert np.array_equal(model.get_layer(BACKBONE_LAYER).get_weights()[0], saved[0])


def test_unusable_weights_and_sizes_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        build_model("mobilenet_v2", SMALL, schema.NUM_CLASSES, 0.2, weights=str(tmp_path / "absent.h5"))
    with pytest.raises(WeightsError, match="trains from scratch"):
        build_model("paper_cnn", (75, 100, 3), schema.NUM_CLASSES, 0.5, weights="imagenet")
    with pytest.raises(
        ValueError, match=r"at least 75x75, got 64x64: ingest again with larger --height/--width"
    ):
        build_model("inception_v3", (64, 64, 3), schema.NUM_CLASSES, 0.2)
    with pytest.raises(ValueError, match="at least 46x46"):
        build_model("paper_cnn", (40, 100, 3), schema.NUM_CLASSES, 0.5)


# ------------------------------------------------------------------------------------------------
# The jobs: a backbone trained from a weights file on a table of its size, then scoring with it
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_table(spark, tmp_path_factory):
    """120 generated images ingested at 32x40, MobileNetV2's size range, with the source folder."""
    source = tmp_path_factory.mktemp("backbone-source")
    generated_dataset(source, images=120, seed=3, workers=2)
    table = tmp_path_factory.mktemp("backbone-table") / "ham"
    return source, ingested_table(source, table, "--height", "32", "--width", "40")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backbone_fine_tunes_from_its_weights_file_and_scores(
    backend, small_table, weights_file, tmp_path, capsys
):
    """Two phases: one epoch with the backbone frozen, one with its top 12 layers at a tenth of the rate.
    The layers below them never train (their weights are still the file's), the top ones do."""
    source, table = small_table
    path, saved = weights_file
    model_dir = tmp_path / "model"
    arguments = ["--data", str(table), "--output", str(model_dir), "--epochs", "2", "--num-proc", "2"]
    arguments += [
        "--batch-size",
        "16",
        "--model",
        "mobilenet_v2",
        "--weights",
        str(path),
        "--backend",
        backend,
    ]
    tuning = [
        "--conf",
        "freeze_epochs=1",
        "--conf",
        "fine_tune_layers=12",
        "--conf",
        "fine_tune_rate_factor=0.1",
    ]
    tuning += ["--learning-rate", "0.0003", "--conf", "warmup_steps=1"]  # the rate is 0.0006 from step 1 on
    assert train_job.main([*arguments, *tuning, "--precision", "float32"]) == 0, capsys.readouterr().err
    assert "mobilenet_v2" in (model_dir / "_config.yaml").read_text()
    assert read_preprocessing(str(model_dir))["height"] == 32
    history = pd.read_csv(model_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert list(history["learning_rate"]) == pytest.approx([0.0006, 0.00006], rel=1e-4)
    model = load_model(str(model_dir))
    assert model.name == "mobilenet_v2"
    network = model.get_layer(BACKBONE_LAYER)
    reference = tf.keras.applications.MobileNetV2(include_top=False, weights=str(path), input_shape=SMALL)
    bottom = [w for layer in reference.layers[:-12] for w in layer.get_weights()]
    trained_bottom = [w for layer in network.layers[:-12] for w in layer.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(trained_bottom, bottom, strict=True))
    top = [w for layer in reference.layers[-12:] for w in layer.trainable_weights]
    trained_top = [w for layer in network.layers[-12:] for w in layer.trainable_weights]
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(trained_top, top, strict=True))
    output = tmp_path / "scored"
    images = [str(source / folder) for folder in schema.IMAGE_FOLDERS]
    assert score_job.main(["--model", str(model_dir), "--images", *images, "--output", str(output)]) == 0
    scored = pd.read_parquet(output)
    assert len(scored) == 120 and scored[score_lib.ERROR_REASON].isna().all()
    np.testing.assert_allclose(scored[list(schema.PROB_COLUMNS)].sum(axis=1), 1.0, rtol=1e-4)


def test_fine_tuning_phases_and_where_a_resumed_run_restores(monkeypatch):
    plan = SimpleNamespace(model_name="mobilenet_v2", epochs=5, initial_epoch=0, freeze_epochs=2)
    plan.fine_tune_layers, plan.fine_tune_rate_factor, plan.resume_dir = 0, 0.1, None
    assert training_phases(plan) == [Phase(0, 2, 0, 1.0), Phase(2, 5, None, 0.1)]
    plan.fine_tune_layers = 30
    assert training_phases(plan)[1] == Phase(2, 5, 30, 0.1)
    plan.initial_epoch = 2
    assert training_phases(plan) == [Phase(2, 5, 30, 0.1)]
    plan.model_name = "paper_cnn"
    assert training_phases(plan) == [Phase(0, 5, None, 1.0)]
    plan.model_name, plan.freeze_epochs, plan.initial_epoch = "resnet50", 0, 0
    assert training_phases(plan) == [Phase(0, 5, None, 1.0)]
    calls = []
    monkeypatch.setattr(rank, "restore_checkpoint", lambda path, model, optimizer: calls.append(optimizer))
    plan.resume_dir = "checkpoints/epoch-00002"
    plan.initial_epoch = 2  # the checkpoint closed the frozen phase: its optimizer had other variables
    assert restore_into(plan, Phase(2, 5, None, 0.1), "model", "optimizer") and calls == [None]
    plan.initial_epoch = 3  # written inside the fine-tuning phase: its optimizer state comes back too
    assert restore_into(plan, Phase(2, 5, None, 0.1), "model", "optimizer") and calls == [None, "optimizer"]
    assert not restore_into(plan, Phase(5, 6, None, 0.1), "model", "optimizer")


def test_training_refuses_a_table_smaller_than_the_model_and_unusable_weights(small_table, tmp_path, capsys):
    _, table = small_table
    arguments = ["--data", str(table), "--output", str(tmp_path / "m"), "--epochs", "1"]
    assert train_job.main([*arguments, "--model", "inception_v3"]) == 2
    assert "inception_v3 needs images of at least 75x75, but" in capsys.readouterr().err
    assert train_job.main([*arguments, "--model", "paper_cnn"]) == 2
    assert "ingest again with --height and --width of 46 or more" in capsys.readouterr().err
    assert train_job.main([*arguments, "--model", "mobilenet_v2", "--weights", str(tmp_path / "no.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert train_job.main([*arguments, "--conf", "freeze_epochs=2"]) == 2
    assert "freeze_epochs freezes a backbone: paper_cnn has none" in capsys.readouterr().err
