"""Experiment tracking with MLflow: a training run and a scoring run logged to real local stores (SQLite,
and MLflow's file store) and read back with MlflowClient; the flags and config keys; MLflow missing or
its store away, before and after the job's work."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinspark import schema, tracking
from skinspark.config import ScoreConfig, TrainConfig, load_config
from skinspark.entry import score as score_job
from skinspark.entry import train as train_job
from skinspark.metrics import classification_metrics

mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed")

EXPERIMENT = "skinspark-tests"
MODEL_NAME = "skinspark-test-cnn"
ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A loopback port that nothing listens on: a tracking server that is not there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_quietly(main, argv: list[str]) -> tuple[int, str]:
    """A job's exit code and what it printed (module-scoped fixtures cannot use capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def _train_result(model_dir: Path):
    """The TrainResult of a finished MODEL_DIR, rebuilt from its files."""
    from skinspark.model_dir import load_model
    from skinspark.train import TrainResult

    return TrainResult(
        str(model_dir),
        json.loads((model_dir / "_manifest.json").read_text()),
        json.loads((model_dir / "metrics.json").read_text()),
        pd.read_csv(model_dir / "history.csv"),
        load_model(str(model_dir)),
    )


# --------------------------------------------------------------------------------------------------
# No store: MLflow stays out of the import graph, the flags map to config keys, the flat names


