"""Config precedence (defaults < file < overrides), typing and unknown-key errors."""

from __future__ import annotations

import pytest

from skinspark.config import IngestConfig, ScoreConfig, TrainConfig, load_config, parse_overrides
from skinspark.errors import ConfigError


def test_defaults_when_nothing_given(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    loaded = load_config(IngestConfig, empty)
    assert loaded.job == IngestConfig()
    assert loaded.job.height == 75 and loaded.job.width == 100
    assert loaded.spark == {}


def test_file_then_overrides_win_in_order(tmp_path):
    path = tmp_path / "ingest.yaml"
    path.write_text("height: 150\nwidth: 200\nseed: 7\nspark:\n  spark.sql.shuffle.partitions: 8\n")
    loaded = load_config(IngestConfig, path, {"width": "120", "spark.sql.shuffle.partitions": "3"})
    assert loaded.job.height == 150  # from the file
    assert loaded.job.width == 120  # override beats the file
    assert loaded.job.seed == 7
    assert loaded.spark == {"spark.sql.shuffle.partitions": "3"}


def test_typed_values_are_parsed_and_checked():
    loaded = load_config(IngestConfig, None, {"split": "0.7,0.15,0.15", "max_bad_fraction": "0.1"})
    assert loaded.job.split == (0.7, 0.15, 0.15)
    assert loaded.job.max_bad_fraction == pytest.approx(0.1)
    assert load_config(TrainConfig, None, {"augment": "false"}).job.augment is False
    with pytest.raises(ConfigError, match="'height'"):
        load_config(IngestConfig, None, {"height": "tall"})
    with pytest.raises(ConfigError, match="'augment'"):
        load_config(TrainConfig, None, {"augment": "3"})


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="'hieght'"):
        load_config(IngestConfig, None, {"hieght": "75"})
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="'epochz'.*bad.yaml"):
        load_config(TrainConfig, path)


def test_dashes_are_accepted_for_underscores():
    assert load_config(IngestConfig, None, {"max-bad-fraction": "0.2"}).job.max_bad_fraction == pytest.approx(
        0.2
    )


def test_job_default_file_is_read_when_no_path_given():
    # conf/ingest.yaml ships with the project; its values must be valid and loadable.
    loaded = load_config(IngestConfig, None, {}, job="ingest")
    assert isinstance(loaded.job, IngestConfig)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    loaded = load_config(IngestConfig, None, {"seed": "9", "spark.sql.shuffle.partitions": "5"})
    path = tmp_path / "resolved.yaml"
    path.write_text(loaded.to_yaml())
    again = load_config(IngestConfig, path)
    assert again.job == loaded.job
    assert again.spark == loaded.spark


def test_parse_overrides_rejects_items_without_equals():
    assert parse_overrides(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_a_section_in_the_file_and_a_dotted_override_name_the_same_field(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 3\nmlflow:\n  tracking_uri: sqlite:///runs.db\n  experiment: lesions\n")
    loaded = load_config(TrainConfig, path)
    assert (loaded.job.mlflow_tracking_uri, loaded.job.mlflow_experiment) == ("sqlite:///runs.db", "lesions")
    assert loaded.job.epochs == 3 and loaded.job.mlflow_model_name == ""
    overridden = load_config(TrainConfig, path, {"mlflow.experiment": "other", "mlflow.model-name": "cnn"})
    assert overridden.job.mlflow_experiment == "other"  # the override beats the file's section
    assert overridden.job.mlflow_model_name == "cnn"
    assert overridden.job.mlflow_tracking_uri == "sqlite:///runs.db"
    # The resolved config is written flat, and reads back the same.
    again = tmp_path / "resolved.yaml"
    again.write_text(overridden.to_yaml())
    assert "mlflow_experiment: other" in again.read_text()
    assert load_config(TrainConfig, again).job == overridden.job


def test_an_unknown_key_in_a_section_is_an_error_naming_it(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("mlflow:\n  trackin_uri: sqlite:///runs.db\n")
    with pytest.raises(ConfigError, match="'mlflow.trackin_uri'.*train.yaml"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="'mlflow.registry'"):
        load_config(TrainConfig, None, {"mlflow.registry": "x"})
    with pytest.raises(ConfigError, match="'mlflow.model_name'.*ScoreConfig"):  # scoring registers no model
        load_config(ScoreConfig, None, {"mlflow.model_name": "x"})


def test_the_shipped_files_leave_tracking_off():
    for cls, job in ((TrainConfig, "train"), (ScoreConfig, "score")):
        loaded = load_config(cls, None, {}, job=job)
        assert loaded.job.mlflow_tracking_uri == "" and loaded.job.mlflow_experiment == "skinspark"
