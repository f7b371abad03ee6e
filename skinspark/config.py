"""Typed job configuration: frozen defaults, then a YAML file, then `key=value` overrides.

Each job has a frozen dataclass of defaults. `load_config` layers, in order: the dataclass defaults,
the job's file under `conf/` (or the one given with `--config`), then overrides (`--conf key=value`
and explicit command-line flags). Keys that start with `spark.` are Spark settings and go to the
session; any other key must be a field of the job's config, or loading fails naming the key. A key
`section.name` (an override, or `name:` under a `section:` mapping in the file) is the field
`section_name`: `mlflow.tracking_uri` and `mlflow: {tracking_uri: ...}` both set `mlflow_tracking_uri`.

A value's type is checked while loading; whether the values make sense together is each dataclass's
`check()`, written beside its fields and raising `ConfigError` naming the first bad setting. The
library call that takes the config calls it first and turns the error into its job's stopping error.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from skinspark import precision, schema
from skinspark.errors import ConfigError
from skinspark.model import BACKBONES, MODELS
from skinspark.session import CONF_DIR
from skinspark.tasks import TASKS

C = TypeVar("C")

# split_by's values and the column whose values each keeps whole on one side of the split.
SPLIT_UNITS = {"lesion": schema.LESION_ID, "image": schema.IMAGE_ID}
SCORE_MODES = ("overwrite", "resume")  # replace the output, or score only files not in it
# Training's choices: the data-parallel backend, the loss weights, how rare classes count, and how
# gradients travel between ranks (as they are, or as float16: Horovod's Compression.fp16).
BACKENDS = ("auto", "horovod", "tf_distribute")
CLASS_WEIGHT_MODES = ("balanced", "sqrt", "none")
BALANCE_MODES = ("class_weight", "oversample", "none")
GRADIENT_COMPRESSIONS = ("none", "fp16")


def first_failure(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first `(holds, message)` check that does not hold."""
    for holds, message in checks:
        if not holds:
            raise ConfigError(message)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """The train/val/test fractions as floats.

    Raises:
        ConfigError: unless three non-negative numbers sum to 1.
    """
    values = tuple(float(value) for value in fractions)
    if len(values) != len(schema.SPLITS) or any(value < 0 for value in values):
        raise ConfigError(f"split needs three non-negative fractions (train,val,test), got {fractions}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {fractions} (sum {sum(values):.4f})")
    return values  # type: ignore[return-value]


