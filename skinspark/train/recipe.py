"""The training recipe worked out for a run: its backend, the oversampling repeats and the class weights
of the loss. Its settings are checked by `skinspark.config.TrainConfig.check`, beside their defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from skinspark import schema
from skinspark.config import CLASS_WEIGHT_MODES


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
