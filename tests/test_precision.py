"""Precision: the choice from the CPU's flags (forced both ways), and models that cross precisions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from skinspark import model_cache, precision
from skinspark.model import build_model
from skinspark.model_dir import load_model

X86_WITH = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
X86_WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
ARM_WITH = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the detection at a written /proc/cpuinfo: `cpuinfo(text)`."""

    def write(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", str(path))

    return write


@pytest.mark.parametrize(
    ("text", "units"), [(X86_WITH, True), (X86_WITHOUT, False), (ARM_WITH, True), ("", False)]
)
def test_auto_follows_the_cpu_flags(cpuinfo, text, units):
    cpuinfo(text)
    assert precision.has_bfloat16_units() is units
    assert precision.resolve("auto") == ("bfloat16" if units else "float32")
    assert precision.resolve("float32") == "float32"  # asked for, whatever the CPU


def test_a_missing_cpuinfo_means_no_units(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "CPUINFO", str(tmp_path / "absent"))
    assert precision.cpu_flags() == frozenset() and precision.resolve("auto") == "float32"


def test_forcing_bfloat16_without_units_works_but_warns(cpuinfo):
    cpuinfo(X86_WITHOUT)
    with pytest.warns(RuntimeWarning, match="without bfloat16 units"):
        assert precision.resolve("bfloat16") == "bfloat16"
    cpuinfo(X86_WITH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve("bfloat16") == "bfloat16"  # no warning where the units exist


def test_an_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        precision.resolve("float16")


def _fitted(kind: str):
    """The paper's CNN built in `kind` and fitted a few steps on a learnable toy task."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 96)
    images = rng.integers(0, 60, (96, 75, 100, 3)).astype(np.uint8)
    images[np.arange(96), labels * 10, :, :] = 255  # each class lights its own row
    with precision.policy(kind):
        model = build_model()
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(images, labels, batch_size=32, epochs=3, verbose=0)
    return model, images


def test_bfloat16_keeps_the_layers_float32_variables_and_a_float32_softmax():
    float32 = build_model()
    with precision.policy("bfloat16"):
        mixed = build_model()
    assert mixed.count_params() == float32.count_params() == 788_551
    assert [layer.name for layer in mixed.layers] == [layer.name for layer in float32.layers]
    assert {variable.dtype.name for variable in mixed.weights} == {"float32"}
    assert mixed.get_layer("conv1").compute_dtype == "bfloat16"
    assert (
        mixed.get_layer("probabilities").compute_dtype == "float32" and mixed.output.dtype.name == "float32"
    )
    assert precision.model_precision(mixed) == "bfloat16" and precision.model_precision(float32) == "float32"


@pytest.mark.parametrize("trained_in", ["float32", "bfloat16"])
def test_a_model_trained_in_one_precision_predicts_in_either(tmp_path, trained_in):
    model, images = _fitted(trained_in)
    model.save(tmp_path / "model.keras")
    loaded = load_model(str(tmp_path))
    assert precision.model_precision(loaded) == trained_in  # the file records how it was trained
    outputs = {}
    for kind in ("float32", "bfloat16"):
        converted = precision.in_precision(loaded, kind)
        assert precision.model_precision(converted) == kind
        # Converted to bfloat16, the input's 1/255 moves into conv1's kernel (uint8 is exact in bfloat16).
        folded = converted.get_layer("rescaling").scale == 1.0
        assert folded == (kind == "bfloat16" and trained_in == "float32")
        for layer in model.layers:
            expected = layer.get_weights()
            if folded and layer.name == "conv1":
                expected = [expected[0] / 255, *expected[1:]]
            got = converted.get_layer(layer.name).get_weights()
            assert all(np.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(got, expected, strict=True))
        outputs[kind] = converted.predict(images, batch_size=32, verbose=0)
        assert outputs[kind].dtype == np.float32
        assert np.allclose(outputs[kind].sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(outputs["float32"] - outputs["bfloat16"]).max() < 0.05
    assert (outputs["float32"].argmax(1) == outputs["bfloat16"].argmax(1)).mean() >= 0.9


def test_the_input_scale_is_folded_only_where_it_can_be():
    import tensorflow as tf

    model = build_model()
    mixed = precision.in_precision(model, "bfloat16")
    assert mixed.get_layer("rescaling").scale == 1.0 and mixed.count_params() == model.count_params()
    kernel = model.get_layer("conv1").get_weights()[0]
    assert np.allclose(mixed.get_layer("conv1").get_weights()[0], kernel / 255, rtol=1e-6)
    assert model.get_layer("rescaling").scale == pytest.approx(1 / 255)  # the original is untouched
    pixels = np.random.default_rng(1).integers(0, 256, (8, 75, 100, 3)).astype(np.uint8)
    assert np.abs(model.predict(pixels, verbose=0) - mixed.predict(pixels, verbose=0)).max() < 0.01

    inputs = tf.keras.Input(shape=(8, 8, 3))
    shifted = tf.keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(inputs)
    pooled = tf.keras.layers.GlobalAveragePooling2D(name="pool")(
        tf.keras.layers.Conv2D(4, 3, name="conv")(shifted)
    )
    offset_model = tf.keras.Model(inputs, tf.keras.layers.Dense(7, activation="softmax")(pooled))
    kept = precision.in_precision(offset_model, "bfloat16")  # an offset cannot move into a kernel
    assert kept.get_layer("rescaling").scale == pytest.approx(1 / 127.5)
    assert kept.get_layer("pool").compute_dtype == "float32"


def test_the_worker_cache_loads_each_precision_once(tmp_path):
    build_model().save(tmp_path / "model.keras")
    (tmp_path / "labels.json").write_text(json.dumps(list(range(7))))
    model_cache.clear()
    try:
        mixed = model_cache.get_model(str(tmp_path), "m", 1, "bfloat16")
        assert precision.model_precision(mixed) == "bfloat16"
        assert model_cache.get_model(str(tmp_path), "m", 1, "bfloat16") is mixed
        plain = model_cache.get_model(str(tmp_path), "m", 1, "float32")
        assert precision.model_precision(plain) == "float32" and plain is not mixed
        assert model_cache.load_count(str(tmp_path), "m", "bfloat16") == 1
        assert model_cache.load_count(str(tmp_path), "m", "float32") == 1
    finally:
        model_cache.clear()