def check_folds(folds: int) -> int:
    """`folds` itself.

    Raises:
        ConfigError: unless it is 0 (no folds) or at least 2.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0 or folds == 1:
        raise ConfigError(f"folds must be 0 (no folds) or at least 2, got {folds!r}")
    return folds


def check_split_by(split_by: str) -> str:
    """`split_by` itself.

    Raises:
        ConfigError: unless it is one of SPLIT_UNITS.
    """
    if split_by not in SPLIT_UNITS:
        raise ConfigError(f"split_by must be one of {sorted(SPLIT_UNITS)}, got {split_by!r}")
    return split_by


def check_precision(requested: str) -> str:
    """`requested` itself.

    Raises:
        ConfigError: unless it is one of `skinspark.precision.PRECISIONS`.
    """
    try:
        return precision.validate(requested)
    except ValueError as error:
        raise ConfigError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    height: int = 75  # the paper's input size: 75 x 100 (a 600 x 450 image scaled by 1/6)
    width: int = 100
    seed: int = 42  # fixes the lesion split
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test, as in the paper
    split_by: str = "lesion"  # "lesion" (no lesion on two sides) or "image" (leaks; for comparison only)
    # k-fold cross-validation: 0 (off), or K >= 2 folds over the train and val rows (test stays held
    # out), whole lesions per fold, stratified by class, fixed by `seed`
    folds: int = 0
    max_bad_fraction: float = 0.05  # more bad input than this fails the job (after writing quarantine)
    decoder: str = "simplejpeg"  # "simplejpeg" or "pillow"; both use JPEG DCT scaling
    # "python": the Python worker opens each file (local, mounted, hdfs:, s3:/s3a:, gs:); "spark":
    # Spark's JVM reads it and ships the bytes (any Hadoop file system); "auto": python for local paths.
    reader: str = "auto"
    metadata_encoding: str = "utf-8"  # the CSV's text encoding; a row that does not decode is quarantined
    max_image_bytes: int = 64 * 1024 * 1024  # a larger file is quarantined, not decoded
    partition_mb: int = 64  # bytes of JPEG per read task: few tasks, bounded memory per task
    open_cost_bytes: int = 8192  # Spark's per-file open cost; its 4 MB default makes tiny tasks
    arrow_batch_size: int = 256  # rows per Arrow batch handed to the decoder (~30 MB of JPEG bytes)
    rows_per_file: int = 4096  # ~90 MB of 75x100 tensors per Parquet file
    row_group_mb: int = 32  # Parquet row groups of tens of MB suit Petastorm's streaming reader

    def check(self) -> None:
        """Raise ConfigError naming the first setting ingest cannot work with."""
        check_fractions(self.split)
        check_folds(self.folds)
        check_split_by(self.split_by)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "paper_cnn"  # or an ImageNet backbone: mobilenet_v2, resnet50, inception_v3, densenet201
    # what the model predicts: "dx7" (the seven diagnoses) or "malignant" (benign against malignant)
    task: str = "dx7"
    # a backbone's starting weights: "none" (random), "imagenet" (Keras's cached no-top file) or a path
    weights: str = "none"
    # Fine-tuning a backbone in two phases: frozen (only the new head trains) for freeze_epochs, then its
    # top fine_tune_layers layers (0: all) train too, at fine_tune_rate_factor x the learning rate.
    freeze_epochs: int = 0
    fine_tune_layers: int = 0
    fine_tune_rate_factor: float = 0.1
    # horovod (horovod.spark.run, Petastorm shards) or tf_distribute (a Spark barrier stage,
    # MultiWorkerMirroredStrategy, pyarrow shards); auto: horovod where it is installed, else tf_distribute
    backend: str = "auto"
    epochs: int = 25  # the paper's
    batch_size: int = 32  # per rank
    learning_rate: float = 0.0003  # per rank, scaled by the number of ranks (0.002 on 2 ranks stalls)
    warmup_epochs: int = 1  # ramp the scaled learning rate up over this many epochs (if warmup_steps is 0)
    warmup_steps: int = 100  # ramp it up over this many optimizer steps instead (wins when > 0)
    class_weight: str = "balanced"  # "balanced", "sqrt" (its square root) or "none"
    # How the rare classes count: "class_weight" (the loss weights above), "oversample" (their training
    # images repeated in each epoch, inside the training split only; no loss weights), "none" (neither)
    balance: str = "class_weight"
    oversample_to: int = 0  # "oversample": images per class reached by repeating; 0: the largest class's
    label_smoothing: float = 0.0  # share of each one-hot target spread over the other classes
    clip_norm: float = 0.0  # clip each step's gradient to this global L2 norm; 0: no clipping
    precision: str = "auto"  # float32, bfloat16, or auto: bfloat16 where the rank's CPU has the units
    augment: bool = True  # random horizontal and vertical flips
    reduce_lr_patience: int = 3  # ReduceLROnPlateau on validation loss
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 1e-5
    dropout: float = 0.5
    seed: int = 42
    num_proc: int = 0  # 0: the Spark application's task slots
    shuffle_buffer: int = 2048  # rows
    start_timeout_s: int = 600  # Horovod's wait for all ranks to start
    stall_timeout_s: int = 600  # a rank without progress (no batch done) this long ends the job
    workers_per_rank: int = 1  # Petastorm reader threads per rank
    keep_checkpoints: int = 2  # newest epoch checkpoints kept under MODEL_DIR/checkpoints for --resume
    gradient_compression: str = "none"  # "none" or "fp16": gradients sent between ranks as float16
    # Horovod's coordination cycle (HOROVOD_CYCLE_TIME, 1 ms by default): each cycle is a round trip
    # between ranks, which costs CPU that a rank's own core would otherwise spend training.
    horovod_cycle_time_ms: float = 10.0
    # k-fold cross-validation on a table ingested with --folds K: `fold` k (0..K-1) validates on fold k
    # and trains on the others (-1: off, the table's own train/val split); `cross_validate` trains every
    # fold into MODEL_DIR/fold-k and reports each metric's mean and standard deviation over the folds
    fold: int = -1
    cross_validate: bool = False
    # Experiment tracking (the `tracking` extra): after a successful run, log it to this MLflow tracking
    # URI (sqlite:///mlflow.db, http://host:5000, ...); "" logs nothing and never imports MLflow.
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "skinspark"
    mlflow_model_name: str = ""  # register the logged model under this name; "": log it, register nothing

    def check(self) -> None:
        """Raise ConfigError naming the first setting training cannot work with."""
        first_failure([*self._range_checks(), *self._choice_checks()])
        check_precision(self.precision)

    def _choice_checks(self) -> list[tuple[bool, str]]:
        """The named choices, and the settings that exclude each other."""
        return [
            (self.model in MODELS, f"model must be one of {sorted(MODELS)}, got {self.model!r}"),
            (self.task in TASKS, f"task must be one of {sorted(TASKS)}, got {self.task!r}"),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"),
            (
                self.gradient_compression == "none" or self.backend != "tf_distribute",
                "gradient_compression fp16 is Horovod's: use --backend horovod, or gradient_compression none",
            ),
            (
                self.freeze_epochs == 0 or self.model in BACKBONES,
                f"freeze_epochs freezes a backbone: {self.model} has none (use a backbone --model, or 0)",
            ),
            (self.balance in BALANCE_MODES, f"balance must be one of {BALANCE_MODES}, got {self.balance!r}"),
            (
                self.class_weight in CLASS_WEIGHT_MODES,
                f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {self.class_weight!r}",
            ),
            (
                self.fold == -1 or not self.cross_validate,
                f"fold {self.fold} and cross_validate exclude each other: cross_validate trains every fold",
            ),
            (
                not (self.cross_validate and self.mlflow_model_name),
                "a cross-validation trains one model per fold: register one of them with --fold k and "
                "--register-model, or cross-validate without --register-model",
            ),
            (
                self.gradient_compression in GRADIENT_COMPRESSIONS,
                f"gradient_compression must be one of {GRADIENT_COMPRESSIONS}, "
                f"got {self.gradient_compression!r}",
            ),
        ]

    def _range_checks(self) -> list[tuple[bool, str]]:
        """Each number's range."""
        at_least_one = (
            "epochs",
            "batch_size",
            "shuffle_buffer",
            "stall_timeout_s",
            "workers_per_rank",
            "keep_checkpoints",
        )
        return [
            *[
                (getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
                for name in at_least_one
            ],
            *[
                (getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
                for name in ("freeze_epochs", "warmup_epochs", "warmup_steps")
            ],
            (
                self.fine_tune_layers >= 0,
                f"fine_tune_layers must be >= 0 (0: all), got {self.fine_tune_layers}",
            ),
            (
                0 < self.fine_tune_rate_factor <= 1,
                f"fine_tune_rate_factor must be in (0, 1], got {self.fine_tune_rate_factor}",
            ),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.clip_norm >= 0, f"clip_norm must be >= 0 (0: no clipping), got {self.clip_norm}"),
            (
                self.oversample_to >= 0,
                f"oversample_to must be >= 0 (0: the largest class), got {self.oversample_to}",
            ),
            (self.num_proc >= 0, f"num_proc must be >= 0 (0: all task slots), got {self.num_proc}"),
            (self.fold >= -1, f"fold must be a fold number >= 0, or -1 (off), got {self.fold}"),
            (
                self.horovod_cycle_time_ms > 0,
                f"horovod_cycle_time_ms must be positive, got {self.horovod_cycle_time_ms}",
            ),
            (
                0 < self.reduce_lr_factor < 1,
                f"reduce_lr_factor must be in (0, 1), got {self.reduce_lr_factor}",
            ),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
        ]


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = 256  # images per Arrow batch and per model call (~30 MB of JPEG bytes per batch)
    mode: str = "overwrite"  # "overwrite" (replace the output) or "resume" (score only files not in it)
    max_image_bytes: int = 64 * 1024 * 1024  # a larger file gets an error row and is never read
    chunk_files: int = 20000  # files per committed chunk: a kill loses at most the chunk in flight
    max_bad_fraction: float = 0.05  # more error rows than this share of the output: exit code 1
    partition_mb: int = 64  # bytes of JPEG per read task (as ingest): few tasks, bounded memory
    open_cost_bytes: int = 8192  # Spark's per-file open cost; its 4 MB default makes tiny tasks
    reader: str = "auto"  # as IngestConfig.reader: who reads each file's bytes
    precision: str = "auto"  # float32, bfloat16, or auto: bfloat16 where the worker's CPU has the units
    mlflow_tracking_uri: str = ""  # as TrainConfig's: log the finished run's counts and metrics there
    mlflow_experiment: str = "skinspark"

    def check(self) -> None:
        """Raise ConfigError naming the first setting scoring cannot work with."""
        at_least_one = ("batch_size", "chunk_files", "max_image_bytes", "partition_mb")
        first_failure(
            [
                (self.mode in SCORE_MODES, f"mode must be one of {SCORE_MODES}, got {self.mode!r}"),
                *[
                    (getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
                    for name in at_least_one
                ],
                (
                    0.0 <= self.max_bad_fraction <= 1.0,
                    f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}",
                ),
            ]
        )
        check_precision(self.precision)


JOB_CONFIGS: dict[str, type] = {"ingest": IngestConfig, "train": TrainConfig, "score": ScoreConfig}


@dataclasses.dataclass(frozen=True)
class Loaded(typing.Generic[C]):
    """A resolved job config plus the Spark settings collected from the same sources."""

    job: C
    spark: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"job": dataclasses.asdict(self.job), "spark": dict(self.spark)}

    def to_yaml(self) -> str:
        """The resolved config as YAML (the form `--config` reads back), written beside job outputs."""
        data = dataclasses.asdict(self.job)
        data = {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}
        if self.spark:
            data["spark"] = dict(self.spark)
        return yaml.safe_dump(data, sort_keys=False)


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Turn `["a=1", "spark.x=y"]` into a dict; raises ConfigError for an item without `=`."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--conf expects key=value, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    job: str | None = None,
) -> Loaded[C]:
    """Resolve a job config: dataclass defaults, then a YAML file, then overrides.

    Args:
        cls: the job's config dataclass (IngestConfig, TrainConfig, ScoreConfig).
        path: a YAML file; None reads `conf/<job>.yaml` when it exists.
        overrides: key -> value (strings are parsed as YAML scalars); `spark.*` keys are Spark settings.
        job: the job's name, used to find its default file.

    Returns:
        Loaded(job=<cls instance>, spark=<Spark settings>).

    Raises:
        ConfigError: unknown key, wrong type, or an unreadable file.
    """
    values: dict[str, Any] = {}
    spark: dict[str, str] = {}
    if path is None and job is not None and (CONF_DIR / f"{job}.yaml").is_file():
        path = CONF_DIR / f"{job}.yaml"
    if path is not None:
        file_values = _read_yaml(Path(path))
        spark.update({str(k): str(v) for k, v in (file_values.pop("spark", None) or {}).items()})
        _merge(cls, values, spark, file_values, source=str(path))
    _merge(cls, values, spark, dict(overrides or {}), source="overrides")
    try:
        return Loaded(job=cls(**values), spark=spark)
    except TypeError as error:  # pragma: no cover - fields are checked above
        raise ConfigError(str(error)) from error


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _merge(cls: type, values: dict, spark: dict, new: Mapping[str, Any], source: str) -> None:
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, raw in _flatten(new).items():
        if key.startswith("spark."):
            spark[key] = str(raw)
            continue
        name = key.replace("-", "_").replace(".", "_")
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {key!r} in {source} for {cls.__name__} (known: {known})")
        values[name] = _coerce(hints[name], raw, key, source)


