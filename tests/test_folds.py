"""k-fold cross-validation: the fold assignment (no Spark), ingest --folds, one fold's table, and whole
`train --cross-validate` runs with 2 folds on each backend, on a small synthetic HAM10000."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import ingest as ingest_job
from jobs import train as train_job
from skinspark import precision, schema
from skinspark.config import check_folds
from skinspark.ingest.split import assign_folds, missing_classes
from skinspark.metrics import classification_metrics
from skinspark.model_dir import CROSS_VALIDATION_CSV, CROSS_VALIDATION_JSON
from skinspark.train import TrainInputError
from skinspark.train.cross_validation import METRICS
from skinspark.train.folds import FOLD_DATA, fold_table
from tests.conftest import BACKENDS, generated_dataset

# --------------------------------------------------------------------------------------------------
# The fold assignment on small frames (no Spark)


def _rows(lesions_by_class: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """One row per image: lesions of 1 to 3 images each, whole lesions in train, val or test."""
    rng = np.random.default_rng(seed)
    rows = []
    for dx, lesions in lesions_by_class.items():
        for number in range(lesions):
            split = rng.choice(schema.SPLITS, p=[0.8, 0.1, 0.1])
            for _ in range(rng.integers(1, 4)):
                rows.append({"lesion_id": f"HAM_{dx}_{number:04d}", "dx": dx, "split": split})
    frame = pd.DataFrame(rows)
    frame.insert(0, "image_id", [f"ISIC_{index:06d}" for index in rng.permutation(len(frame))])
    return frame


def test_folds_keep_lesions_whole_and_cover_train_and_val_only():
    rows = _rows({"nv": 300, "mel": 60, "bkl": 50, "df": 12})
    folds = assign_folds(rows, 5, seed=42)
    assert str(folds.dtype) == "Int32" and folds.index.equals(rows.index)
    test = rows["split"] == "test"
    assert folds[test].isna().all() and folds[~test].notna().all()
    assert set(folds.dropna().astype(int)) == {0, 1, 2, 3, 4}
    assert (rows[~test].assign(fold=folds).groupby("lesion_id")["fold"].nunique() == 1).all()


def test_each_fold_keeps_the_class_mix():
    rows = _rows({"nv": 600, "mel": 120, "bkl": 100}, seed=3)
    rows["fold"] = assign_folds(rows, 4, seed=7)
    pool = rows[rows["fold"].notna()]
    overall = pool["dx"].value_counts(normalize=True)
    for _, members in pool.groupby("fold"):
        shares = members["dx"].value_counts(normalize=True)
        assert (shares - overall).abs().max() < 0.05, (shares.to_dict(), overall.to_dict())
        assert abs(len(members) - len(pool) / 4) < 0.05 * len(pool)


def test_folds_depend_on_the_rows_and_the_seed_only():
    rows = _rows({"nv": 200, "mel": 40}, seed=1)
    first = assign_folds(rows, 3, seed=5)
    shuffled = rows.sample(frac=1.0, random_state=11)
    again = assign_folds(shuffled, 3, seed=5)
    assert first.equals(again.reindex(rows.index))
    other = assign_folds(rows, 3, seed=6)
    assert (first.dropna() != other.dropna()).sum() > 0.2 * first.notna().sum()


def test_bad_fold_counts_and_too_few_lesions_are_one_clear_error():
    assert check_folds(0) == 0 and check_folds(5) == 5
    for bad in (1, -2, True):
        with pytest.raises(ValueError, match="folds must be 0 .no folds. or at least 2"):
            check_folds(bad)
    rows = _rows({"nv": 3}, seed=0).assign(split="train")
    with pytest.raises(ValueError, match="cannot make 4 folds of 3 lesion_id value"):
        assign_folds(rows, 4, seed=0)


def test_a_class_with_fewer_lesions_than_folds_is_named_not_fatal():
    rows = _rows({"nv": 100, "df": 2}, seed=2).assign(split="train")
    rows["fold"] = assign_folds(rows, 5, seed=1)
    lacking = sorted(set(range(5)) - set(rows.loc[rows["dx"] == "df", "fold"].astype(int)))
    assert len(lacking) >= 3
    assert missing_classes(rows, 5) == [
        f"class df is in no image of fold(s) {', '.join(map(str, lacking))}: "
        "2 lesion(s) outside the test split for 5 folds"
    ]


# --------------------------------------------------------------------------------------------------
# ingest --folds and one fold's table (Spark)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folds-source")
    generated_dataset(root, images=150, seed=1, workers=2)
    return root


def _ingest(source: Path, output: Path, *extra: str) -> int:
    arguments = ["--images", str(source), "--metadata", str(source / schema.METADATA_FILE)]
    return ingest_job.main([*arguments, "--output", str(output), *extra])


@pytest.fixture(scope="module")
def folded(spark, source, tmp_path_factory) -> Path:
    table = tmp_path_factory.mktemp("folds-table") / "ham"
    assert _ingest(source, table, "--folds", "2") == 0
    return table


def _table(path: Path) -> pd.DataFrame:
    return pq.read_table(path, columns=["image_id", "lesion_id", "dx", "fold", "split"]).to_pandas()


def _manifest(path: Path) -> dict:
    return json.loads((path / "_manifest.json").read_text())


@pytest.mark.slow
def test_ingest_with_folds_adds_an_integer_fold_column_by_lesion(folded, capsys):
    for split in schema.SPLITS:
        written = pq.read_schema(next((folded / f"split={split}").glob("*.parquet")))
        assert str(written.field("fold").type) == "int32"
    table = _table(folded)
    test = table["split"] == "test"
    assert table.loc[test, "fold"].isna().all()
    assert set(table.loc[~test, "fold"]) == {0, 1} and table.loc[~test, "fold"].notna().all()
    assert (table[~test].groupby("lesion_id")["fold"].nunique() == 1).all()

    manifest = _manifest(folded)
    assert manifest["folds"] == 2 and manifest["config"]["folds"] == 2
    for fold in (0, 1):
        members = table[table["fold"] == fold]
        expected = {label: int((members["dx"] == label).sum()) for label in schema.LABELS}
        assert manifest["counts"]["folds"][str(fold)] == {
            "images": len(members),
            "lesions": members["lesion_id"].nunique(),
            "by_class": expected,
        }
    # The train/val/test split is the one ingest makes without folds: folds only cut train + val.
    splits = manifest["counts"]["splits"]
    assert sum(entry["images"] for entry in manifest["counts"]["folds"].values()) == (
        splits["train"]["images"] + splits["val"]["images"]
    )


@pytest.mark.slow
def test_ingest_without_folds_writes_no_fold_column_and_bad_folds_exit_2(spark, source, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert _ingest(source, plain) == 0
    assert "fold" not in pq.read_schema(next((plain / "split=train").glob("*.parquet"))).names
    assert "folds" not in _manifest(plain) and "folds" not in _manifest(plain)["counts"]
    assert "folds (" not in capsys.readouterr().out
    assert _ingest(source, tmp_path / "one", "--folds", "1") == 2
    assert "ingest: error: folds must be 0 (no folds) or at least 2, got 1" in capsys.readouterr().err
    assert _ingest(source, tmp_path / "many", "--folds", "500") == 2
    error = capsys.readouterr().err
    assert "cannot make 500 folds of" in error and "lesion_id value(s) outside the test split" in error
    assert not (tmp_path / "many").exists()


@pytest.mark.slow
def test_the_summary_prints_the_fold_sizes(spark, source, tmp_path, capsys):
    table = tmp_path / "three"
    assert _ingest(source, table, "--folds", "3", "--seed", "9") == 0
    out = capsys.readouterr().out
    manifest = _manifest(table)
    sizes = ", ".join(
        f"{fold}: {entry['images']} images ({entry['lesions']} lesions)"
        for fold, entry in manifest["counts"]["folds"].items()
    )
    assert f"  folds (3 of train+val): {sizes}" in out.splitlines()
    for warning in manifest.get("fold_warnings", []):  # a rare class of a 150-image sample: 3 folds
        assert f"  warning: {warning}" in out.splitlines()


def test_fold_frame_sets_the_split_from_the_fold(spark):
    from skinspark.train.folds import fold_frame

    rows = [("a", "train", 0), ("b", "val", 0), ("c", "train", 1), ("d", "val", 1), ("e", "test", None)]
    table = spark.createDataFrame(rows, "image_id string, split string, fold int")
    split = dict(fold_frame(table, 1).select("image_id", "split").collect())
    assert split == {"a": "train", "b": "train", "c": "val", "d": "val", "e": "test"}


@pytest.mark.slow
def test_a_fold_table_validates_on_its_fold_and_trains_on_the_others(spark, folded, tmp_path):
    model_dir = tmp_path / "model"
    url = fold_table(spark, str(folded), model_dir, 1)
    assert url == f"file:{model_dir / FOLD_DATA}"
    view = _table(model_dir / FOLD_DATA)
    source = _table(folded)
    for split, members in (
        ("train", source[(source["split"] != "test") & (source["fold"] == 0)]),
        ("val", source[source["fold"] == 1]),
        ("test", source[source["split"] == "test"]),
    ):
        assert sorted(view.loc[view["split"] == split, "image_id"]) == sorted(members["image_id"])
    manifest = _manifest(model_dir / FOLD_DATA)
    source_manifest = _manifest(folded)
    assert (manifest["fold"], manifest["folds"], manifest["source"]) == (1, 2, f"file://{folded}")
    assert manifest["counts"]["splits"]["val"] == source_manifest["counts"]["folds"]["1"]
    assert manifest["counts"]["splits"]["test"] == source_manifest["counts"]["splits"]["test"]
    for split in schema.SPLITS:
        members = view[view["split"] == split]
        assert manifest["counts"]["splits"][split]["images"] == len(members)
        assert manifest["counts"]["splits"][split]["by_class"] == {
            label: int((members["dx"] == label).sum()) for label in schema.LABELS
        }
    assert manifest["counts"]["files"] == source_manifest["counts"]["files"]

    # Made once: a second call (a resumed run) reuses it; another fold replaces it.
    written = os.stat(model_dir / FOLD_DATA / "_manifest.json").st_mtime_ns
    assert fold_table(spark, str(folded), model_dir, 1) == url
    assert os.stat(model_dir / FOLD_DATA / "_manifest.json").st_mtime_ns == written
    fold_table(spark, str(folded), model_dir, 0)
    assert _manifest(model_dir / FOLD_DATA)["fold"] == 0
    with pytest.raises(TrainInputError, match="fold 2 is not a fold of .*, which has folds 0 to 1"):
        fold_table(spark, str(folded), model_dir, 2)


@pytest.mark.slow
def test_train_fold_needs_a_table_with_folds(spark, source, folded, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert _ingest(source, plain) == 0
    capsys.readouterr()
    arguments = ["--output", str(tmp_path / "model"), "--epochs", "1"]
    assert train_job.main(["--data", str(plain), *arguments, "--fold", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"train: error: the ingested table {plain} has no folds: ingest it with --folds K to train a fold "
        "or cross-validate"
    )
    assert train_job.main(["--data", str(plain), *arguments, "--cross-validate"]) == 2
    assert "has no folds: ingest it with --folds K" in capsys.readouterr().err
    assert train_job.main(["--data", str(folded), *arguments, "--fold", "5"]) == 2
    assert "fold 5 is not a fold of" in capsys.readouterr().err
    assert train_job.main(["--data", str(folded), *arguments, "--fold", "0", "--cross-validate"]) == 2
    assert "fold 0 and cross_validate exclude each other" in capsys.readouterr().err
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments += ["--mlflow", store, "--register-model", "skin"]
    assert train_job.main(["--data", str(folded), *arguments, "--cross-validate"]) == 2
    assert "a cross-validation trains one model per fold: register one of them" in capsys.readouterr().err
    assert not (tmp_path / "model" / "fold-0").exists()


# --------------------------------------------------------------------------------------------------
# train --cross-validate, end to end


def _fold_rows(table: Path, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of one fold of an ingested table, in image_id order."""
    frame = pq.read_table(table, columns=["image_id", "label", "image", "fold"]).to_pandas()
    members = frame[frame["fold"] == fold].sort_values("image_id")
    images = np.stack([np.frombuffer(value, np.uint8).reshape(75, 100, 3) for value in members["image"]])
    return images, members["label"].to_numpy()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_validate_trains_every_fold_and_reports_mean_and_std(
    backend, folded, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its runs' artifacts under ./mlruns
    model_dir = tmp_path / "cv"
    arguments = ["--data", str(folded), "--output", str(model_dir), "--epochs", "1", "--backend", backend]
    arguments += ["--num-proc", "2", "--batch-size", "16", "--cross-validate"]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train_job.main([*arguments, "--mlflow", store]) == 0
    out = capsys.readouterr().out
    source_manifest = _manifest(folded)
    fold_sizes = source_manifest["counts"]["folds"]

    manifests = []
    for fold in (0, 1):
        directory = model_dir / f"fold-{fold}"
        assert (directory / "model.keras").exists() and not (directory / FOLD_DATA).exists()
        manifest = _manifest(directory)
        manifests.append(manifest)
        assert (manifest["fold"], manifest["folds"], manifest["backend"]) == (fold, 2, backend)
        assert manifest["data"] == f"file://{folded}"
        assert manifest["rows"]["val"] == fold_sizes[str(fold)]["images"]
        assert manifest["rows"]["train"] == fold_sizes[str(1 - fold)]["images"]
        assert manifest["rows"]["test"] == source_manifest["counts"]["splits"]["test"]["images"]
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["validation"]["images"] == fold_sizes[str(fold)]["images"]
        assert {key: metrics["validation"][key] for key in METRICS} == {
            key: manifest["validation"][key] for key in METRICS
        }
        assert "trained on the others" in out

    # Fold 0's validation metrics are its model's on the rows of fold 0 of the ingested table.
    from skinspark.model_dir import load_model

    images, labels = _fold_rows(folded, 0)
    model = precision.in_precision(
        load_model(str(model_dir / "fold-0")), manifests[0]["precision"]["evaluated_in"]
    )
    again = classification_metrics(labels, model.predict(images, batch_size=256, verbose=0))
    for key in METRICS:
        assert again[key] == pytest.approx(manifests[0]["validation"][key], abs=1e-6)

    record = json.loads((model_dir / CROSS_VALIDATION_JSON).read_text())
    assert record["status"] == "complete" and record["folds"] == 2 and record["metrics"] == list(METRICS)
    for subset in ("validation", "test"):
        for key in METRICS:
            values = np.array([manifest[subset][key] for manifest in manifests], dtype=float)
            assert [row[subset][key] for row in record["per_fold"]] == list(values)
            assert record["mean"][subset][key] == pytest.approx(values.mean(), abs=1e-12)
            assert record["std"][subset][key] == pytest.approx(values.std(), abs=1e-12)
    table = pd.read_csv(model_dir / CROSS_VALIDATION_CSV, dtype={"fold": str})
    assert table["fold"].tolist() == ["0", "1", "mean", "std"]
    assert table.loc[0, "validation_images"] == fold_sizes["0"]["images"]
    assert table.loc[2, "test_balanced_accuracy"] == pytest.approx(
        record["mean"]["test"]["balanced_accuracy"]
    )
    assert table.loc[3, "validation_macro_f1"] == pytest.approx(record["std"]["validation"]["macro_f1"])
    lines = out.splitlines()
    assert any(line.startswith("cross-validation complete: 2 folds of") for line in lines)
    mean = record["mean"]["validation"]["accuracy"]
    std = record["std"]["validation"]["accuracy"]
    assert any(line.strip().startswith("mean ± std") and f"{mean:.3f} ± {std:.3f}" in line for line in lines)

    # MLflow holds a run per fold and one for the whole, whose metrics are the mean and std above.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("skinspark").experiment_id
    runs = client.search_runs([experiment])
    (whole,) = (run for run in runs if run.data.tags["job"] == "cross_validate")
    assert len(runs) == 3 and whole.data.tags["folds"] == "2"
    assert whole.data.metrics["mean_validation_accuracy"] == pytest.approx(
        record["mean"]["validation"]["accuracy"]
    )
    assert whole.data.metrics["std_test_macro_f1"] == pytest.approx(record["std"]["test"]["macro_f1"])
    for fold, manifest in enumerate(manifests):
        fold_run = client.get_run(whole.data.tags[f"fold_{fold}_run_id"])
        assert fold_run.data.metrics["test_accuracy"] == pytest.approx(manifest["test"]["accuracy"])
    logged = {item.path for item in client.list_artifacts(whole.info.run_id)}
    assert logged >= {CROSS_VALIDATION_JSON, CROSS_VALIDATION_CSV}

    # --resume skips a complete fold and finishes an interrupted one from its checkpoint.
    (model_dir / "fold-1" / "_manifest.json").unlink()
    (model_dir / CROSS_VALIDATION_JSON).unlink()
    written = os.stat(model_dir / "fold-0" / "_manifest.json").st_mtime_ns
    assert train_job.main([*arguments, "--resume"]) == 0
    assert os.stat(model_dir / "fold-0" / "_manifest.json").st_mtime_ns == written
    resumed = _manifest(model_dir / "fold-1")
    assert (resumed["initial_epoch"], resumed["epochs_trained"]) == (1, 0)
    again = json.loads((model_dir / CROSS_VALIDATION_JSON).read_text())
    assert again["per_fold"][0] == record["per_fold"][0]
    for key in METRICS:
        assert again["per_fold"][1]["test"][key] == pytest.approx(
            record["per_fold"][1]["test"][key], abs=1e-6
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_fold_of_the_benign_malignant_task(folded, tmp_path, capsys):
    model_dir = tmp_path / "fold-1"
    arguments = ["--data", str(folded), "--output", str(model_dir), "--epochs", "1", "--fold", "1"]
    arguments += [
        "--task",
        "malignant",
        "--backend",
        "tf_distribute",
        "--num-proc",
        "2",
        "--batch-size",
        "16",
    ]
    assert train_job.main(arguments) == 0
    assert "fold 1 of 2: validated on fold 1" in capsys.readouterr().out
    manifest = _manifest(model_dir)
    fold_sizes = _manifest(folded)["counts"]["folds"]
    assert (manifest["fold"], manifest["folds"], manifest["task"]) == (1, 2, "malignant")
    assert manifest["rows"]["val"] == manifest["validation"]["images"] == fold_sizes["1"]["images"]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["validation"]["labels"] == metrics["labels"] == ["benign", "malignant"]
    malignant = sum(fold_sizes["1"]["by_class"][label] for label in ("mel", "bcc", "akiec"))
    assert metrics["validation"]["per_class"]["malignant"]["support"] == malignant
    assert not (model_dir / FOLD_DATA).exists()
