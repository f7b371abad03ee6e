"""Train/val/test assignment by lesion, stratified by diagnosis, deterministic for a seed.

HAM10000 holds several photos of many lesions; putting photos of one lesion on both sides of a split
lets a model recognise the lesion rather than the disease and inflates accuracy. Whole lesions are
therefore assigned to one split, class by class, so each class keeps the requested fractions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd

from skinspark import schema


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions; raises ValueError unless three non-negative numbers sum to 1."""
    values = tuple(float(value) for value in fractions)
    if len(values) != len(schema.SPLITS) or any(value < 0 for value in values):
        raise ValueError(f"split needs three non-negative fractions (train,val,test), got {fractions}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {sum(values):.4f})")
    return values  # type: ignore[return-value]


def lesion_order_key(lesion_id: str, seed: int) -> str:
    """A seed-dependent pseudo-random sort key, stable across processes and Python versions."""
    return hashlib.sha256(f"{seed}:{lesion_id}".encode()).hexdigest()


def assign_splits(lesions: pd.DataFrame, fractions: Sequence[float], seed: int) -> pd.DataFrame:
    """Assign each lesion of one or more classes to a split.

    Within each class, lesions are visited in a seed-determined order and each goes to the split
    furthest below its target share of the class's images, so every class ends close to the requested
    fractions (within about one lesion's images) and no lesion is ever divided.

    Args:
        lesions: one row per lesion with columns `lesion_id`, `dx` and `images` (its image count).
        fractions: train, val and test fractions summing to 1.
        seed: the split's seed; the same seed and lesions always give the same assignment.

    Returns:
        A DataFrame with columns `lesion_id` and `split`, one row per input lesion.

    Raises:
        ValueError: bad fractions, missing columns or a lesion listed twice.
    """
    fractions = check_fractions(fractions)
    missing = {schema.LESION_ID, schema.DX, "images"} - set(lesions.columns)
    if missing:
        raise ValueError(f"lesions frame lacks columns {sorted(missing)}")
    if lesions[schema.LESION_ID].duplicated().any():
        raise ValueError("each lesion must appear once in the lesions frame")
    assigned: list[tuple[str, str]] = []
    for _, group in lesions.groupby(schema.DX, sort=True):
        assigned.extend(_assign_class(group, fractions, seed))
    return pd.DataFrame(assigned, columns=[schema.LESION_ID, schema.SPLIT])


def _assign_class(group: pd.DataFrame, fractions: tuple[float, float, float], seed: int):
    keys = [lesion_order_key(lesion, seed) for lesion in group[schema.LESION_ID]]
    ordered = group.assign(_key=keys).sort_values(["_key", schema.LESION_ID])
    total = float(ordered["images"].sum())
    targets = [fraction * total for fraction in fractions]
    filled = [0.0] * len(fractions)
    for lesion_id, images in zip(ordered[schema.LESION_ID], ordered["images"], strict=True):
        # The split with the largest shortfall against its target; ties go to the earlier split.
        choice = max(range(len(fractions)), key=lambda index: (targets[index] - filled[index], -index))
        filled[choice] += float(images)
        yield lesion_id, schema.SPLITS[choice]
