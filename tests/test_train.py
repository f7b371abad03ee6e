"""Training: class weights, metrics, checkpoints, and whole runs of `jobs/train.py` on 2 ranks of each
backend, Horovod and tf_distribute (even and uneven shards, --resume, a failing rank, a stalled rank),
on a small synthetic HAM10000."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from jobs import train as train_job
from skinspark import precision, schema
from skinspark.metrics import (
    classification_metrics,
    metrics_summary,
    plot_confusion_matrix,
    plot_training_curves,
)
from skinspark.table import EVAL_BATCH_SIZE
from skinspark.train import (
    class_weights,
    describe_failure,
    latest_checkpoint,
    rank_environment,
    restore_checkpoint,
    write_checkpoint,
)
from skinspark.train.pipeline import Pipeline, flip, pixel_batches
from skinspark.train.recipe import oversample_repeats
from tests.conftest import BACKENDS

# A quick run: 2 ranks, small batches; the rest are the job's defaults.
QUICK = ["--num-proc", "2", "--batch-size", "16"]
# When a rank fails, the backend cancels its Spark job and the thread that waited on it raises.
HOROVOD_CANCELLED_THREAD = "ignore::pytest.PytestUnhandledThreadExceptionWarning"


# ------------------------------------------------------------------------------------------------
# Data: one small ingested table, and copies whose train split is rewritten as uneven shards
# ------------------------------------------------------------------------------------------------


def _train_rows(table: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in sorted((table / "split=train").glob("*.parquet")))


def _rewrite_train_split(source: Path, target: Path, sizes: list[int | None], damage=None) -> Path:
    """Copy a table, replacing split=train with one file (one row group) per size; None takes the rest.
    `damage(index, part) -> part` may alter a file's rows."""
    shutil.copytree(source, target)
    rows = _train_rows(source)
    shutil.rmtree(target / "split=train")
    (target / "split=train").mkdir()
    start = 0
    for index, size in enumerate(sizes):
        size = rows.num_rows - start if size is None else size
        part = rows.slice(start, size)
        start += size
        if damage is not None:
            part = damage(index, part)
        pq.write_table(part, target / "split=train" / f"part-{index}.parquet")
    assert start == rows.num_rows
    return target


@pytest.fixture(scope="session")
def uneven(ingested, tmp_path_factory) -> Path:
    # Three row groups of 60, 40 and 21 rows: with 2 ranks, rank 0 reads 81 rows and rank 1 reads 40.
    return _rewrite_train_split(ingested, tmp_path_factory.mktemp("uneven") / "ham", [60, 40, None])


@pytest.fixture(scope="session")
def one_row_group(ingested, tmp_path_factory) -> Path:
    # Fewer row groups than ranks: Petastorm cannot shard by row group, so each rank keeps every other row.
    return _rewrite_train_split(ingested, tmp_path_factory.mktemp("one-row-group") / "ham", [None])


def _manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / "_manifest.json").read_text())


# ------------------------------------------------------------------------------------------------
# Unit tests: no Spark
# ------------------------------------------------------------------------------------------------


def test_class_weights_follow_sklearn_balanced():
    counts = {"akiec": 10, "bcc": 0, "bkl": 30, "df": 5, "mel": 5, "nv": 50, "vasc": 0}
    weights = class_weights(counts, "balanced")
    present = [index for index, label in enumerate(schema.LABELS) if counts[label]]
    labels = np.repeat(np.arange(len(schema.LABELS)), [counts[label] for label in schema.LABELS])
    expected = compute_class_weight("balanced", classes=np.array(present), y=labels)
    assert [weights[index] for index in present] == pytest.approx(list(expected))
    assert weights[schema.LABEL_INDEX["nv"]] == pytest.approx(100 / (5 * 50))
    assert weights[schema.LABEL_INDEX["bcc"]] == weights[schema.LABEL_INDEX["vasc"]] == 1.0  # absent
    assert sorted(weights) == list(range(schema.NUM_CLASSES))
    assert class_weights(counts, "none") is None
    with pytest.raises(ValueError, match="class_weight"):
        class_weights(counts, "inverse")
    with pytest.raises(ValueError, match="unknown labels"):
        class_weights({"melanoma": 3}, "balanced")
    with pytest.raises(ValueError, match="no images"):
        class_weights({"nv": 0}, "balanced")


