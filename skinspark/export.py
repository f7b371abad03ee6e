"""Edge export: a trained MODEL_DIR as a TensorFlow Lite model that checks itself against Keras.

`export_tflite` converts `model.keras` with `tf.lite.TFLiteConverter` (`quantize`: "none" keeps float32,
"float16" stores the weights as float16, "int8" quantizes weights and activations with a calibration
on the validation split, falling back to float for any operation without an integer kernel), writes
`model.tflite` with the model's `labels.json` and `preprocessing.json` beside it, then runs the TFLite
interpreter on one thread over the test split and records in `export.json` how far it agrees with
the Keras model (share of equal argmax predictions, largest probability difference), the file size
and the milliseconds per image. The input stays the ingested uint8 pixels, as for the Keras model.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from skinspark import model_dir as model_dir_module
from skinspark import schema
from skinspark.errors import TableError
from skinspark.manifest import MANIFEST_FILE, write_json_atomic
from skinspark.model_dir import EXPORT_FILE, TFLITE_FILE
from skinspark.table import petastorm_url, read_split, split_url

FORMATS = ("tflite",)
QUANTIZATIONS = ("none", "float16", "int8")
# Share of the test split's argmax predictions the export must share with the Keras model.
AGREEMENT_TARGETS = {"none": 0.99, "float16": 0.99, "int8": 0.97}
# Validation images the int8 calibration runs (all of them when fewer; HAM10000's split holds about 1,000).
# The activation ranges it measures decide int8's agreement with Keras: on a model trained 8 epochs on
# 4,000 generated images, 200 images gave 96.7 % of argmax predictions equal, its whole split of 402 98.0 %.
CALIBRATION_IMAGES = 1000


class ExportError(ValueError):
    """A model directory or table that cannot be exported or checked."""


def export_tflite(
    model_dir: str,
    output_dir: str | None = None,
    quantize: str = "none",
    data: str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> dict:
    """Write `model.tflite` (with labels.json, preprocessing.json and export.json) and check it.

    Args:
        model_dir: a trained model directory.
        output_dir: where to write (default `MODEL_DIR/tflite-<quantize>`).
        quantize: one of QUANTIZATIONS.
        data: the ingested table whose val (calibration) and test (check) splits to read; default the
            table the model was trained on (MODEL_DIR's `_manifest.json`).
        calibration_images: validation images for the int8 calibration.

    Returns:
        The contents of export.json: files, size, quantization, agreement with Keras on the test
        split, milliseconds per image on one thread, and whether the agreement target is met.

    Raises:
        ExportError: an unknown quantization, a model directory without its files, or no table (or
            one whose splits do not read whole).
    """
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    try:
        source = Path(model_dir_module.local_path(model_dir))
        spec = model_dir_module.read_model_spec(str(source))
        model = model_dir_module.load_model(str(source))
    except (model_dir_module.ModelDirError, FileNotFoundError, OSError) as error:
        raise ExportError(f"cannot export {model_dir}: {error}") from None
    except Exception as error:  # a model.keras this Keras cannot read (e.g. saved by another stack's)
        first_line = str(error).splitlines()[0][:300] if str(error) else ""
        raise ExportError(
            f"cannot load {model_dir}/{model_dir_module.MODEL_FILE}: {type(error).__name__}: {first_line}"
        ) from None
    if isinstance(model, model_dir_module.TFLiteModel):
        raise ExportError(
            f"{model_dir} holds a TensorFlow Lite model already; export its Keras model directory"
        )
    table = petastorm_url(data or _trained_on(source))
    height, width = int(spec["height"]), int(spec["width"])
    try:
        validation = read_split(split_url(table, schema.VAL), height, width)
        test = read_split(split_url(table, schema.TEST), height, width)
    except TableError as error:
        raise ExportError(str(error)) from error
    if len(test["label"]) == 0:
        raise ExportError(f"{table} has no test images to check the export on")

    calibration = validation["image"][:calibration_images]
    if quantize == "int8" and len(calibration) == 0:
        raise ExportError(f"{table} has no validation images to calibrate int8 on")
    flat = convert(model, quantize, calibration)

    target = Path(output_dir) if output_dir else source / f"tflite-{quantize}"
    target.mkdir(parents=True, exist_ok=True)
    (target / TFLITE_FILE).write_bytes(flat)
    for name in (model_dir_module.LABELS_FILE, model_dir_module.PREPROCESSING_FILE):
        shutil.copyfile(source / name, target / name)
    check = check_tflite(flat, model, test["image"])
    report = {
        "model_dir": str(source),
        "output_dir": str(target),
        "format": "tflite",
        "quantize": quantize,
        "table": table,
        "calibration_images": int(min(calibration_images, len(validation["label"])))
        if quantize == "int8"
        else 0,
        "tflite_bytes": len(flat),
        "keras_bytes": (source / model_dir_module.MODEL_FILE).stat().st_size,
        **check,
        "agreement_target": AGREEMENT_TARGETS[quantize],
        "meets_target": check["argmax_agreement"] >= AGREEMENT_TARGETS[quantize],
        "tensorflow": tf.__version__,
    }
    write_json_atomic(target / EXPORT_FILE, report)
    return report


def convert(model, quantize: str, calibration: np.ndarray) -> bytes:
    """The TFLite flatbuffer of a Keras model in one of QUANTIZATIONS (int8 calibrated on `calibration`)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    return converter.convert()


def check_tflite(flat: bytes, model, images: np.ndarray) -> dict:
    """Run the TFLite model one image at a time on one thread and compare it with `model` (Keras).

    Returns test_images, argmax_agreement, max_probability_difference and milliseconds_per_image (the
    median of the per-image times of a one-image call, input and output copies included).
    """
    lite = model_dir_module.TFLiteModel(content=flat, threads=1)
    outputs, seconds = [], []
    for image in images:
        started = time.perf_counter()
        outputs.append(lite.predict_on_batch(image[None])[0])
        seconds.append(time.perf_counter() - started)
    predicted = np.asarray(outputs, dtype=np.float64)
    keras = model.predict(images, batch_size=256, verbose=0).astype(np.float64)
    return {
        "test_images": int(len(images)),
        "argmax_agreement": round(float((predicted.argmax(1) == keras.argmax(1)).mean()), 4),
        "max_probability_difference": round(float(np.abs(predicted - keras).max()), 6),
        "milliseconds_per_image": round(1000 * statistics.median(seconds), 3),
        "input_dtype": np.dtype(lite.input["dtype"]).name,
    }


def _trained_on(model_dir: Path) -> str:
    manifest = model_dir / MANIFEST_FILE
    try:
        return json.loads(manifest.read_text())["data"]
    except (OSError, ValueError, KeyError):
        raise ExportError(
            f"{manifest} does not say which table the model was trained on: pass --data TABLE"
        ) from None


def export_summary(report: dict) -> str:
    """The export's figures in a few lines."""
    verdict = "meets" if report["meets_target"] else "is BELOW"
    return (
        f"export: {report['output_dir']}/{TFLITE_FILE} ({report['quantize']}, "
        f"{report['tflite_bytes']:,} bytes; model.keras {report['keras_bytes']:,})\n"
        f"  test split: {report['test_images']} images, argmax agreement with Keras "
        f"{report['argmax_agreement']:.2%} ({verdict} the {report['agreement_target']:.0%} target), largest "
        f"probability difference {report['max_probability_difference']:.4f}\n"
        f"  TFLite on one thread: {report['milliseconds_per_image']:.2f} ms per image"
    )
