"""Train/val/test assignment by lesion, stratified by diagnosis, deterministic for a seed; and the
cross-validation folds of the train and val rows, made the same way.

HAM10000 holds several photos of many lesions; putting photos of one lesion on both sides of a split
lets a model recognise the lesion rather than the disease and inflates accuracy. Whole lesions are
therefore assigned to one split, class by class, so each class keeps the requested fractions. Folds
keep whole lesions too.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from skinspark import schema
from skinspark.config import check_folds, check_fractions
from skinspark.schema import TEST


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


def assign_folds(rows: pd.DataFrame, folds: int, seed: int, group: str = schema.LESION_ID) -> pd.Series:
    """Assign each train and val row to one of `folds` cross-validation folds; test rows get none.

    scikit-learn's `StratifiedGroupKFold` (shuffled, seeded) over the non-test rows in image_id order,
    with the diagnosis as the class and `group` as the group: no lesion is in two folds and each fold
    keeps about the class mix of the whole. The order makes the folds depend only on the rows and the
    seed, not on how the rows arrived.

    Args:
        rows: one row per image with `image_id`, `dx`, `split` and the `group` column.
        folds: the number of folds, at least 2.
        seed: the folds' seed; the same rows and seed always give the same folds.
        group: the column whose rows stay in one fold: `lesion_id` (or `image_id` for the leaky
            split by image, which exists only to measure that leak).

    Returns:
        A nullable Int32 Series aligned with `rows`: the fold 0..folds-1 of each train or val row,
        <NA> for each test row.

    Raises:
        ValueError: a bad fold count, missing columns, fewer groups than folds, or a fold left empty.
    """
    if check_folds(folds) == 0:
        raise ValueError("assign_folds needs at least 2 folds")
    missing = {schema.IMAGE_ID, schema.DX, schema.SPLIT, group} - set(rows.columns)
    if missing:
        raise ValueError(f"rows lack columns {sorted(missing)}")
    pool = rows[rows[schema.SPLIT] != TEST].sort_values(schema.IMAGE_ID, kind="stable")
    groups = pool[group].nunique()
    if groups < folds:
        raise ValueError(
            f"cannot make {folds} folds of {groups} {group} value(s) outside the test split: "
            "use fewer --folds or more images"
        )
    assigned = pd.Series(pd.NA, index=rows.index, dtype="Int32", name=schema.FOLD)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class with fewer images than folds cannot reach every fold; `missing_classes` names where
        # it is absent, which the manifest records, so scikit-learn's general warning adds nothing.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            parts = list(splitter.split(pool, pool[schema.DX], groups=pool[group]))
        except ValueError as error:
            raise ValueError(f"cannot make {folds} folds: {error}") from None
    for fold, (_, members) in enumerate(parts):
        assigned.loc[pool.index[members]] = fold
    sizes = assigned.value_counts()
    empty = [fold for fold in range(folds) if sizes.get(fold, 0) == 0]
    if empty:
        raise ValueError(f"fold(s) {empty} of {folds} would hold no image: use fewer --folds or more images")
    return assigned


def missing_classes(rows: pd.DataFrame, folds: int) -> list[str]:
    """One line per class that some folds lack (a class with fewer lesions than folds, common on small
    data): which folds hold none of it. `rows` has `dx` and `fold` (null for test rows)."""
    pool = rows[rows[schema.FOLD].notna()]
    present = pool.groupby(schema.DX)[schema.FOLD].agg(lambda values: set(int(value) for value in values))
    lines = []
    for label in schema.LABELS:
        if label not in present.index:
            continue
        lacking = [fold for fold in range(folds) if fold not in present[label]]
        if lacking:
            lesions = pool.loc[pool[schema.DX] == label, schema.LESION_ID].nunique()
            lines.append(
                f"class {label} is in no image of fold(s) {', '.join(map(str, lacking))}: "
                f"{lesions} lesion(s) outside the test split for {folds} folds"
            )
    return lines
