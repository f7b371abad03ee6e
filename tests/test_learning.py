"""The learning benchmark's sibling breakdown: a split by image's test figure taken apart into the
test images with a photograph of their lesion in the training split and the others, beside the
model's figure on its own training split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score

from jobs import train as train_job
from skinspark import schema
from skinspark.preprocess import decode_image
from skinspark.tools.benchmark.learning import sibling_breakdown
from tests.conftest import generated_dataset, ingested_table


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sibling_breakdown_of_a_split_by_image(spark, tmp_path):
    source = tmp_path / "source"
    generated_dataset(source, images=200, seed=3, workers=2)
    table, model_dir = tmp_path / "table", tmp_path / "model"
    metadata_csv = str(source / schema.METADATA_FILE)
    ingested_table(source, table, "--conf", "split_by=image")
    train_args = ["--data", str(table), "--output", str(model_dir), "--epochs", "1", "--precision", "float32"]
    assert train_job.main([*train_args, "--num-proc", "2", "--batch-size", "16"]) == 0

    found = sibling_breakdown(table, model_dir)

    # Recomputed from the CSV's lesion ids, the job's test predictions and the saved model.
    metadata = pd.read_csv(metadata_csv)
    lesion_of = dict(zip(metadata[schema.IMAGE_ID], metadata[schema.LESION_ID], strict=True))
    train_ids = pd.read_parquet(table / "split=train", columns=[schema.IMAGE_ID])[schema.IMAGE_ID]
    train_lesions = {lesion_of[image_id] for image_id in train_ids}
    predictions = pd.read_csv(model_dir / "test_predictions.csv")
    sibling = predictions[schema.IMAGE_ID].map(lesion_of).isin(train_lesions).to_numpy()
    assert found["test_images"] == len(predictions)
    assert 0 < found["with_training_sibling"] == sibling.sum() < len(predictions)
    for key, rows in (("with_sibling", sibling), ("without_sibling", ~sibling)):
        expected = balanced_accuracy_score(predictions[schema.LABEL][rows], predictions["predicted"][rows])
        assert found[f"balanced_accuracy_{key}"] == pytest.approx(expected, abs=1e-4)

    where = {path.stem: path for path in source.glob("HAM10000_images_part_*/*.jpg")}
    images = np.stack([decode_image(where[image_id].read_bytes(), 75, 100) for image_id in train_ids])
    labels = metadata.set_index(schema.IMAGE_ID).loc[train_ids, schema.DX].map(schema.LABELS.index)
    model = tf.keras.models.load_model(model_dir / "model.keras", compile=False)
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    assert found["balanced_accuracy_train_split"] == pytest.approx(
        balanced_accuracy_score(labels, predicted), abs=1e-4
    )