def test_sqrt_class_weights_are_gentler_and_keep_the_weighted_count():
    counts = {"akiec": 10, "bcc": 0, "bkl": 30, "df": 5, "mel": 5, "nv": 50, "vasc": 0}
    balanced, gentle = class_weights(counts, "balanced"), class_weights(counts, "sqrt")
    nv, df = schema.LABEL_INDEX["nv"], schema.LABEL_INDEX["df"]
    assert gentle[df] / gentle[nv] == pytest.approx(np.sqrt(balanced[df] / balanced[nv]))  # 10x -> 3.16x
    weighted = sum(counts[label] * gentle[index] for index, label in enumerate(schema.LABELS))
    assert weighted == pytest.approx(sum(counts.values()))  # the loss keeps its scale
    assert gentle[schema.LABEL_INDEX["bcc"]] == 1.0


def test_new_recipe_settings_are_checked():
    from skinspark.config import TrainConfig

    TrainConfig(warmup_steps=100, label_smoothing=0.1, clip_norm=1.0, class_weight="sqrt").check()
    for bad, message in (
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"clip_norm": -0.5}, "clip_norm"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).check()


def test_flip_draws_each_image_of_a_batch_on_its_own():
    # 64 distinct images: each comes out as one of its four flips, and within the batch some are
    # flipped and some not along each axis (one draw for the whole batch would flip all or none).
    images = np.random.default_rng(0).integers(0, 256, (64, 5, 7, 3), dtype=np.uint8)
    flipped = flip(images, seed=1).numpy()
    horizontal, vertical = [], []
    for image, out in zip(images, flipped, strict=True):
        variants = {
            (h, v): image[:: -1 if v else 1, :: -1 if h else 1] for h in (False, True) for v in (False, True)
        }
        (h, v) = next(key for key, variant in variants.items() if np.array_equal(variant, out))
        horizontal.append(h)
        vertical.append(v)
    assert 0 < sum(horizontal) < 64 and 0 < sum(vertical) < 64
    assert horizontal != vertical  # the two axes draw apart


def test_classification_metrics_against_hand_computed_values():
    labels = ("a", "b", "c", "d")  # "d" never occurs and is never predicted
    y_true = [0, 0, 1, 1, 1, 2]
    y_prob = np.array(
        [
            [0.8, 0.1, 0.1, 0.0],  # true a, predicted a
            [0.3, 0.6, 0.1, 0.0],  # true a, predicted b
            [0.2, 0.7, 0.1, 0.0],  # true b, predicted b
            [0.1, 0.8, 0.1, 0.0],  # true b, predicted b
            [0.5, 0.4, 0.1, 0.0],  # true b, predicted a
            [0.1, 0.1, 0.8, 0.0],
        ]
    )  # true c, predicted c
    metrics = classification_metrics(y_true, y_prob, labels)
    assert metrics["images"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)  # mean recall of a, b, c
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)  # F1 per class: p == r here
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.7, 0.8, 0.4, 0.8])), rel=1e-9)
    assert metrics["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert metrics["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert metrics["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert metrics["labels"] == list(labels)
    json.dumps(metrics)  # JSON-ready
    text = metrics_summary(metrics)
    assert "accuracy 0.6667" in text and "balanced accuracy 0.7222" in text and len(text.splitlines()) == 7
    assert "macro AUC" in text.splitlines()[1] and metrics["melanoma"] is None  # no "mel" among a..d
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], y_prob, labels)
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], np.zeros((0, 4)), labels)
    with pytest.raises(ValueError, match="label indices"):
        classification_metrics([0, 4], np.full((2, 4), 0.25), labels)