def test_importing_the_package_and_the_jobs_never_imports_mlflow():
    code = (
        "import sys, skinspark, skinspark.tracking, skinspark.train, skinspark.score, skinspark.cli\n"
        "import jobs.train, jobs.score\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_flags_and_dotted_conf_keys_set_the_tracking_config():
    args = train_job.args_parser().parse_args(
        ["--data", "d", "--output", "o", "--mlflow", "sqlite:///x.db", "--register-model", "cnn"]
    )
    assert (args.mlflow_tracking_uri, args.mlflow_model_name, args.mlflow_experiment) == (
        "sqlite:///x.db",
        "cnn",
        None,
    )
    args = score_job.args_parser().parse_args(
        ["--model", "m", "--images", "i", "--output", "o", "--mlflow-experiment", "e", "--conf", "x=1"]
    )
    assert (args.mlflow_tracking_uri, args.mlflow_experiment) == (None, "e")
    loaded = load_config(ScoreConfig, None, {"mlflow.tracking_uri": "sqlite:///y.db"}, job="score")
    assert loaded.job.mlflow_tracking_uri == "sqlite:///y.db" and loaded.job.mlflow_experiment == "skinspark"


def test_config_params_are_every_field_and_every_spark_setting():
    loaded = load_config(TrainConfig, None, {"epochs": "3", "spark.sql.shuffle.partitions": "8"})
    params = tracking.config_params(loaded)
    assert params["epochs"] == "3" and params["augment"] == "True" and params["mlflow_tracking_uri"] == ""
    assert params["spark.sql.shuffle.partitions"] == "8"
    assert set(params) == {field.name for field in dataclasses.fields(TrainConfig)} | {
        "spark.sql.shuffle.partitions"
    }
    from skinspark.config import IngestConfig

    assert tracking.config_params(load_config(IngestConfig, None, {}))["split"] == "0.8,0.1,0.1"


def test_metric_scalars_flatten_classification_metrics():
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 6  # vasc (index 6) never occurs: its AUC is undefined
    probabilities = rng.dirichlet(np.ones(schema.NUM_CLASSES), size=labels.size)
    figures = classification_metrics(labels, probabilities, threshold=0.2)
    scalars = tracking.metric_scalars(figures, prefix="test_")
    assert scalars["test_accuracy"] == figures["accuracy"]
    assert scalars["test_balanced_accuracy"] == figures["balanced_accuracy"]
    assert scalars["test_images"] == 40.0 and scalars["test_ece"] == figures["calibration"]["ece"]
    assert scalars["test_auc_mel"] == figures["roc_auc"]["mel"] and "test_auc_vasc" not in scalars
    assert scalars["test_recall_nv"] == figures["per_class"]["nv"]["recall"]
    assert scalars["test_support_vasc"] == 0.0
    at_threshold = figures["melanoma"]["at_threshold"]
    assert scalars["test_mel_threshold"] == 0.2
    assert scalars["test_mel_sensitivity"] == at_threshold["sensitivity"]
    assert scalars["test_mel_specificity_argmax"] == figures["melanoma"]["at_argmax"]["specificity"]
    assert all(isinstance(value, float) for value in scalars.values())
    # A benign/malignant model's figures: its two labels and the malignant operating point.
    binary = classification_metrics(
        labels % 2, np.stack([1 - probabilities[:, 0], probabilities[:, 0]], 1), ("benign", "malignant"), 0.3
    )
    scalars = tracking.metric_scalars(binary)
    assert (
        scalars["recall_malignant"] == binary["per_class"]["malignant"]["recall"] and "auc_mel" not in scalars
    )
    assert scalars["malignant_threshold"] == 0.3 and scalars["malignant_f1"] == binary["malignant"]["f1"]
    assert scalars["malignant_roc_auc"] == binary["malignant"]["roc_auc"] and "mel_threshold" not in scalars


def test_without_mlflow_the_flag_is_one_line_naming_the_extra(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError

    def must_not_run(*args, **kwargs):
        raise AssertionError("the job must stop before its work")

    monkeypatch.setattr(train_job, "train", must_not_run)
    monkeypatch.setattr(score_job, "score", must_not_run)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train_args = ["--data", str(tmp_path / "table"), "--output", str(tmp_path / "model"), "--mlflow", uri]
    assert train_job.main(train_args) == 2
    score_args = ["--model", "m", "--images", "i", "--output", str(tmp_path / "out"), "--conf"]
    assert score_job.main([*score_args, f"mlflow.tracking_uri={uri}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for job, line in zip(("train", "score"), lines, strict=True):
        assert line.startswith(f"{job}: error: MLflow tracking needs the tracking extra")
        assert line.endswith("pip install 'skinspark[tracking]'")
    assert not (tmp_path / "model").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_unreachable_server_fails_before_training(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(train_job, "train", lambda *a, **k: pytest.fail("trained despite the failed check"))
    uri = f"http://127.0.0.1:{_closed_port()}"
    code = train_job.main(["--data", str(tmp_path), "--output", str(tmp_path / "model"), "--mlflow", uri])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"train: error: the MLflow tracking store at {uri} cannot be used: ")


# --------------------------------------------------------------------------------------------------
# One small training run logged to SQLite with its model registered, then scoring its test split


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A SQLite tracking store; the jobs run with its folder as working directory, where MLflow puts
    the artifacts of a SQLite store's runs (./mlruns)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return {"folder": folder, "uri": f"sqlite:///{folder}/mlflow.db"}


@pytest.fixture(scope="module")
def trained(ingested, store, tmp_path_factory) -> dict:
    model_dir = tmp_path_factory.mktemp("tracked") / "model"
    argv = [
        "--data", str(ingested), "--output", str(model_dir), "--epochs", "2", "--num-proc", "1",
        "--batch-size", "16", "--mlflow", store["uri"], "--register-model", MODEL_NAME,
        "--conf", f"mlflow.experiment={EXPERIMENT}", "--conf", "spark.sql.shuffle.partitions=4",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store["folder"])
        code, out = _run_quietly(train_job.main, argv)
    assert code == 0, out
    client = mlflow.MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return {"model_dir": model_dir, "out": out, "run": runs[0], "client": client}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_logs_its_config_as_params(trained):
    model_dir, run = trained["model_dir"], trained["run"]
    resolved = load_config(TrainConfig, model_dir / "_config.yaml")
    params = run.data.params
    for name, value in dataclasses.asdict(resolved.job).items():
        assert params[name] == str(value), name
    assert params["epochs"] == "2" and params["mlflow_experiment"] == EXPERIMENT
    assert params["mlflow_model_name"] == MODEL_NAME and params["spark.sql.shuffle.partitions"] == "4"
    manifest = json.loads((model_dir / "_manifest.json").read_text())
    tags = run.data.tags
    assert (tags["job"], tags["model"], tags["backend"]) == ("train", "paper_cnn", manifest["backend"])
    assert tags["precision"] == ",".join(manifest["precision"]["trained_in"])
    assert tags["data"] == manifest["data"] and tags["model_dir"] == str(model_dir)
    assert run.info.status == "FINISHED"
    assert f"mlflow: run {run.info.run_id} in experiment '{EXPERIMENT}'" in trained["out"]
    assert f"model registered as '{MODEL_NAME}' version 1" in trained["out"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_logs_each_epoch_and_the_test_metrics(trained):
    model_dir, run, client = trained["model_dir"], trained["run"], trained["client"]
    history = pd.read_csv(model_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    for column in history.columns.drop("epoch"):
        points = sorted(client.get_metric_history(run.info.run_id, column), key=lambda point: point.step)
        assert [point.step for point in points] == [1, 2], column
        np.testing.assert_allclose([point.value for point in points], history[column], rtol=1e-6)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    logged = run.data.metrics
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "loss", "macro_auc", "images"):
        assert logged[f"test_{key}"] == pytest.approx(metrics[key], rel=1e-12), key
    for label, value in metrics["roc_auc"].items():
        assert (
            (logged[f"test_auc_{label}"] == pytest.approx(value))
            if value is not None
            else (f"test_auc_{label}" not in logged)
        )
    assert logged["test_ece"] == pytest.approx(metrics["calibration"]["ece"])
    for key, value in metrics["melanoma"]["at_argmax"].items():
        assert logged.get(f"test_mel_{key}_argmax") == (None if value is None else pytest.approx(value))
    assert logged["test_majority_accuracy"] == pytest.approx(metrics["baselines"]["majority_accuracy"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_logs_the_plots_records_and_a_registered_model(trained, ingested, store, tmp_path):
    model_dir, run, client = trained["model_dir"], trained["run"], trained["client"]
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "confusion_matrix.png", "reliability_diagram.png"} <= names
    assert {"metrics.json", "history.csv", "_manifest.json", "_config.yaml"} <= names
    from mlflow import tensorflow as mlflow_tensorflow
    from mlflow.artifacts import download_artifacts

    from skinspark.model_dir import load_model
    from skinspark.train import read_split

    copy = download_artifacts(
        run_id=run.info.run_id,
        artifact_path="metrics.json",
        dst_path=str(tmp_path),
        tracking_uri=store["uri"],
    )
    assert Path(copy).read_bytes() == (model_dir / "metrics.json").read_bytes()

    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [(int(version.version), version.run_id) for version in versions] == [(1, run.info.run_id)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store["uri"])
        logged = mlflow_tensorflow.load_model(f"models:/{MODEL_NAME}/1")
    images = read_split(f"file://{ingested}/split=test", 75, 100)["image"][:4]
    expected = load_model(str(model_dir)).predict(images, verbose=0)
    np.testing.assert_allclose(logged.predict(images, verbose=0), expected, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scoring_logs_its_counts_and_metrics(trained, ingested, store, tmp_path):
    output = tmp_path / "scores"
    argv = ["--model", str(trained["model_dir"]), "--table", str(ingested), "--output", str(output)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store["folder"])
        code, out = _run_quietly(score_job.main, [*argv, "--mlflow", store["uri"]])
    assert code == 0, out
    client = trained["client"]
    experiment = client.get_experiment_by_name("skinspark")  # scoring's default experiment
    [run] = client.search_runs([experiment.experiment_id])
    assert f"mlflow: run {run.info.run_id} in experiment 'skinspark'" in out
    manifest = json.loads((output / "_manifest.json").read_text())
    logged, counts = run.data.metrics, manifest["counts"]
    for key in ("rows", "distinct_paths", "scored", "errors", "chunks"):
        assert logged[key] == counts[key], key
    for label in schema.LABELS:
        assert logged[f"predicted_{label}"] == counts["predicted"][label]
    assert logged["files_seen"] == manifest["run"]["files_seen"] == counts["rows"]
    assert logged["bad_fraction"] == manifest["bad_fraction"]
    figures = json.loads((output / "_metrics.json").read_text())
    assert set(figures) >= {"all", "test"}
    for split, values in figures.items():
        assert logged[f"{split}_images"] == values["images"]
        assert logged[f"{split}_balanced_accuracy"] == pytest.approx(values["balanced_accuracy"])
    assert run.data.tags["model_id"] == manifest["model"]["model_id"]
    assert run.data.tags["status"] == "complete" and run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "256" and run.data.params["spark.python.worker.reuse"] == "true"
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert names == {"_manifest.json", "_metrics.json", "_config.yaml"}


# --------------------------------------------------------------------------------------------------
# The same run to MLflow's file store; a store that fails after training


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_file_store_takes_the_same_run_when_mlflow_allows_it(trained, tmp_path, monkeypatch):
    result = _train_result(trained["model_dir"])
    loaded = load_config(TrainConfig, trained["model_dir"] / "_config.yaml")
    uri = (tmp_path / "mlruns").as_uri()
    # MLflow 3.18 keeps its file store in maintenance mode: it refuses it unless told otherwise.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(tracking.TrackingError, match="MLFLOW_ALLOW_FILE_STORE"):
        tracking.open_experiment(uri, EXPERIMENT)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracked = tracking.log_training(result, loaded, uri, EXPERIMENT, MODEL_NAME)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(tracked.run_id)
    assert run.data.params == trained["run"].data.params
    assert run.data.metrics["test_accuracy"] == trained["run"].data.metrics["test_accuracy"]
    assert len(client.get_metric_history(tracked.run_id, "val_loss")) == 2
    assert tracked.registered == f"'{MODEL_NAME}' version 1" and tracked.artifact_uri.startswith(uri)
    assert not mlflow.tracking.is_tracking_uri_set()  # none was set before: none is left behind


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_store_that_fails_after_training_keeps_the_model(trained, monkeypatch, capsys):
    model_dir = trained["model_dir"]
    before = _digests(model_dir)
    # The store answered before training and is gone when the run is logged: the check passes, the
    # training returns the finished directory, and the server at the URI is not there.
    monkeypatch.setattr(train_job.tracking, "open_experiment", lambda uri, experiment: "0")
    monkeypatch.setattr(train_job, "train", lambda *args, **kwargs: _train_result(model_dir))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{_closed_port()}"
    code = train_job.main(["--data", "unused", "--output", str(model_dir), "--mlflow", uri])
    captured = capsys.readouterr()
    assert code == 1
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"train: error: logging to MLflow at {uri} failed: ")
    assert line.endswith(f"(the model directory {model_dir} is complete; only the MLflow run is missing)")
    assert "train complete: paper_cnn" in captured.out  # the summary came first
    assert _digests(model_dir) == before
