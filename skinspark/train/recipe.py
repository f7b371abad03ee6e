"""The training recipe's settings: each checked before any work, and the class weights of the loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from skinspark import schema
from skinspark.config import TrainConfig
from skinspark.model import BACKBONES, MODELS
from skinspark.precision import PRECISIONS
from skinspark.tasks import TASKS

CLASS_WEIGHT_MODES = ("balanced", "sqrt", "none")
BALANCE_MODES = ("class_weight", "oversample", "none")
# How gradients travel between ranks: as they are, or as float16 (Horovod's Compression.fp16).
GRADIENT_COMPRESSIONS = ("none", "fp16")
BACKENDS = ("auto", "horovod", "tf_distribute")


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first invalid training setting."""
    checks = [
        (config.model in MODELS, f"model must be one of {sorted(MODELS)}, got {config.model!r}"),
        (config.task in TASKS, f"task must be one of {sorted(TASKS)}, got {config.task!r}"),
        (config.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {config.backend!r}"),
        (
            config.gradient_compression == "none" or config.backend != "tf_distribute",
            "gradient_compression fp16 is Horovod's: use --backend horovod, or gradient_compression none",
        ),
        (config.epochs >= 1, f"epochs must be at least 1, got {config.epochs}"),
        (config.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {config.freeze_epochs}"),
        (
            config.freeze_epochs == 0 or config.model in BACKBONES,
            f"freeze_epochs freezes a backbone: {config.model} has none (use a backbone --model, or 0)",
        ),
        (
            config.fine_tune_layers >= 0,
            f"fine_tune_layers must be >= 0 (0: all), got {config.fine_tune_layers}",
        ),
        (
            0 < config.fine_tune_rate_factor <= 1,
            f"fine_tune_rate_factor must be in (0, 1], got {config.fine_tune_rate_factor}",
        ),
        (config.batch_size >= 1, f"batch_size must be at least 1, got {config.batch_size}"),
        (config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}"),
        (config.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {config.warmup_epochs}"),
        (config.warmup_steps >= 0, f"warmup_steps must be >= 0, got {config.warmup_steps}"),
        (
            0 <= config.label_smoothing < 1,
            f"label_smoothing must be in [0, 1), got {config.label_smoothing}",
        ),
        (config.clip_norm >= 0, f"clip_norm must be >= 0 (0: no clipping), got {config.clip_norm}"),
        (config.balance in BALANCE_MODES, f"balance must be one of {BALANCE_MODES}, got {config.balance!r}"),
        (
            config.oversample_to >= 0,
            f"oversample_to must be >= 0 (0: the largest class), got {config.oversample_to}",
        ),
        (
            config.class_weight in CLASS_WEIGHT_MODES,
            f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {config.class_weight!r}",
        ),
        (
            config.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}",
        ),
        (config.num_proc >= 0, f"num_proc must be >= 0 (0: all task slots), got {config.num_proc}"),
        (config.fold >= -1, f"fold must be a fold number >= 0, or -1 (off), got {config.fold}"),
        (
            config.fold == -1 or not config.cross_validate,
            f"fold {config.fold} and cross_validate exclude each other: cross_validate trains every fold",
        ),
        (
            not (config.cross_validate and config.mlflow_model_name),
            "a cross-validation trains one model per fold: register one of them with --fold k and "
            "--register-model, or cross-validate without --register-model",
        ),
        (config.shuffle_buffer >= 1, f"shuffle_buffer must be at least 1, got {config.shuffle_buffer}"),
        (config.stall_timeout_s >= 1, f"stall_timeout_s must be at least 1, got {config.stall_timeout_s}"),
        (config.workers_per_rank >= 1, f"workers_per_rank must be at least 1, got {config.workers_per_rank}"),
        (config.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {config.keep_checkpoints}"),
        (
            config.horovod_cycle_time_ms > 0,
            f"horovod_cycle_time_ms must be positive, got {config.horovod_cycle_time_ms}",
        ),
        (
            config.gradient_compression in GRADIENT_COMPRESSIONS,
            f"gradient_compression must be one of {GRADIENT_COMPRESSIONS}, "
            f"got {config.gradient_compression!r}",
        ),
        (
            0 < config.reduce_lr_factor < 1,
            f"reduce_lr_factor must be in (0, 1), got {config.reduce_lr_factor}",
        ),
        (0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def resolve_backend(requested: str) -> str:
    """The backend a run uses: `auto` is horovod where Horovod is installed, else tf_distribute.

    Raises:
        ValueError: horovod asked for where it is not installed (the modern stack has no Horovod).
    """
    import importlib.util

    installed = importlib.util.find_spec("horovod") is not None
    if requested == "auto":
        return "horovod" if installed else "tf_distribute"
    if requested == "horovod" and not installed:
        raise ValueError(
            "backend horovod: Horovod is not installed in this environment (the modern stack has none): "
            "use --backend tf_distribute"
        )
    return requested


def oversample_repeats(
    counts: Mapping[str, int], target: int = 0, labels: Sequence[str] = schema.LABELS
) -> dict[int, int]:
    """How many times each training image of a class appears per epoch when oversampling: enough that
    the class reaches about `target` images (0: the largest class's count), never fewer than once.

    Returns {label index: repeats} for every label of `labels` (1 for a class absent from the split).
    """
    present = {label: int(count) for label, count in counts.items() if int(count) > 0}
    if not present:
        raise ValueError("no images in the class counts")
    goal = target or max(present.values())
    return {
        index: max(1, round(goal / present[label])) if label in present else 1
        for index, label in enumerate(labels)
    }


def class_weights(
    counts: Mapping[str, int], mode: str = "balanced", labels: Sequence[str] = schema.LABELS
) -> dict[int, float] | None:
    """Per-class loss weights from the train split's class counts.

    "balanced" is scikit-learn's `compute_class_weight('balanced')`: n_samples / (n_classes * count),
    over the classes present; classes absent from the split get 1.0. "sqrt" takes the square root of
    those weights and rescales them so that the weighted count of the split stays n_samples (HAM10000's
    range of 0.2-12 becomes about 0.5-4). "none" returns None.

    Args:
        counts: {label: images} for the train split.
        mode: "balanced", "sqrt" or "none".
        labels: the task's output units (the keys of `counts` must be among them).

    Returns:
        {label index: weight} for every label, or None.

    Raises:
        ValueError: an unknown mode or label, a negative count, or no images at all.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")
    unknown = set(counts) - set(labels)
    if unknown:
        raise ValueError(f"unknown labels in class counts: {sorted(unknown)}")
    if any(int(count) < 0 for count in counts.values()):
        raise ValueError(f"class counts must be >= 0, got {dict(counts)}")
    if mode == "none":
        return None
    present = {label: int(count) for label, count in counts.items() if int(count) > 0}
    if not present:
        raise ValueError("no images in the class counts")
    total = sum(present.values())
    balanced = {label: total / (len(present) * count) for label, count in present.items()}
    if mode == "sqrt":
        roots = {label: math.sqrt(weight) for label, weight in balanced.items()}
        scale = total / sum(present[label] * root for label, root in roots.items())
        balanced = {label: root * scale for label, root in roots.items()}
    return {index: balanced.get(label, 1.0) for index, label in enumerate(labels)}