def test_plots_are_written(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [1, 2],
            "accuracy": [0.5, 0.7],
            "val_accuracy": [0.4, 0.6],
            "loss": [1.2, 0.8],
            "val_loss": [1.3, 1.0],
        }
    )
    plot_training_curves(history, tmp_path / "curves.png")
    plot_confusion_matrix([[3, 1], [0, 0]], ["a", "b"], tmp_path / "cm.png")
    for name in ("curves.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    import tensorflow as tf

    from skinspark.model import build_model

    model = build_model(input_shape=(48, 48, 3), num_classes=3)
    optimizer = tf.keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(12)
    for epoch in (1, 2, 3):
        history = [{"epoch": number} for number in range(1, epoch + 1)]
        write_checkpoint(tmp_path, epoch, model, optimizer, history, keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003"]
    # What a kill leaves behind: a temporary directory, or one without its state file, is not a checkpoint.
    (tmp_path / ".epoch-0004.tmp-dead").mkdir()
    (tmp_path / "epoch-0005").mkdir()
    epoch, path, state = latest_checkpoint(tmp_path)
    assert (epoch, path.name, state["history"][-1]) == (3, "epoch-0003", {"epoch": 3})
    assert latest_checkpoint(tmp_path / "missing") is None

    fresh = build_model(input_shape=(48, 48, 3), num_classes=3)
    fresh_optimizer = tf.keras.optimizers.Adam()
    fresh_optimizer.build(fresh.trainable_variables)
    assert restore_checkpoint(path, fresh, fresh_optimizer)["epoch"] == 3
    assert int(fresh_optimizer.iterations.numpy()) == 12
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True))


def test_a_rank_reports_a_tf_data_assertion_by_its_message():
    import tensorflow as tf

    from skinspark.errors import typed_line

    def check(value):  # the size is known only when the row is read, as in the training input
        pixels = tf.io.decode_raw(value, tf.uint8)
        tf.debugging.assert_equal(tf.size(pixels), 3, message="a row does not hold 3 values")
        return pixels

    dataset = tf.data.Dataset.from_tensor_slices([b"ab"]).map(check)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        next(iter(dataset))
    # TensorFlow 2.15 starts the text with the assertion, 2.21 with the tf.data stage it came from.
    assert typed_line(raised.value).startswith(
        "InvalidArgumentError: assertion failed: [a row does not hold 3"
    )


def test_failure_message_names_the_first_failing_rank(tmp_path):
    reports = [
        {"rank": 0, "time": 20.0, "error": "UnknownError: shut down"},
        {"rank": 1, "time": 10.0, "error": "OSError: disk full"},
    ]
    for report in reports:
        (tmp_path / f"rank-{report['rank']}.json").write_text(json.dumps(report))
    message = describe_failure(RuntimeError("Horovod detected ..."), tmp_path, 2, 600)
    assert message == "training failed on rank 1: OSError: disk full (1 other rank(s) failed after it)"
    horovod = RuntimeError(
        "Horovod detected that one or more processes exited with non-zero status, thus "
        "causing the job to be terminated. The first process to do so was:\n"
        "Process name: 2\nExit code: 137\n"
    )
    assert describe_failure(horovod, tmp_path / "none", 4, 600) == (
        "training failed: rank 2 exited without reporting an error (exit code 137: killed? see the "
        "executor's log)"
    )
    # A rank killed outright (no report of its own) that Horovod saw go first is named as the cause.
    assert describe_failure(horovod, tmp_path, 4, 600) == (
        "training failed: rank 2 exited first without reporting an error (exit code 137: killed, or its "
        "executor lost? see the executor's log); then 2 other rank(s) failed, first rank 1: "
        "OSError: disk full"
    )
    # A rank that exits with 1 stopped on its own (after a peer's report): the first report is the cause.
    stopped = RuntimeError(str(horovod).replace("Exit code: 137", "Exit code: 1"))
    assert describe_failure(stopped, tmp_path, 4, 600).endswith(
        ": OSError: disk full (1 other rank(s) failed after it); rank 2 exited first (exit code 1)"
    )
    # tf_distribute: a worker whose Spark task was lost (its executor killed) is named by Spark.
    from skinspark.train.distribute_launch import lost_task

    barrier = RuntimeError(
        "Could not recover from a failed barrier ResultStage. Most recent failure reason: Stage failed "
        "because barrier task ResultTask(0, 1) finished unsuccessfully.\nExecutorLostFailure (executor 1 "
        "exited caused by one of the running tasks) Reason: Command exited with code 137"
    )
    lost = lost_task(barrier, tmp_path, 2)
    assert lost == ("1", "its Spark task was lost")
    assert describe_failure(barrier, tmp_path / "none", 2, 600, exited=lost) == (
        "training failed: rank 1 exited without reporting an error (its Spark task was lost: killed? see "
        "the executor's log)"
    )
    # Without Spark's words, the one rank that neither reported nor returned is the lost one.
    (tmp_path / "rank-1.json").unlink()
    assert lost_task(RuntimeError("stage failed"), tmp_path, 2) == ("1", "its Spark task was lost")
    assert lost_task(RuntimeError("stage failed"), tmp_path, 3) is None  # ranks 1 and 2: unknown
    timeout = describe_failure(Exception("Timed out waiting for tasks"), tmp_path / "none", 4, 30)
    assert "did not all start within 30 s" in timeout and "4 free task slots" in timeout