def _flatten(new: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Keys of nested mappings (a file's `mlflow:` section) as dotted keys (`mlflow.tracking_uri`).

    No field holds a mapping, so a mapping value is always a section; the dotted key then maps to a
    field like an override's does, and an unknown one is reported under the name the file gave it.
    """
    flat: dict[str, Any] = {}
    for key, raw in new.items():
        name = f"{prefix}{key}"
        if isinstance(raw, Mapping):
            flat.update(_flatten(raw, prefix=f"{name}."))
        else:
            flat[name] = raw
    return flat


def _coerce(hint: Any, raw: Any, key: str, source: str) -> Any:
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError
            return float(value)
        if hint is str:
            return raw if isinstance(raw, str) else str(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            item_type = typing.get_args(hint)[0]
            result = tuple(_coerce(item_type, str(item).strip(), key, source) for item in items)
            if len(result) != len(typing.get_args(hint)):
                raise TypeError
            return result
        if isinstance(hint, types.UnionType):  # pragma: no cover - no optional fields yet
            return value
    except (TypeError, ValueError, yaml.YAMLError):
        pass
    else:
        return value
    raise ConfigError(f"config key {key!r} in {source}: {raw!r} is not a valid {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def describe(loaded: Loaded) -> str:
    """A compact JSON rendering of a resolved config, for logs and manifests."""
    return json.dumps(loaded.to_dict(), sort_keys=True)