def test_bad_arguments_exit_2(ingested, tmp_path, capsys):
    assert train_job.main(["--data", str(ingested), "--output", str(tmp_path / "m"), "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err
    assert train_job.main(["--data", str(ingested), "--output", str(tmp_path / "m"), "--conf", "lr=1"]) == 2
    assert "unknown config key 'lr'" in capsys.readouterr().err
    assert train_job.main(["--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "m")]) == 2
    assert "no _manifest.json" in capsys.readouterr().err
    for setting, message in (
        ("gradient_compression=zip", "gradient_compression must be one of ('none', 'fp16'), got 'zip'"),
        ("horovod_cycle_time_ms=0", "horovod_cycle_time_ms must be positive, got 0"),
    ):
        arguments = ["--data", str(ingested), "--output", str(tmp_path / "m"), "--conf", setting]
        assert train_job.main(arguments) == 2
        assert message in capsys.readouterr().err


def test_rank_environment_sets_the_cycle_time_and_passes_horovod_knobs():
    env = rank_environment(10.0, {"PATH": "/usr/bin", "HOROVOD_FUSION_THRESHOLD": "1048576"})
    assert env["HOROVOD_CYCLE_TIME"] == "10"
    assert env["HOROVOD_FUSION_THRESHOLD"] == "1048576"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "PATH" not in env  # Horovod adds the task's own environment; only these are ours
    # The job's own HOROVOD_CYCLE_TIME wins; a rank's identity and rendezvous are never copied.
    env = rank_environment(
        2.5, {"HOROVOD_CYCLE_TIME": "3", "HOROVOD_RANK": "0", "HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1"}
    )
    assert env["HOROVOD_CYCLE_TIME"] == "3"
    assert "HOROVOD_RANK" not in env and "HOROVOD_GLOO_RENDEZVOUS_ADDR" not in env
    assert rank_environment(2.5, {})["HOROVOD_CYCLE_TIME"] == "2.5"


# ------------------------------------------------------------------------------------------------
# Whole runs on 2 ranks of each backend
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_end_to_end_two_ranks(backend, one_row_group, model_artifacts, tmp_path, capsys):
    model_dir = tmp_path / "model"
    args = ["--data", str(one_row_group), "--output", str(model_dir), "--epochs", "2", "--backend", backend]
    code = train_job.main([*args, *QUICK])
    out = capsys.readouterr().out
    assert code == 0
    assert {path.name for path in model_dir.iterdir()} >= model_artifacts
    assert "train complete: paper_cnn (788,551 parameters), 2 epoch(s)" in out and "balanced accuracy" in out

    manifest = _manifest(model_dir)
    assert manifest["backend"] == backend
    ingest_manifest = json.loads((one_row_group / "_manifest.json").read_text())
    train_rows = ingest_manifest["counts"]["splits"]["train"]["images"]
    steps = math.ceil(train_rows / (16 * 2))
    assert manifest["steps_per_epoch"] == steps and manifest["num_proc"] == 2
    # One row group for 2 ranks: each rank keeps every other row; both run the same number of steps.
    here = precision.resolve("auto")  # the ranks run on this machine: they resolve as it does
    assert manifest["ranks"] == [
        {"rank": 0, "batches": 2 * steps, "sharding": "rows", "precision": here},
        {"rank": 1, "batches": 2 * steps, "sharding": "rows", "precision": here},
    ]
    assert manifest["precision"] == {"requested": "auto", "trained_in": [here], "evaluated_in": here}
    assert f"precision: {here} on 2 of 2 rank(s) (requested auto)" in out
    assert json.loads((model_dir / "ingest_manifest.json").read_text()) == ingest_manifest

    metrics = json.loads((model_dir / "metrics.json").read_text())
    test_images = ingest_manifest["counts"]["splits"]["test"]["images"]
    assert metrics["images"] == test_images
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["loss"] > 0 and np.isfinite(metrics["loss"])
    assert set(metrics["per_class"]) == set(schema.LABELS)
    assert sum(row["support"] for row in metrics["per_class"].values()) == test_images
    assert np.array(metrics["confusion_matrix"]).shape == (7, 7)
    assert np.array(metrics["confusion_matrix"]).sum() == test_images
    assert set(metrics["roc_auc"]) == set(schema.LABELS) and metrics["calibration"]["bins"] == 15
    assert 0.0 <= metrics["calibration"]["ece"] <= 1.0 and "at_argmax" in metrics["melanoma"]
    assert metrics["baselines"]["chance_balanced_accuracy"] == pytest.approx(
        1 / sum(1 for row in metrics["per_class"].values() if row["support"])
    )
    assert "against chance" in out and "majority class" in out

    history = pd.read_csv(model_dir / "history.csv")
    assert list(history.columns) == [
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "seconds",
        "images_per_second",
    ]
    assert history["epoch"].tolist() == [1, 2]
    assert history[["loss", "val_loss"]].gt(0).all().all() and history["images_per_second"].gt(0).all()
    # The learning rate is scaled by 2 ranks and warmed up over the first 100 steps, from lr to lr x 2:
    # the first epoch's last step ran at lr + lr * (steps - 1) / 100.
    assert history["learning_rate"].iloc[0] == pytest.approx(0.0003 + 0.0003 * (steps - 1) / 100)

    # The saved model predicts exactly what the in-memory model predicted for the test split.
    from skinspark.model import build_model
    from skinspark.model_dir import load_model, read_preprocessing
    from skinspark.train import read_split

    spec = read_preprocessing(str(model_dir))
    assert (spec["height"], spec["width"], spec["decoder"]) == (75, 100, "simplejpeg")
    predictions = pd.read_csv(model_dir / "test_predictions.csv")
    test = read_split(f"file://{one_row_group}/split=test", 75, 100)
    assert predictions["image_id"].tolist() == test["image_id"].tolist()
    saved = load_model(str(model_dir))
    assert precision.model_precision(saved) == "float32"  # whatever the ranks trained in
    # The driver predicted the test split in its own precision, whole, in batches of EVAL_BATCH_SIZE.
    evaluated = precision.in_precision(saved, _manifest(model_dir)["precision"]["evaluated_in"])
    again = evaluated.predict(test["image"], batch_size=EVAL_BATCH_SIZE, verbose=0)[:5]
    assert np.allclose(again, predictions[list(schema.PROB_COLUMNS)].to_numpy()[:5], atol=1e-6)
    reloaded = saved.predict(test["image"][:5], verbose=0)
    probabilities = predictions[list(schema.PROB_COLUMNS)].to_numpy()
    assert np.array_equal(predictions["predicted"], probabilities.argmax(axis=1))
    # ... and it holds the weights of the last epoch's checkpoint.
    from_checkpoint = build_model()
    assert restore_checkpoint(model_dir / "checkpoints" / "epoch-0002", from_checkpoint)["epoch"] == 2
    assert np.allclose(from_checkpoint.predict(test["image"][:5], verbose=0), reloaded, atol=1e-6)


@pytest.fixture(scope="module", params=BACKENDS)
def one_epoch(request, uneven, tmp_path_factory) -> tuple[str, Path]:
    """One epoch on the uneven shards in float32 on each backend (the runs that test_resume continues
    in bfloat16): the backend and MODEL_DIR."""
    backend = request.param
    model_dir = tmp_path_factory.mktemp(f"one-epoch-{backend}") / "model"
    started = time.monotonic()
    args = ["--data", str(uneven), "--output", str(model_dir), "--epochs", "1", "--precision", "float32"]
    code = train_job.main([*args, "--backend", backend, *QUICK])
    assert code == 0 and time.monotonic() - started < 240
    return backend, model_dir


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_uneven_shards_run_the_same_steps(uneven, one_epoch):
    backend, one_epoch = one_epoch
    sizes = [pq.ParquetFile(path).metadata.num_rows for path in sorted((uneven / "split=train").glob("*"))]
    assert sizes == [60, 40, 21]  # rank 0 reads row groups 0 and 2 (81 rows), rank 1 row group 1 (40)
    manifest = _manifest(one_epoch)
    assert manifest["backend"] == backend
    steps = math.ceil(121 / (16 * 2))
    assert manifest["steps_per_epoch"] == steps
    assert manifest["ranks"] == [
        {"rank": 0, "batches": steps, "sharding": "row_groups", "precision": "float32"},
        {"rank": 1, "batches": steps, "sharding": "row_groups", "precision": "float32"},
    ]
    assert pd.read_csv(one_epoch / "history.csv")["epoch"].tolist() == [1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_continues_at_the_next_epoch(uneven, one_epoch, tmp_path, capsys):
    import tensorflow as tf

    from skinspark.model import build_model
    from skinspark.model_dir import load_model

    backend, one_epoch = one_epoch
    quick = [*QUICK, "--backend", backend]
    # Without --resume an existing run is not overwritten.
    assert train_job.main(["--data", str(uneven), "--output", str(one_epoch), "--epochs", "2", *quick]) == 2
    assert "pass --resume" in capsys.readouterr().err

    model_dir = Path(shutil.copytree(one_epoch, tmp_path / "model"))
    first = pd.read_csv(model_dir / "history.csv")
    # The float32 run's checkpoint continues in bfloat16: the variables are float32 in both.
    args = ["--data", str(uneven), "--output", str(model_dir), "--epochs", "2", "--resume"]
    code = train_job.main([*args, "--precision", "bfloat16", *quick])
    assert code == 0
    manifest = _manifest(model_dir)
    assert manifest["precision"]["trained_in"] == ["bfloat16"]
    assert [rank["precision"] for rank in manifest["ranks"]] == ["bfloat16", "bfloat16"]
    steps = manifest["steps_per_epoch"]
    assert (manifest["initial_epoch"], manifest["epochs_trained"]) == (1, 1)
    assert [rank["batches"] for rank in manifest["ranks"]] == [steps, steps]  # epoch 2 only
    history = pd.read_csv(model_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    # Epoch 1 is the first run's, not retrained (a whole-number rate may read back as an int column).
    pd.testing.assert_frame_equal(history.iloc[:1], first, check_dtype=False)
    assert sorted(path.name for path in (model_dir / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0002"]

    # Rank 0 restored the optimizer too: its step counter continued from epoch 1's.
    model = build_model()
    optimizer = tf.keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    assert restore_checkpoint(model_dir / "checkpoints" / "epoch-0002", model, optimizer)["epoch"] == 2
    assert int(optimizer.iterations.numpy()) == 2 * steps
    saved = load_model(str(model_dir))
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), model.get_weights(), strict=True))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings(HOROVOD_CANCELLED_THREAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_rank_ends_the_job_with_its_error(backend, ingested, tmp_path, capsys):
    def truncate_images(index, part):  # rank 1's only shard holds images of half the right size
        if index != 1:
            return part
        images = [value[: len(value) // 2] for value in part.column(schema.IMAGE).to_pylist()]
        column = part.schema.get_field_index(schema.IMAGE)
        return part.set_column(column, schema.IMAGE, pa.array(images, pa.binary()))

    table = _rewrite_train_split(ingested, tmp_path / "ham", [60, 40, None], damage=truncate_images)
    started = time.monotonic()
    code = train_job.main(
        [
            "--data",
            str(table),
            "--output",
            str(tmp_path / "model"),
            "--epochs",
            "2",
            "--backend",
            backend,
            *QUICK,
        ]
    )
    elapsed = time.monotonic() - started
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert error.startswith(
        "train: error: training failed on rank 1: InvalidArgumentError: assertion "
        "failed: [an image in the training split does not hold 75x100x3 bytes]"
    )
    assert elapsed < 150
    assert not (tmp_path / "model" / "_manifest.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings(HOROVOD_CANCELLED_THREAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stalled_rank_ends_the_job_instead_of_hanging(backend, ingested, tmp_path, capsys):
    # An empty row group is rank 1's whole shard: its reader (Petastorm, or the pyarrow shard) then
    # waits for rows forever, and rank 0 forever in its first collective. The watchdog ends both after
    # stall_timeout_s.
    table = _rewrite_train_split(ingested, tmp_path / "ham", [60, 0, None])
    started = time.monotonic()
    code = train_job.main(
        [
            "--data",
            str(table),
            "--output",
            str(tmp_path / "model"),
            "--epochs",
            "1",
            "--conf",
            "stall_timeout_s=15",
            "--backend",
            backend,
            *QUICK,
        ]
    )
    elapsed = time.monotonic() - started
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert "training failed on rank" in error and "no progress for" in error and "stall_timeout_s=15" in error
    assert elapsed < 120


def test_oversampling_repeats_reach_the_largest_class_or_a_target():
    counts = {"akiec": 262, "bcc": 411, "bkl": 879, "df": 92, "mel": 890, "nv": 5364, "vasc": 114}
    repeats = oversample_repeats(counts)
    assert repeats[schema.LABELS.index("nv")] == 1 and repeats[schema.LABELS.index("df")] == round(5364 / 92)
    assert all(
        abs(count * repeats[schema.LABELS.index(label)] - 5364) < count for label, count in counts.items()
    )
    to_1000 = oversample_repeats(counts, 1000)
    assert to_1000[schema.LABELS.index("df")] == 11 and to_1000[schema.LABELS.index("mel")] == 1
    assert oversample_repeats({"nv": 10})[schema.LABELS.index("df")] == 1  # absent: nothing to repeat


def test_oversampling_repeats_each_image_its_class_times_before_the_shuffle():
    images = np.random.default_rng(2).integers(0, 256, (6, 2, 3, 3), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 5], dtype=np.int32)
    rows = tf.data.Dataset.from_tensors(([image.tobytes() for image in images], labels))
    repeats = {1: 3, 5: 4}
    out = list(pixel_batches(rows, Pipeline(2, 3, 1, 64, False, 0, repeats)).as_numpy_iterator())
    seen = np.concatenate([batch_labels for _, batch_labels in out])
    assert {label: int((seen == label).sum()) for label in (0, 1, 5)} == {0: 3, 1: 6, 5: 4}
    pixels = np.concatenate([batch_images for batch_images, _ in out])
    copies = [sum(np.array_equal(image, seen_image) for seen_image in pixels) for image in images]
    assert copies == [1, 1, 1, 3, 3, 4]
    assert list(seen) != sorted(seen)  # copies are shuffled apart, not left in runs


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_oversampling_inside_the_training_split(backend, ingested, tmp_path):
    model_dir = tmp_path / "model"
    arguments = [
        "--data",
        str(ingested),
        "--output",
        str(model_dir),
        "--epochs",
        "1",
        *QUICK,
        "--backend",
        backend,
    ]
    assert train_job.main([*arguments, "--balance", "oversample", "--precision", "float32"]) == 0
    manifest = _manifest(model_dir)
    ingest_manifest = json.loads((ingested / "_manifest.json").read_text())
    by_class = ingest_manifest["counts"]["splits"]["train"]["by_class"]
    expected = oversample_repeats(by_class)
    assert manifest["balance"] == "oversample" and manifest["class_weight"] == {}
    assert manifest["oversample_repeats"] == {
        schema.LABELS[index]: count for index, count in expected.items()
    }
    epoch = sum(int(by_class.get(label, 0)) * expected[index] for index, label in enumerate(schema.LABELS))
    assert epoch > 1.5 * manifest["rows"]["train"]
    assert manifest["steps_per_epoch"] == math.ceil(epoch / (16 * 2))
    assert {rank["batches"] for rank in manifest["ranks"]} == {manifest["steps_per_epoch"]}
